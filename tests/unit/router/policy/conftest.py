"""Fixtures for the policy plugin tests: candidate replicas, no network, no etcd."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from nebula_router.policy import Candidate, RouteKeys


def make_replicas(n: int, uid: str = "m") -> list[Candidate]:
    return [Candidate(uid, f"r{i}", base_url=f"http://h{i}") for i in range(n)]


def sticks_then_spills(pick: Callable[[list[Candidate], RouteKeys], tuple[Candidate, str]],
                       keys: RouteKeys, hit: str, spill: str) -> None:
    """An affinity picker keeps ``keys`` on one replica (``hit``) until that one is hot."""
    cands = make_replicas(3)
    home, reason = pick(cands, keys)
    assert reason == hit
    assert all(pick(cands, keys) == (home, hit) for _ in range(30))
    home.in_flight = 20
    other, reason = pick(cands, keys)
    assert other is not home and reason == spill


@pytest.fixture
def replicas() -> Callable[..., list[Candidate]]:
    """``replicas(n)``: n idle ready replicas r0..r{n-1} of model ``m``."""
    return make_replicas


@pytest.fixture
def affinity() -> Callable[..., None]:
    """``affinity(picker.pick, keys, hit_reason, spill_reason)``: see :func:`sticks_then_spills`."""
    return sticks_then_spills
