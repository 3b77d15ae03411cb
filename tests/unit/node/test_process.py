"""Process groups, pid files, port choice and reaping, on real local processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from nebula_common.procs import cmd_matches, group_members
from nebula_node.process import EngineProcess, pick_port, port_free, reap_stale_engines

# A leader that spawns a child in its own group (like vLLM's EngineCore) and then sleeps.
FAMILY = ("import subprocess,sys,time; subprocess.Popen([sys.executable,'-c',"
          "'import time; time.sleep(600)']); print('up', flush=True); time.sleep(600)")


def test_cmd_matches():
    rec = ["/venv/bin/nebula-sim", "--port", "1"]
    assert cmd_matches(rec, rec)
    assert cmd_matches(["/venv/bin/python3", "/venv/bin/nebula-sim", "--port", "1"], rec)
    assert cmd_matches(["/usr/bin/vllm", "serve", "m"], ["vllm", "serve", "m"])
    assert not cmd_matches(["/usr/bin/bash", "--port", "1"], rec)
    assert not cmd_matches(["/venv/bin/nebula-sim", "--port", "2"], rec)
    assert not cmd_matches(None, rec)


def test_pick_port_skips_taken_and_reserved():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        taken = busy.getsockname()[1]
        assert not port_free(taken, "127.0.0.1")
        chosen = pick_port(taken, (taken, taken + 50), set(), "127.0.0.1")
        assert chosen != taken and taken < chosen <= taken + 50
        again = pick_port(taken, (taken, taken + 50), {chosen}, "127.0.0.1")
        assert again not in (taken, chosen)


async def _wait(pred, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(0.05)
    return False


async def test_spawn_writes_pid_file_and_stop_kills_whole_group(tmp_path: Path):
    eng = EngineProcess("m__r0", tmp_path)
    await eng.spawn([sys.executable, "-c", FAMILY], dict(os.environ), 12345)
    pgid = eng.record.pgid
    assert os.getpgid(eng.pid) == pgid == eng.pid
    data = json.loads(eng.pid_path.read_text())
    assert data["pgid"] == pgid and data["port"] == 12345 and data["cmd"][0] == sys.executable
    assert await _wait(lambda: len(group_members(pgid)) == 2)
    await eng.stop(grace=5)
    assert group_members(pgid) == []
    assert not eng.pid_path.exists()


async def test_engine_log_header_hides_secret_flags_and_pid_file_is_private(tmp_path: Path):
    secret = "sk-engine-7d1f0c9a2b4e6f80"
    argv = [sys.executable, "-c", "import time; time.sleep(600)", "--api-key", secret,
            f"--api-key={secret}x"]
    eng = EngineProcess("m__r2", tmp_path)
    await eng.spawn(argv, dict(os.environ), 1)
    try:
        header = eng.log_path.read_text()
        assert secret not in header and "--api-key [redacted] --api-key=[redacted]" in header
        # The pid file keeps the real argv (compared with /proc at reap time), for us alone.
        assert json.loads(eng.pid_path.read_text())["cmd"] == argv
        assert eng.pid_path.stat().st_mode & 0o077 == 0
    finally:
        await eng.stop(grace=2)


async def test_stop_escalates_to_sigkill(tmp_path: Path):
    code = ("import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('up', flush=True); time.sleep(600)")
    eng = EngineProcess("m__r1", tmp_path)
    await eng.spawn([sys.executable, "-c", code], dict(os.environ), 1)
    assert await _wait(lambda: "up" in eng.log_tail())
    started = time.monotonic()
    await eng.stop(grace=0.5)
    assert group_members(eng.record.pgid) == []
    assert time.monotonic() - started < 5


async def test_reap_stale_engines_kills_left_behind_group(tmp_path: Path):
    # Simulate a crashed node: an engine family with a pid file and no EngineProcess owner.
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", FAMILY,
                                                start_new_session=True,
                                                stdout=asyncio.subprocess.DEVNULL)
    # A group of our own whose leader lives and runs something else (the pid was reused):
    # never the test's own group, whose leader may have exited (a leaderless group is
    # reaped, and that would end the test run).
    bystander = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import time; time.sleep(60)", start_new_session=True)
    try:
        assert await _wait(lambda: len(group_members(proc.pid)) == 2)
        (tmp_path / "engines").mkdir()
        pid_file = tmp_path / "engines" / "m__r0.pid"
        pid_file.write_text(json.dumps({"pgid": proc.pid, "pid": proc.pid, "port": 1,
                                        "cmd": [sys.executable, "-c", FAMILY]}))
        # A pid file naming a live group that runs something else is left alone.
        other = tmp_path / "engines" / "x__r0.pid"
        other.write_text(json.dumps({"pgid": bystander.pid, "pid": bystander.pid, "port": 1,
                                     "cmd": ["/bin/not-this"]}))
        reaped = await reap_stale_engines(tmp_path, grace=5)
        assert reaped == ["m__r0"]
        assert group_members(proc.pid) == []
        assert not pid_file.exists() and not other.exists()
        assert group_members(bystander.pid) == [bystander.pid]  # left alone
    finally:
        for group in (proc, bystander):
            if group_members(group.pid):
                os.killpg(group.pid, signal.SIGKILL)
            await group.wait()


@pytest.mark.parametrize("leader_dead", [True])
async def test_reap_leaderless_group(tmp_path: Path, leader_dead: bool):
    # The leader dies (kill -9), its child stays in the group: still ours, still reaped.
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", FAMILY,
                                                start_new_session=True,
                                                stdout=asyncio.subprocess.DEVNULL)
    pgid = proc.pid
    try:
        assert await _wait(lambda: len(group_members(pgid)) == 2)
        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
        assert len(group_members(pgid)) == 1
        (tmp_path / "engines").mkdir()
        (tmp_path / "engines" / "m__r0.pid").write_text(json.dumps(
            {"pgid": pgid, "pid": pgid, "port": 1, "cmd": [sys.executable, "-c", FAMILY]}))
        assert await reap_stale_engines(tmp_path, grace=5) == ["m__r0"]
        assert group_members(pgid) == []
    finally:
        if group_members(pgid):
            os.killpg(pgid, signal.SIGKILL)
