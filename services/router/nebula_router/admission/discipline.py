"""One model's queue: strict priority between classes with aging, fair share within (pure).

Time is passed in (``now``), so the order is unit-tested without sleeping. The IO side
(:mod:`.gate`) decides *when* to pop (a replica has room) and wakes what was popped.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

from .classes import CLASSES, QueueConfig
from .fair import FairQueue, Waiter

T = TypeVar("T")


class ModelQueue(Generic[T]):
    """Waiters of one model, by class; ``len()`` counts those still queued."""

    def __init__(self, config: QueueConfig):
        self.config = config
        self.fair: list[FairQueue[T]] = [FairQueue() for _ in CLASSES]
        # Arrival order per class: its head is the class's longest waiter (aging, metrics).
        self.fifo: list[deque[Waiter[T]]] = [deque() for _ in CLASSES]
        # Per (class, tenant): its waiters in arrival order and how many are still queued
        # (who gives way when the queue is full).
        self.tenants: dict[tuple[int, str], tuple[deque[Waiter[T]], list[int]]] = {}

    def __len__(self) -> int:
        return sum(f.size for f in self.fair)

    def length(self, cls: int) -> int:
        return self.fair[cls].size

    def push(self, item: T, tenant: str, cls: int, now: float
             ) -> tuple[Waiter[T] | None, Waiter[T] | None]:
        """Queue ``item``: ``(its waiter, one pushed out)``; ``(None, None)`` when full.

        A full queue makes room for the newcomer only by pushing out the newest request of
        a tenant that holds more than its share: of a lower class first, else of the same
        class when that tenant has more than one request more waiting than the newcomer's.
        So a heavy tenant cannot fill the queue and lock the others out (both are 429).
        """
        out: Waiter[T] | None = None
        if len(self) >= self.config.max_queue:
            out = self._victim(tenant, cls)
            if out is None:
                return None, None
            self.remove(out)
        w = Waiter(item, tenant, cls, now)
        self.fair[cls].push(w)
        self.fifo[cls].append(w)
        waiters, count = self.tenants.setdefault((cls, tenant), (deque(), [0]))
        waiters.append(w)
        count[0] += 1
        return w, out

    def _victim(self, tenant: str, cls: int) -> Waiter[T] | None:
        """The newest waiter of the tenant holding most of the lowest class with waiters at
        or below ``cls``, when it may be pushed out for a newcomer (see :meth:`push`)."""
        for level in range(len(CLASSES) - 1, cls - 1, -1):
            held = [(count[0], t) for (c, t), (_, count) in self.tenants.items() if c == level]
            if not held:
                continue
            most, who = max(held)
            mine = self.tenants.get((cls, tenant))
            if level == cls and most <= (mine[1][0] if mine else 0) + 1:
                return None
            waiters = self.tenants[(level, who)][0]
            while waiters and not waiters[-1].queued:
                waiters.pop()
            return waiters[-1] if waiters else None
        return None

    def _forget(self, w: Waiter[T]) -> None:
        key = (w.cls, w.tenant)
        waiters, count = self.tenants[key]
        count[0] -= 1
        if count[0] == 0:
            del self.tenants[key]
            return
        while waiters and not waiters[0].queued:  # a tenant's waiters leave mostly oldest first
            waiters.popleft()

    def remove(self, w: Waiter[T]) -> bool:
        """``w`` leaves at once (its client went away, or it timed out); False if it had
        left already."""
        if not w.queued:
            return False
        self.fair[w.cls].removed(w)
        self._forget(w)
        self._trim(w.cls)
        return True

    def _head(self, cls: int) -> Waiter[T] | None:
        self._trim(cls)
        fifo = self.fifo[cls]
        return fifo[0] if fifo else None

    def _trim(self, cls: int) -> None:
        fifo = self.fifo[cls]
        while fifo and not fifo[0].queued:
            fifo.popleft()
        if not self.fair[cls].size:
            fifo.clear()

    def pop(self, now: float) -> Waiter[T] | None:
        """The next request to dispatch, removed from the queue; None when empty.

        Classes are served strictly highest first, except that a request that has waited
        long enough competes in a higher class (``aging_s`` per class step); among those
        aged into a class the longest waiter goes first, ahead of the class's own.
        """
        cfg = self.config
        for level in range(len(CLASSES)):
            aged: Waiter[T] | None = None
            for cls in range(level + 1, len(CLASSES)):
                head = self._head(cls)
                if head is not None and cfg.effective_class(cls, now - head.enqueued) <= level \
                        and (aged is None or head.enqueued < aged.enqueued):
                    aged = head
            if aged is not None:
                self.fair[aged.cls].removed(aged)
                self._forget(aged)
                self._trim(aged.cls)
                return aged
            w = self.fair[level].peek()
            if w is not None:
                self.fair[level].taken(w)
                self._forget(w)
                self._trim(level)
                return w
        return None

    def oldest_wait(self, cls: int, now: float) -> float:
        """Seconds the longest waiter of ``cls`` has waited (0 when none)."""
        head = self._head(cls)
        return now - head.enqueued if head is not None else 0.0
