"""The ``random`` picker."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

from nebula_router.policy import Candidate, RouteKeys
from nebula_router.policy.pickers.random import RandomPick

Replicas = Callable[..., list[Candidate]]


def test_uniform_distribution(replicas: Replicas) -> None:
    pick = RandomPick(random.Random(3))
    cands = replicas(3)
    cands[0].in_flight = 100  # load does not matter to it
    results = [pick.pick(cands, RouteKeys()) for _ in range(3000)]
    counts = Counter(c.replica_id for c, _ in results)
    assert min(counts.values()) > 800
    assert {reason for _, reason in results} == {"random"}
