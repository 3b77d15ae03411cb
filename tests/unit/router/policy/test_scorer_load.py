"""The ``load`` scorer: relative to the least loaded replica, in [0, 1]."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from nebula_router.policy import Candidate, Need, RouteKeys
from nebula_router.policy.scorers.load import LoadScorer

Replicas = Callable[..., list[Candidate]]


def test_least_loaded_scores_one_and_twice_the_load_about_half(replicas: Replicas) -> None:
    a, b, c = replicas(3)
    a.in_flight = 1
    b.in_flight = 3
    c.waiting = 1          # the engine's own queue counts in full
    c.running = 2          # running counts half: 1 + 0.5 x 2 = 2
    scores = LoadScorer().score([a, b, c], RouteKeys())
    assert scores == pytest.approx([1.0, 0.5, 2 / 3])
    assert all(0.0 <= s <= 1.0 for s in scores)


def test_equal_load_scores_equal_and_needs_nothing(replicas: Replicas) -> None:
    cands = replicas(3)
    for c in cands:
        c.in_flight = 7
    assert LoadScorer().score(cands, RouteKeys()) == [1.0, 1.0, 1.0]
    assert LoadScorer().needs == Need.NONE
