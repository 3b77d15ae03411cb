"""A replica as the routing policy sees it: endpoint facts, engine load, local state.

One :class:`Candidate` object lives per replica for as long as the replica is in
the endpoint table; the table updates its fields in place when etcd changes, so
local state (in-flight count, failures, ejection) survives record updates.
Policies read candidates and never do IO.
"""

from __future__ import annotations

from dataclasses import dataclass

from nebula_common.capabilities import Capability
from nebula_common.records import EndpointState


@dataclass(eq=False, slots=True)
class Candidate:
    model_uid: str
    replica_id: str
    base_url: str = ""
    model_name: str = ""
    engine: str = ""
    status: str = EndpointState.READY
    node_id: str = ""
    capabilities: frozenset[Capability] | None = None
    """What its engine serves, as its node declared it (None: an older node declared nothing)."""
    max_concurrency: int = 0
    """Requests its engine runs at once, as its node declared it (0: not declared)."""
    # engine load scraped by the node into /stats/<uid>/<rid>
    running: float = 0.0
    waiting: float = 0.0
    kv_cache_usage: float = 0.0
    prefix_cache_hit_rate: float = 0.0
    stats_at: float = 0.0
    # local state, owned by this router process
    in_flight: int = 0
    failures: int = 0
    """Consecutive failed attempts (reset by any success)."""
    ejected_until: float = 0.0
    """Monotonic time the current ejection ends; 0 when not ejected."""
    ejections: int = 0
    """Consecutive ejections: each one doubles the next ejection period."""
    probing: bool = False
    """A half-open probe request is in flight."""
    requests: int = 0
    """Attempts sent to this replica (for /debug/endpoints)."""
    answered_at: float = 0.0
    """Monotonic time it last sent this router the head of an answer (0: never)."""

    @property
    def ref(self) -> str:
        return f"{self.model_uid}/{self.replica_id}"

    @property
    def load(self) -> float:
        """Load score: this router's in-flight requests plus the engine's own queue.

        ``running`` counts half because this router's in-flight requests are
        usually among them; it still tells apart replicas shared with other routers.
        """
        return self.in_flight + self.waiting + 0.5 * self.running
