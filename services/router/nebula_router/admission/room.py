"""How many more requests a model's replicas can take now (pure).

A replica's capacity is ``max_running``. This router knows its own requests exactly (it
counts what it admitted); other routers' requests on the same replica are estimated from
the engine's reported running + waiting minus what this router had in flight when that
report arrived (the report lags: without the subtraction a burst that just finished would
block the queue until the next report).
"""

from __future__ import annotations

from nebula_common.records import EndpointState

from ..policy import Candidate


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

    def free(self, candidates: list[Candidate], max_running: int, admitted: int) -> int:
        """Slots left on the ready replicas, after ``admitted`` of this router's requests."""
        total = 0.0
        for c in candidates:
            if c.status == EndpointState.READY:
                total += max(0.0, max_running - self.others(c))
        return int(total) - admitted
