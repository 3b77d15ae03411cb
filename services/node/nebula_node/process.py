"""Engine processes: one process group each, a pid file each, logs to a file each.

Engines run in their own session (``start_new_session``) so that stopping one
signals its whole group (vLLM's ``VLLM::EngineCore`` children included), and so
that a crashed node leaves them findable: the pid file names the group, and the
next node with the same state directory reaps it before starting fresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from nebula_common.logs import command_line
from nebula_common.procs import cmd_matches, group_members, read_cmdline

log = logging.getLogger(__name__)


def signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        log.warning("no permission to signal process group %d", pgid)
        return False


async def wait_group_gone(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not group_members(pgid):
            return True
        await asyncio.sleep(0.05)
    return not group_members(pgid)


async def kill_group(pgid: int, grace: float) -> None:
    """SIGTERM the group; SIGKILL whatever is left after ``grace`` seconds."""
    if not signal_group(pgid, signal.SIGTERM):
        return
    if await wait_group_gone(pgid, grace):
        return
    log.warning("process group %d still alive %.0fs after SIGTERM; sending SIGKILL", pgid, grace)
    signal_group(pgid, signal.SIGKILL)
    await wait_group_gone(pgid, 5.0)


# -- ports -------------------------------------------------------------------------------
def port_free(port: int, host: str = "0.0.0.0") -> bool:
    """True when ``host:port`` can be bound right now (SO_REUSEADDR, as servers bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def pick_port(wanted: int, port_range: tuple[int, int], reserved: set[int],
              host: str = "0.0.0.0") -> int:
    """``wanted`` if free, else the next free port in ``port_range`` (wrapping once)."""
    if wanted not in reserved and port_free(wanted, host):
        return wanted
    low, high = port_range
    start = wanted + 1 if low <= wanted < high else low
    for port in itertools.chain(range(start, high + 1), range(low, start)):
        if port not in reserved and port_free(port, host):
            return port
    raise RuntimeError(f"no free port in {low}-{high} (wanted {wanted})")


# -- one engine ----------------------------------------------------------------------------
@dataclass
class PidRecord:
    pgid: int
    pid: int
    port: int
    cmd: list[str]
    started_at: float

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def load(cls, path: Path) -> PidRecord | None:
        try:
            data = json.loads(path.read_text())
            return cls(pgid=int(data["pgid"]), pid=int(data["pid"]), port=int(data.get("port", 0)),
                       cmd=[str(x) for x in data.get("cmd", [])],
                       started_at=float(data.get("started_at", 0)))
        except (OSError, ValueError, KeyError, TypeError):
            return None


class EngineProcess:
    """A running engine: its process group, pid file and log file."""

    def __init__(self, name: str, state_dir: Path):
        self.name = name
        self.pid_path = state_dir / "engines" / f"{name}.pid"
        self.log_path = state_dir / "logs" / f"{name}.log"
        self.popen: subprocess.Popen[bytes] | None = None
        self.record: PidRecord | None = None
        self._exited: asyncio.Future[int] | None = None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    async def spawn(self, argv: list[str], env: dict[str, str], port: int) -> None:
        """Start ``argv`` in a new session, log to the log file, write the pid file.

        The log file's header line shows ``argv`` with secret values hidden (its tail
        is published with a failed replica); the pid file keeps it whole, to be
        compared with the live command line, and is readable by this user only.

        ``subprocess.Popen`` (vfork + exec) rather than the event loop's spawn: a
        plain fork() of a process with gRPC threads runs gRPC's fork handlers in
        the child, which can crash it before it execs.
        """
        loop = asyncio.get_running_loop()
        self.pid_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as logf:  # noqa: ASYNC230 - a local append, tiny
            logf.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting: "
                       f"{command_line(argv)}\n".encode())
            logf.flush()
            self.popen = subprocess.Popen(  # noqa: ASYNC220 - vfork+exec returns at once
                argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True, close_fds=True)
        self.record = PidRecord(pgid=self.popen.pid, pid=self.popen.pid, port=port, cmd=argv,
                                started_at=time.time())
        tmp = self.pid_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.record.to_json())
        tmp.replace(self.pid_path)
        # One waiter thread per engine reaps it and wakes the loop the moment it exits.
        self._exited = loop.create_future()
        popen, future = self.popen, self._exited

        def settle(code: int) -> None:
            if not future.done():
                future.set_result(code)

        def wait() -> None:
            code = popen.wait()
            loop.call_soon_threadsafe(settle, code)

        threading.Thread(target=wait, name=f"wait:{self.name}", daemon=True).start()

    @property
    def exited(self) -> bool:
        return self._exited is None or self._exited.done()

    @property
    def returncode(self) -> int | None:
        if self._exited is not None and self._exited.done():
            return self._exited.result()
        return None

    async def wait_exit(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` for the engine's main process to exit; True if it did."""
        if self._exited is None:
            return True
        done, _ = await asyncio.wait({self._exited}, timeout=timeout)
        return bool(done)

    async def stop(self, grace: float) -> None:
        """Stop the whole group (SIGTERM, then SIGKILL) and remove the pid file.

        Also used after the main process died by itself, to clean up any children
        it left in its group.
        """
        if self.record is not None:
            await kill_group(self.record.pgid, grace)
        await self.wait_exit(5.0)
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()

    def log_tail(self, max_bytes: int = 2048) -> str:
        return tail_file(self.log_path, max_bytes)


def tail_file(path: Path, max_bytes: int) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


async def reap_stale_engines(state_dir: Path, grace: float) -> list[str]:
    """Stop engine groups that a previous node (crashed) left behind; remove their pid files.

    A group is signalled only if it still has members and, when its leader is
    alive, the leader's command line is the recorded one (a recycled pid is left
    alone). While any member of a group lives, its pgid cannot be reused, so a
    leaderless group is ours.
    """
    reaped: list[str] = []
    groups: list[int] = []
    folder = state_dir / "engines"
    if not folder.is_dir():
        return reaped
    for path in sorted(folder.glob("*.pid")):
        record = PidRecord.load(path)
        if record is not None:
            members = group_members(record.pgid)
            leader_alive = record.pgid in members
            ours = bool(members) and (
                not leader_alive or cmd_matches(read_cmdline(record.pgid), record.cmd))
            if ours:
                log.warning("reaping engine group %d left by a previous node (%s)",
                            record.pgid, path.stem)
                groups.append(record.pgid)
                reaped.append(path.stem)
            elif members:
                log.warning("pid file %s names group %d, which now runs something else; "
                            "leaving it alone", path, record.pgid)
    # All at once: a node restarting with many engines should not wait for each in turn.
    await asyncio.gather(*(kill_group(pgid, grace) for pgid in groups))
    for path in folder.glob("*.pid"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return reaped
