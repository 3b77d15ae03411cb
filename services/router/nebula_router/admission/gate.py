"""The router's admission queue (IO): hold a request until a replica of its model has room.

Each ready replica runs as many requests at once as its capacity (:mod:`.room`: the
operator's ``--max-running-per-replica``, else what its engine declared), this router's
plus what the engines report of others'; the rest wait in the model's :class:`.ModelQueue`. A slot
freed by :meth:`Admission.release` goes to the next request in the discipline's order; a
periodic tick also re-checks (a replica joined, an engine report moved). A request is
shed with 429 when the queue is full and 503 when its class's wait bound passes; a
cancelled waiter (its client went away) leaves the queue at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from .. import metrics as m
from ..table import ModelEntry
from .classes import CLASSES, QueueConfig, class_of
from .discipline import ModelQueue
from .fair import Waiter
from .room import UNBOUNDED, RoomEstimator, capacity


class Shed(Exception):
    """The request is refused by the queue: ``status``, ``code`` and ``retry_after``."""

    def __init__(self, status: int, code: str, message: str, retry_after: int):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


class ModelGate:
    """One model's queue and this router's admitted requests for it."""

    __slots__ = ("admitted", "per_replica", "queue", "room", "uid")

    def __init__(self, uid: str, config: QueueConfig):
        self.uid = uid
        self.queue: ModelQueue[asyncio.Future[None]] = ModelQueue(config)
        self.admitted = 0
        self.room = RoomEstimator()
        self.per_replica = 0
        """The replicas' capacity last seen (kept while the model has none, at zero)."""


class Admission:
    """Per-model admission for one router."""

    def __init__(self, max_running: int, config: QueueConfig,
                 entry_of: Callable[[str], ModelEntry | None],
                 clock: Callable[[], float] = time.monotonic):
        self.max_running = max_running
        """The operator's ``--max-running-per-replica``; 0: each replica's declared
        concurrency."""
        self.config = config
        self.entry_of = entry_of
        self.clock = clock
        self.gates: dict[str, ModelGate] = {}

    def _free(self, gate: ModelGate) -> int:
        entry = self.entry_of(gate.uid)
        if entry is None:
            return 0
        return gate.room.free(entry.candidates, self.max_running, gate.admitted)

    async def acquire(self, uid: str, tenant: str | None, priority: str | None) -> ModelGate:
        """Wait for a slot of model ``uid``; raises :class:`Shed` when refused."""
        gate = self.gates.get(uid)
        if gate is None:
            gate = self.gates[uid] = ModelGate(uid, self.config)
        cls = class_of(priority)
        if not gate.queue and self._free(gate) > 0:
            gate.admitted += 1
            m.queue_dispatched_c(uid, CLASSES[cls]).inc()
            m.queue_wait_h(uid, CLASSES[cls]).observe(0.0)
            return gate
        if self._nothing_coming(uid):
            gate.admitted += 1  # not a dispatch: the proxy answers its 503 at once
            return gate
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        w, out = gate.queue.push(fut, tenant or "", cls, self.clock())
        if out is not None:  # a tenant over its share gives way to this one
            self._gauge(gate, out.cls)
            if not out.item.done():
                out.item.set_exception(self._full(uid))
        if w is None:
            raise self._full(uid)
        self._gauge(gate, cls)
        self._wake(gate)
        timeout = self.config.timeout_of(cls)
        try:
            async with asyncio.timeout(timeout):
                await fut
        except TimeoutError:
            if not self._handed(fut):
                self._left(gate, w)
                m.queue_shed_c(uid, "queue_timeout").inc()
                raise Shed(503, "queue_timeout", f"no replica of model '{uid}' had room "
                           f"within the {CLASSES[cls]} class's queue bound ({timeout:g}s)",
                           max(1, int(timeout // 4))) from None
        except Shed:
            raise  # pushed out of a full queue by a tenant under its share
        except asyncio.CancelledError:
            if self._handed(fut):
                self.release(gate)  # the slot came just as the client went: pass it on
            else:
                self._left(gate, w)
                m.queue_shed_c(uid, "cancelled").inc()
            raise
        return gate

    def _nothing_coming(self, uid: str) -> bool:
        """No ready replica, and no placement plan that would bring one (endpoints registered
        by hand): holding the request would only delay the router's 503 + Retry-After. With a
        plan it is held: the scheduler is placing a replica (a wake from zero, a replacement)."""
        entry = self.entry_of(uid)
        return entry is not None and not entry.placed and not entry.ready_replicas

    def _full(self, uid: str) -> Shed:
        m.queue_shed_c(uid, "queue_full").inc()
        return Shed(429, "queue_full", f"the queue for model '{uid}' is full "
                    f"({self.config.max_queue} waiting); retry later", 1)

    @staticmethod
    def _handed(fut: asyncio.Future[None]) -> bool:
        """A slot was handed to ``fut`` (not a push-out, not a cancel)."""
        return fut.done() and not fut.cancelled() and fut.exception() is None

    def _left(self, gate: ModelGate, w: Waiter[asyncio.Future[None]]) -> None:
        if gate.queue.remove(w):
            self._gauge(gate, w.cls)

    def release(self, gate: ModelGate) -> None:
        """A request admitted on ``gate`` finished: its slot goes to the next waiter."""
        gate.admitted -= 1
        if gate.queue:
            self._wake(gate)

    def _wake(self, gate: ModelGate) -> None:
        queue = gate.queue
        free = self._free(gate)
        now = self.clock()
        while free > 0 and queue:
            w = queue.pop(now)
            if w is None:
                break
            self._gauge(gate, w.cls)
            if w.item.done():  # cancelled between its removal and now: not a dispatch
                continue
            w.item.set_result(None)
            gate.admitted += 1
            free -= 1
            name = CLASSES[w.cls]
            m.queue_dispatched_c(gate.uid, name).inc()
            m.queue_wait_h(gate.uid, name).observe(now - w.enqueued)

    def tick(self) -> None:
        """Re-check every model with waiters (replicas and engine reports change); forget
        the idle gates of models no longer in the table (the dict stays bounded)."""
        for uid, gate in list(self.gates.items()):
            if gate.queue:
                self._wake(gate)
            elif not gate.admitted and self.entry_of(uid) is None:
                del self.gates[uid]

    async def run(self, interval: float = 0.05) -> None:
        """The tick loop (run under the router's TaskSet)."""
        while True:
            await asyncio.sleep(interval)
            self.tick()

    def _gauge(self, gate: ModelGate, cls: int) -> None:
        m.queue_length_g(gate.uid, CLASSES[cls]).set(gate.queue.length(cls))

    def per_replica(self, gate: ModelGate) -> int:
        """The capacity of a replica of ``gate``'s model (the largest its replicas declare,
        or the override), for the queue signal the autoscaler sizes by; 0: no limit known."""
        entry = self.entry_of(gate.uid)
        if self.max_running > 0:
            gate.per_replica = self.max_running
        elif entry is not None and entry.candidates:
            gate.per_replica = max(capacity(c, 0) for c in entry.candidates)
        return gate.per_replica

    def slots(self, gate: ModelGate) -> dict[str, int | None]:
        """Each replica's capacity (None: no limit), for /debug/queue."""
        entry = self.entry_of(gate.uid)
        return {c.replica_id: capacity(c, self.max_running) or None
                for c in (entry.candidates if entry is not None else [])}

    def describe(self) -> dict[str, object]:
        """For /debug/queue: bounds and, per model, admitted and waiting by class."""
        now = self.clock()
        return {
            "max_running_per_replica": self.max_running,
            "per_replica_from": "flag" if self.max_running > 0 else "engine",
            "max_queue": self.config.max_queue, "aging_s": self.config.aging_s,
            "timeouts": dict(zip(CLASSES, self.config.timeouts, strict=True)),
            "models": {uid: {"admitted": g.admitted, "free": _shown(self._free(g)),
                             "slots": self.slots(g),
                             "waiting": {n: g.queue.length(i) for i, n in enumerate(CLASSES)},
                             "oldest_wait_s": {n: round(g.queue.oldest_wait(i, now), 3)
                                               for i, n in enumerate(CLASSES)}}
                       for uid, g in self.gates.items()},
        }


def _shown(free: int) -> int | None:
    return None if free >= UNBOUNDED else free
