"""The ``p2c`` picker: power of two choices on load, or on a profile's scores."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

import pytest

from nebula_router.policy import Candidate, PolicyError, RouteKeys
from nebula_router.policy.pickers.p2c import P2C, build
from nebula_router.policy.plugin import Options, Settings

Replicas = Callable[..., list[Candidate]]


def test_prefers_lower_load_and_spreads_equal_load(replicas: Replicas) -> None:
    p2c = P2C(random.Random(1))
    cands = replicas(4)
    counts = Counter(p2c.pick(cands, RouteKeys())[0].replica_id for _ in range(4000))
    assert set(counts) == {"r0", "r1", "r2", "r3"}
    assert min(counts.values()) > 800  # roughly uniform under equal load
    cands[0].in_flight = 10
    counts = Counter(p2c.pick(cands, RouteKeys())[0].replica_id for _ in range(1000))
    assert counts["r0"] == 0  # the busiest of four never wins a pair


def test_uses_engine_queue_from_stats(replicas: Replicas) -> None:
    p2c = P2C(random.Random(2))
    a, b = replicas(2)
    b.waiting = 5
    assert all(p2c.pick([a, b], RouteKeys()) == (a, "p2c") for _ in range(100))


def test_single_candidate(replicas: Replicas) -> None:
    (only,) = replicas(1)
    assert P2C(random.Random(0)).pick([only], RouteKeys()) == (only, "single")


def test_with_scores_the_higher_score_wins(replicas: Replicas) -> None:
    p2c = P2C(random.Random(3))
    cands = replicas(3)
    cands[2].in_flight = 50  # load is ignored once there are scores
    scores = [0.1, 0.2, 0.9]
    counts = Counter(p2c.pick(cands, RouteKeys(), scores)[0].replica_id for _ in range(600))
    assert counts["r0"] == 0 and counts["r2"] > counts["r1"] > 0


def test_must_be_last_in_the_chain() -> None:
    with pytest.raises(PolicyError, match="last"):
        build(Settings(), Options("picker"), P2C(random.Random()))
