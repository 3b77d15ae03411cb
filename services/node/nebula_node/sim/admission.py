"""The sim's admission queue: at most N requests (and a KV token budget) run, the rest wait
in FIFO order."""

from __future__ import annotations

import asyncio
from collections import deque


class Admission:
    """At most ``limit`` running requests (0 = unlimited) holding at most ``budget`` KV
    tokens together (0 = unlimited; one request alone always runs, however large); the rest
    wait in FIFO order.

    A slot freed by :meth:`release` is handed straight to the oldest waiter, so a
    burst of arrivals cannot overtake a request that has been waiting.
    """

    def __init__(self, limit: int, budget: int = 0) -> None:
        self.limit = limit
        self.budget = budget
        self.running = 0
        self.used = 0
        """KV tokens held by the running requests."""
        self._waiters: deque[tuple[asyncio.Future[None], int]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def _has_room(self, cost: int) -> bool:
        if self.limit > 0 and self.running >= self.limit:
            return False
        return self.budget <= 0 or self.running == 0 or self.used + cost <= self.budget

    def _take(self, cost: int) -> None:
        self.running += 1
        self.used += cost

    async def acquire(self, cost: int = 0) -> None:
        """A slot for a request holding ``cost`` KV tokens (release it with the same cost)."""
        if not self._waiters and self._has_room(cost):
            self._take(cost)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (fut, cost)
        self._waiters.append(entry)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(cost)  # the slot was handed to us just as we were cancelled
            else:
                self._waiters.remove(entry)
            raise

    def release(self, cost: int = 0) -> None:
        self.running -= 1
        self.used -= cost
        self._wake()

    def set_limit(self, limit: int) -> None:
        self.limit = limit
        self._wake()

    def set_budget(self, budget: int) -> None:
        self.budget = budget
        self._wake()

    def _wake(self) -> None:
        # FIFO: the oldest waiter goes first even when a smaller one behind it would fit.
        while self._waiters and self._has_room(self._waiters[0][1]):
            fut, cost = self._waiters.popleft()
            if not fut.done():
                self._take(cost)
                fut.set_result(None)
