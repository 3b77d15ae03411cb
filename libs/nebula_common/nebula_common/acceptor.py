"""An accept loop that takes every pending connection at once, not one per loop turn.

uvloop's servers accept a single connection each time the event loop goes round. On a
busy loop (1,000 streams being forwarded, each turn tens of milliseconds) a burst of new
clients then waits in the kernel's accept queue for seconds: measured on the router,
about 50 accepts a second with 500 connections queued, and a p99 of 6 s for the first
request of 1,000 paced streams against 1 s for the ones after (``bench/findings.md``).
:class:`Acceptor` watches the listening socket itself and, each time it is readable,
accepts up to :data:`BATCH` connections and hands each to the loop with the server's
protocol factory (``loop.connect_accepted_socket``), as the servers' own code would.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable

log = logging.getLogger(__name__)

BATCH = 512
"""Connections accepted per readiness event, at most (the rest wait for the next turn)."""
FD_PAUSE_S = 1.0
"""Out of file descriptors: accepting pauses this long (as asyncio's own servers do)."""
_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)

ProtocolFactory = Callable[[], asyncio.Protocol]


class Acceptor:
    """Accepts on ``sock`` for ``factory`` until :meth:`close`."""

    def __init__(self, sock: socket.socket, factory: ProtocolFactory, backlog: int = 2048
                 ) -> None:
        self.loop = asyncio.get_running_loop()
        self.sock = sock
        self.factory = factory
        self._tasks: set[asyncio.Task[object]] = set()
        self._paused: asyncio.TimerHandle | None = None
        sock.setblocking(False)
        sock.listen(backlog)  # a worker's socket is bound but not listening until now
        self._watch()

    def _watch(self) -> None:
        self._paused = None
        self.loop.add_reader(self.sock.fileno(), self._ready)

    def _ready(self) -> None:
        for _ in range(BATCH):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the client gave up while queued
            except OSError as exc:
                if exc.errno in _OUT_OF_FDS:
                    log.warning("out of file descriptors; accepting paused for %gs",
                                FD_PAUSE_S)
                    self.loop.remove_reader(self.sock.fileno())
                    self._paused = self.loop.call_later(FD_PAUSE_S, self._watch)
                    return
                raise
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = self.loop.create_task(self._serve(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(self.factory, conn)
        except OSError:  # the client went away before the transport was made
            conn.close()

    def close(self) -> None:
        """Stop accepting (connections already made are the server's to finish)."""
        if self._paused is not None:
            self._paused.cancel()
            self._paused = None
        elif self.sock.fileno() >= 0:
            self.loop.remove_reader(self.sock.fileno())
