"""``--workers N``: one role on N processes behind one ``SO_REUSEPORT`` port.

The process started by the operator becomes a supervisor: it checks the listen
address (a one-line error if it cannot be bound), then starts N copies of the
role with the same arguments, each marked by ``NEBULA_WORKER_ID``. Every worker
binds its own listening socket to the same address with ``SO_REUSEPORT``, so the
kernel spreads new connections evenly over them (no shared accept queue that the
busiest worker drains). The supervisor's own socket is bound but never listens:
it holds the port against other programs and takes no connections.

Each worker is a whole role: its own event loop, etcd view, outlier state and
in-flight counts. What they share is explicit: Prometheus counters, histograms
and gauges are summed over the workers through ``PROMETHEUS_MULTIPROC_DIR``
(a folder the supervisor creates and removes), so ``/metrics`` on any worker
answers for all of them (docs/deploy.md says what each policy sees).

SIGTERM or SIGINT to the supervisor is passed to every worker, which stops as a
single process would (drain, deregister); a worker that has not exited after
``STOP_GRACE_S`` is killed, and a supervisor killed outright takes its workers with
it (``PR_SET_PDEATHSIG``). A worker that dies on its own is started again with
backoff; one that exits with an error within ``START_GRACE_S`` of its first start
is a start-up failure (bad configuration, etcd refusing it): the supervisor stops
the others and exits with its status. One killed by a signal is always started
again.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .config import Parser, fail, listen_address

WORKER_ENV = "NEBULA_WORKER_ID"
"""Set in each worker's environment: its index, 0..N-1."""
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
START_GRACE_S = 5.0
STOP_GRACE_S = 30.0
RESTART_MAX_S = 30.0
POLL_S = 0.2


def add_workers_flag(parser: Parser) -> None:
    """``--workers`` (env ``NEBULA_WORKERS``) for the roles on the request path."""
    parser.add_flag("--workers", default=1, type=int,
                    help="processes serving this role's port (SO_REUSEPORT); each has its own "
                         "etcd view and in-flight counts, /metrics sums them all")


def worker_index() -> int | None:
    """This process's worker index, or None when it is not one of N workers."""
    value = os.environ.get(WORKER_ENV)
    return int(value) if value is not None and value.isdigit() else None


def reserve_port(listen: str, prog: str) -> socket.socket:
    """Bind ``listen`` with ``SO_REUSEPORT`` without listening, or exit with one line."""
    try:
        host, port = listen_address(listen)
    except ValueError as exc:
        fail(prog, str(exc))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # First without SO_REUSEPORT: a port that another program's workers (same user)
    # share with SO_REUSEPORT would otherwise be joined silently, not refused.
    for reuse_port in (False, True):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            fail(prog, f"cannot listen on {listen}: {exc.strerror or exc}")
        if not reuse_port:
            sock.close()
    return sock


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)
    restarts: int = 0


class Supervisor:
    """Starts, restarts and stops the N worker processes of one role."""

    def __init__(self, n: int, module: str, argv: Sequence[str], prog: str):
        self.n, self.module, self.argv, self.prog = n, module, list(argv), prog
        self.metrics_dir = tempfile.mkdtemp(prefix=f"{prog}-metrics-")
        self.workers: list[_Worker] = []
        self.stopping = False

    def spawn(self, index: int, restarts: int = 0) -> _Worker:
        env = {**os.environ, WORKER_ENV: str(index), MULTIPROC_ENV: self.metrics_dir,
               "NEBULA_WORKERS": "1"}
        cmd = [sys.executable, "-m", self.module, *self.argv]
        return _Worker(index, subprocess.Popen(cmd, env=env, preexec_fn=_die_with(os.getpid())),
                       restarts=restarts)

    def run(self) -> int:
        """Serve until a signal or a start-up failure; the exit status for the supervisor."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        try:
            self.workers = [self.spawn(i) for i in range(self.n)]
            return self._watch()
        finally:
            self._stop_all()
            shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.stopping = True

    def _watch(self) -> int:
        pending: dict[int, float] = {}  # worker index -> monotonic time of its restart
        while not self.stopping:
            now = time.monotonic()
            for w in list(self.workers):
                code = w.proc.poll()
                if code is None or w.index in pending:
                    continue
                _mark_dead(w.proc.pid)
                if code > 0 and now - w.started < START_GRACE_S and w.restarts == 0:
                    print(f"{self.prog}: worker {w.index} exited with status {code} at start; "
                          "stopping", file=sys.stderr, flush=True)
                    return code or 1
                delay = min(RESTART_MAX_S, 0.5 * 2 ** min(w.restarts, 6))
                print(f"{self.prog}: worker {w.index} (pid {w.proc.pid}) exited with status "
                      f"{code}; starting it again in {delay:.1f}s", file=sys.stderr, flush=True)
                pending[w.index] = now + delay
            for index, due in list(pending.items()):
                if time.monotonic() >= due:
                    old = self.workers[index]
                    self.workers[index] = self.spawn(index, old.restarts + 1)
                    del pending[index]
            time.sleep(POLL_S)
        return 0

    def _stop_all(self) -> None:
        for w in self.workers:
            if w.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for w in self.workers:
            try:
                w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()


PR_SET_PDEATHSIG = 1


def _die_with(parent: int) -> Callable[[], None]:
    """In the child, before exec: SIGTERM when the supervisor dies, however it dies (a
    SIGKILL leaves it no time to stop its workers), so no worker outlives it."""

    def arm() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # it died before the line above
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


def _mark_dead(pid: int) -> None:
    """Drop a dead worker's live gauges (in-flight, queue length) from the sums."""
    if os.environ.get(MULTIPROC_ENV) is None:
        return
    from prometheus_client import multiprocess
    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def serve_workers(n: int, *, module: str, argv: Sequence[str] | None, listen: str,
                  prog: str) -> None:
    """In the operator's process with ``n > 1``: supervise ``n`` workers, then exit.

    Returns at once in a worker or when ``n`` is 1, so a role's ``main`` calls it
    first and goes on to serve when it returns.
    """
    if n <= 1 or worker_index() is not None:
        return
    if n > 256:
        fail(prog, f"--workers {n}: at most 256")
    holder = reserve_port(listen, prog)
    supervisor = Supervisor(n, module, sys.argv[1:] if argv is None else argv, prog)
    os.environ[MULTIPROC_ENV] = supervisor.metrics_dir  # for _mark_dead in this process
    try:
        code = supervisor.run()
    finally:
        holder.close()
    sys.exit(code)
