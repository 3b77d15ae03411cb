"""The ``round-robin`` picker."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from nebula_router.policy import Candidate, RouteKeys
from nebula_router.policy.pickers.round_robin import RoundRobin

Replicas = Callable[..., list[Candidate]]


def test_cycles_in_turn(replicas: Replicas) -> None:
    cands = replicas(3)
    rr = RoundRobin()
    picks = [rr.pick(cands, RouteKeys()) for _ in range(9)]
    assert [c.replica_id for c, _ in picks[:4]] == ["r1", "r2", "r0", "r1"]
    assert Counter(c.replica_id for c, _ in picks) == {"r0": 3, "r1": 3, "r2": 3}
    assert {reason for _, reason in picks} == {"round_robin"}


def test_ignores_scores_and_affinity_keys(replicas: Replicas) -> None:
    cands = replicas(4)
    rr = RoundRobin()
    got = {rr.pick(cands, RouteKeys(session="s1"), [1.0, 0.0, 0.0, 0.0])[0].replica_id
           for _ in range(8)}
    assert len(got) == 4
