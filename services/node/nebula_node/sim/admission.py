"""The sim's admission queue: at most N requests run, the rest wait in FIFO order."""

from __future__ import annotations

import asyncio
from collections import deque


class Admission:
    """At most ``limit`` running requests (0 = unlimited); the rest wait in FIFO order.

    A slot freed by :meth:`release` is handed straight to the oldest waiter, so a
    burst of arrivals cannot overtake a request that has been waiting.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def _has_room(self) -> bool:
        return self.limit <= 0 or self.running < self.limit

    async def acquire(self) -> None:
        if not self._waiters and self._has_room():
            self.running += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the slot was handed to us just as we were cancelled
            else:
                self._waiters.remove(fut)
            raise

    def release(self) -> None:
        self.running -= 1
        self._wake()

    def set_limit(self, limit: int) -> None:
        self.limit = limit
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._has_room():
            fut = self._waiters.popleft()
            if not fut.done():
                self.running += 1
                fut.set_result(None)
