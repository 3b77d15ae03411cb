"""The --workers supervisor on real child processes (python -m <module>)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.cluster import wait_for
from nebula_common.workers import Supervisor, reserve_port, worker_index


def test_a_worker_failing_at_start_stops_the_supervisor_with_its_status() -> None:
    # json.tool exits 2 on an unknown flag: a configuration error, not a crash to retry
    supervisor = Supervisor(2, "json.tool", ["--no-such-flag"], "test")
    assert supervisor.run() == 2
    assert all(w.proc.poll() is not None for w in supervisor.workers)
    assert not os.path.exists(supervisor.metrics_dir), "the metrics folder goes with it"


def test_each_worker_gets_its_index_and_the_shared_metrics_folder() -> None:
    supervisor = Supervisor(2, "http.server", ["--bind", "127.0.0.1", "0"], "test")
    workers = [supervisor.spawn(i) for i in range(2)]
    try:
        for i, w in enumerate(workers):
            environ = dict(item.split("=", 1) for item in
                           Path(f"/proc/{w.proc.pid}/environ").read_text().split("\0") if item)
            assert environ["NEBULA_WORKER_ID"] == str(i)
            assert environ["PROMETHEUS_MULTIPROC_DIR"] == supervisor.metrics_dir
            assert environ["NEBULA_WORKERS"] == "1", "a worker never supervises workers"
    finally:
        for w in workers:
            w.proc.terminate()
            w.proc.wait(10)
        os.rmdir(supervisor.metrics_dir)


def test_a_held_port_is_refused_even_to_reuseport(capsys: pytest.CaptureFixture[str]) -> None:
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        with pytest.raises(SystemExit):
            reserve_port(f"127.0.0.1:{port}", "test")
        assert "cannot listen on" in capsys.readouterr().err
    finally:
        holder.close()
    free = reserve_port(f"127.0.0.1:{port}", "test")  # once it is free: held, not listening
    try:
        assert free.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
    finally:
        free.close()


def test_worker_index_only_in_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEBULA_WORKER_ID", raising=False)
    assert worker_index() is None
    monkeypatch.setenv("NEBULA_WORKER_ID", "3")
    assert worker_index() == 3


def test_workers_do_not_outlive_a_killed_supervisor() -> None:
    code = ("from nebula_common.workers import Supervisor; "
            "Supervisor(2, 'http.server', ['--bind', '127.0.0.1', '0'], 't').run()")
    sup = subprocess.Popen([sys.executable, "-c", code])
    try:
        children = Path(f"/proc/{sup.pid}/task/{sup.pid}/children")
        workers = wait_for(lambda: len(pids := children.read_text().split()) == 2 and pids,
                           20, "two workers")
    finally:
        sup.kill()  # no time to stop its workers: the kernel tells them (PR_SET_PDEATHSIG)
        sup.wait(10)

    def gone(pid: str) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
        except FileNotFoundError:
            return True

    wait_for(lambda: all(gone(p) for p in workers), 10, "the workers gone")
