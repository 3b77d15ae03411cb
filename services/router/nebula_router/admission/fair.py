"""Fair share across tenants within one class: start-time fair queuing (pure).

Each request gets a virtual start tag ``max(V, last tag of its tenant) + 1`` where
``V`` is the tag of the request last dispatched from the class; the smallest tag goes
first. A tenant with a backlog thus gets one turn per round of backlogged tenants, however
many requests it sent, and a tenant that was idle starts at ``V`` (no credit saved up
while idle). Removal (a cancel or a timeout) is lazy: the entry is marked and skipped.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(slots=True, eq=False)
class Waiter(Generic[T]):
    """One queued request; ``item`` is whatever the caller wakes (a future)."""

    item: T
    tenant: str
    cls: int
    enqueued: float
    tag: float = 0.0
    seq: int = 0
    queued: bool = True
    """False once it left the queue (dispatched, cancelled, timed out)."""


@dataclass(slots=True)
class FairQueue(Generic[T]):
    """The waiters of one class, in fair order across tenants."""

    virtual: float = 0.0
    last_tag: dict[str, float] = field(default_factory=dict)
    heap: list[tuple[float, int, Waiter[T]]] = field(default_factory=list)
    size: int = 0
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    def push(self, w: Waiter[T], weight: float = 1.0) -> None:
        w.tag = max(self.virtual, self.last_tag.get(w.tenant, 0.0)) + 1.0 / weight
        w.seq = next(self._seq)
        self.last_tag[w.tenant] = w.tag
        heapq.heappush(self.heap, (w.tag, w.seq, w))
        self.size += 1

    def peek(self) -> Waiter[T] | None:
        heap = self.heap
        while heap and not heap[0][2].queued:
            heapq.heappop(heap)
        return heap[0][2] if heap else None

    def taken(self, w: Waiter[T]) -> None:
        """``w`` (queued in this class) leaves to be served: the class's clock moves on."""
        self.virtual = max(self.virtual, w.tag)
        self._leave(w)

    def removed(self, w: Waiter[T]) -> None:
        """``w`` left without being served (cancel, timeout, aged out to another class)."""
        self._leave(w)

    def _leave(self, w: Waiter[T]) -> None:
        w.queued = False
        self.size -= 1
        if self.size == 0:
            # Nobody waits: every tag is history. Forget them (the table stays bounded).
            self.heap.clear()
            self.last_tag.clear()
