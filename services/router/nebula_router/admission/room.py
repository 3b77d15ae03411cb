"""How many more requests a model's replicas can take now (pure).

A replica's capacity is the router's ``--max-running-per-replica`` when the operator gave
one, else what its engine declared (``Endpoint.max_concurrency``: vLLM's ``--max-num-seqs``,
the sim's ``--max-concurrency``, 1 for llama.cpp); a replica that declares nothing has no
limit. An engine that reports requests *waiting* is full at what it runs, whatever was
declared (a KV budget, another router's load, an override set too high).

This router knows its own requests exactly (it counts what it admitted); other routers'
requests on the same replica are estimated from the engine's reported running + waiting
minus what this router had in flight when that report arrived (the report lags: without
the subtraction a burst that just finished would block the queue until the next report).
So a replica that reports waiting has no room when the report arrives, and gets it back as
this router's own requests on it finish.
"""

from __future__ import annotations

from nebula_common.records import EndpointState

from ..policy import Candidate

UNBOUNDED = 1 << 30
"""Free slots of a model with a ready replica that has no limit."""


def capacity(c: Candidate, override: int) -> int:
    """Requests replica ``c`` runs at once: ``override`` when > 0, else its engine's
    declared concurrency (0: no limit)."""
    return override if override > 0 else c.max_concurrency


class RoomEstimator:
    """Free slots of one model; remembers this router's in-flight count per stats report."""

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen: dict[str, tuple[float, int]] = {}

    def others(self, c: Candidate) -> float:
        """Requests on ``c`` that are not this router's, as of its last report."""
        seen = self._seen.get(c.replica_id)
        if seen is None or seen[0] != c.stats_at:
            seen = self._seen[c.replica_id] = (c.stats_at, c.in_flight)
        return max(0.0, c.running + c.waiting - seen[1])

    def free(self, candidates: list[Candidate], override: int, admitted: int) -> int:
        """Slots left on the ready replicas, after ``admitted`` of this router's requests
        (:data:`UNBOUNDED` when one of them has no limit). Per request: kept inline."""
        total = 0.0
        for c in candidates:
            if c.status != EndpointState.READY:
                continue
            cap: float = override if override > 0 else c.max_concurrency  # capacity()
            if c.waiting > 0:  # the engine queues: it is full at what it runs
                cap = min(cap, c.running) if cap > 0 else c.running
            elif cap <= 0:
                return UNBOUNDED
            total += max(0.0, cap - self.others(c))
        return int(total) - admitted
