"""A real ``redis-server`` (Debian's, ``make redis``) on a free loopback port, in a temp dir."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from devtools.cluster import Proc, free_port, wait_for
from tests.support.needs import binary


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process; :meth:`stop` kills it (a crash), :meth:`start` brings it
    back on the same port."""

    def __init__(self, directory: Path, port: int = 0, args: Sequence[str] = ()):
        self.binary = binary("redis-server", "run `make redis` (apt-get install redis-server)")
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.args = list(args)
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = Proc("redis", [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                                   "--dir", str(self.directory), "--save", "",
                                   "--appendonly", "no", "--protected-mode", "no", *self.args],
                         self.directory / "redis.log").start()
        wait_for(lambda: _answers(self.port), 20, "redis-server answering PING")
        return self

    def kill(self) -> None:
        """SIGKILL: gone at once, as a crash or a partition leaves it."""
        if self.proc is not None:
            self.proc.kill9()
            self.proc = None
        deadline = time.monotonic() + 5
        while _answers(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(grace=3)
            self.proc = None

    def flush(self) -> None:
        subprocess.run([str(Path(self.binary).with_name("redis-cli")), "-p", str(self.port),
                        "FLUSHALL"], check=True, capture_output=True, timeout=10)
