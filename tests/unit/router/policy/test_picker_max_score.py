"""The ``max-score`` picker: highest weighted score, random among ties."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

from nebula_router.policy import Candidate, RouteKeys
from nebula_router.policy.pickers.max_score import MaxScore

Replicas = Callable[..., list[Candidate]]


def test_highest_score_wins(replicas: Replicas) -> None:
    cands = replicas(3)
    pick = MaxScore(random.Random(1))
    assert all(pick.pick(cands, RouteKeys(), [0.2, 2.5, 1.0]) == (cands[1], "max_score")
               for _ in range(20))


def test_ties_are_broken_at_random(replicas: Replicas) -> None:
    cands = replicas(4)
    pick = MaxScore(random.Random(2))
    counts = Counter(pick.pick(cands, RouteKeys(), [1.0, 3.0, 3.0, 3.0])[0].replica_id
                     for _ in range(900))
    assert set(counts) == {"r1", "r2", "r3"} and min(counts.values()) > 200
    # no scorers at all: every candidate ties
    counts = Counter(pick.pick(cands, RouteKeys())[0].replica_id for _ in range(800))
    assert len(counts) == 4
