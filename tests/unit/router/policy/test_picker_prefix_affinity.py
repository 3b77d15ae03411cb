"""The ``prefix-affinity`` picker: a prompt prefix to its replica unless that one is busy."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

import pytest

from nebula_router.policy import Candidate, Need, PolicyError, RouteKeys
from nebula_router.policy.pickers.p2c import P2C
from nebula_router.policy.pickers.prefix_affinity import PrefixAffinity, build
from nebula_router.policy.plugin import Options, Settings

Replicas = Callable[..., list[Candidate]]


def picker(seed: int = 7) -> PrefixAffinity:
    return PrefixAffinity(P2C(random.Random(seed)), bound_c=0.25)


def test_hit_and_fallback_when_busy(affinity: Callable[..., None]) -> None:
    affinity(picker().pick, RouteKeys(prefix="system:You are a pirate.\nuser:hi"),
             "prefix_hit", "prefix_fallback_busy")


def test_spreads_distinct_prefixes(replicas: Replicas) -> None:
    cands = replicas(4)
    p = picker()
    counts = Counter(p.pick(cands, RouteKeys(prefix=f"conv {i}"))[0].replica_id
                     for i in range(2000))
    assert len(counts) == 4 and min(counts.values()) > 350


def test_without_a_prompt_falls_back_to_the_next_picker(replicas: Replicas) -> None:
    assert picker().pick(replicas(3), RouteKeys())[1] == "prefix_none"
    (only,) = replicas(1)
    only.in_flight = 99  # a lone replica is always a hit, however busy
    assert picker().pick([only], RouteKeys(prefix="x")) == (only, "prefix_hit")


def test_needs_prefix_and_a_fallback() -> None:
    assert picker().needs == Need.PREFIX
    with pytest.raises(PolicyError, match="must follow"):
        build(Settings(), Options("picker"), None)
