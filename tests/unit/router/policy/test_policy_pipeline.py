"""The running pipeline: filters, panic routing, retries, presets, weighted scores."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from nebula_router.policy import (
    POLICIES,
    Candidate,
    Need,
    OutlierPolicy,
    Pipeline,
    PolicyError,
    RouteKeys,
    Settings,
    parse_profile,
)

Replicas = Callable[..., list[Candidate]]


def test_draining_and_failed_get_nothing(replicas: Replicas) -> None:
    cands = replicas(3)
    cands[1].status = "draining"
    cands[2].status = "failed"
    p = Pipeline.build()
    assert all(p.choose(cands, RouteKeys(), now=0.0) == (cands[0], "single") for _ in range(20))


def test_no_candidate_when_nothing_ready(replicas: Replicas) -> None:
    cands = replicas(2)
    for c in cands:
        c.status = "draining"
    assert Pipeline.build().choose(cands, RouteKeys(), 0.0) == (None, "no_candidate")


def test_panic_routes_among_ejected_when_every_ready_replica_is_ejected(
        replicas: Replicas) -> None:
    p = Pipeline.build()
    cands = replicas(2)
    for c in cands:
        c.ejected_until = 100.0  # both ejected until t=100
    chosen, reason = p.choose(cands, RouteKeys(), now=1.0)
    assert chosen in cands and reason == "panic_p2c"
    # one replica healthy again: no panic, the ejected one gets nothing
    cands[1].ejected_until = 0.0
    assert all(p.choose(cands, RouteKeys(), now=1.0) == (cands[1], "single") for _ in range(20))
    # a retry never goes back to a replica already tried, panic or not
    cands[1].ejected_until = 100.0
    assert p.choose(cands, RouteKeys(), 1.0, tried=cands) == (None, "no_candidate")
    assert p.choose(cands, RouteKeys(), 1.0, tried=cands[:1]) == (cands[1], "panic_single")
    # draining replicas are never a panic target
    for c in cands:
        c.status = "draining"
    assert p.choose(cands, RouteKeys(), 1.0) == (None, "no_candidate")


def test_ejected_replica_is_skipped_until_half_open(replicas: Replicas) -> None:
    cands = replicas(2)
    p = Pipeline.build("least_load", Settings(outlier=OutlierPolicy(eject_after=1, base_s=10),
                                              rng=random.Random(1)))
    assert p.outlier.on_failure(cands[0], now=100.0)
    assert all(p.choose(cands, RouteKeys(), 105.0)[0] is cands[1] for _ in range(20))
    # period over: one probe may go to it, then it is held until the probe's verdict
    assert p.choose([cands[0]], RouteKeys(), 111.0)[0] is cands[0]
    p.outlier.on_attempt(cands[0], 111.0)
    # held while its probe is out: another replica gets the traffic ...
    assert all(p.choose(cands, RouteKeys(), 111.0)[0] is cands[1] for _ in range(20))
    # ... and when it is the model's only replica, panic routing still uses it
    assert p.choose([cands[0]], RouteKeys(), 111.0) == (cands[0], "panic_single")


def test_overload_filter_is_soft(replicas: Replicas) -> None:
    cands = replicas(2)
    p = Pipeline.build("least_load", Settings(max_in_flight=2, rng=random.Random(1)))
    cands[0].in_flight = 2
    assert all(p.choose(cands, RouteKeys(), 0.0)[0] is cands[1] for _ in range(10))
    cands[1].in_flight = 2
    assert p.choose(cands, RouteKeys(), 0.0)[0] is not None


def test_excludes_tried_replicas_before_the_soft_overload_filter(replicas: Replicas) -> None:
    cands = replicas(3)
    p = Pipeline.build("least_load", Settings(max_in_flight=1, rng=random.Random(1)))
    assert p.choose(cands, RouteKeys(), 0.0, cands[:2]) == (cands[2], "single")
    assert p.choose(cands, RouteKeys(), 0.0, cands) == (None, "no_candidate")
    # the untried replica is full, a tried one is idle: still the untried one
    cands[2].in_flight = 1
    assert p.choose(cands, RouteKeys(), 0.0, cands[:2]) == (cands[2], "single")


def test_session_header_applies_under_every_load_based_preset(replicas: Replicas) -> None:
    cands = replicas(4)
    for policy in ("least_load", "prefix", "session"):
        p = Pipeline.build(policy, Settings(rng=random.Random(5)))
        got = {p.choose(cands, RouteKeys(session="s1", prefix="x"), 0.0)
               for _ in range(30)}
        assert len(got) == 1 and got.pop()[1] == "session_affinity", policy
    p = Pipeline.build("round_robin")
    got_ids = {p.choose(cands, RouteKeys(session="s1"), 0.0)[0].replica_id for _ in range(8)}
    assert len(got_ids) == 4  # round_robin is not load based: no affinity


@pytest.mark.parametrize(("policy", "keys", "reasons"), [
    ("least_load", RouteKeys(), {"p2c"}),
    ("session", RouteKeys(), {"session_none"}),
    ("session", RouteKeys(session="u"), {"session_affinity"}),
    ("prefix", RouteKeys(), {"prefix_none"}),
    ("prefix", RouteKeys(prefix="p"), {"prefix_hit"}),
    ("round_robin", RouteKeys(prefix="p"), {"round_robin"}),
    ("random", RouteKeys(session="s"), {"random"}),
])
def test_preset_reasons(replicas: Replicas, policy: str, keys: RouteKeys,
                        reasons: set[str]) -> None:
    p = Pipeline.build(policy, Settings(rng=random.Random(0)))
    assert {p.choose(replicas(3), keys, 0.0)[1] for _ in range(10)} == reasons


def test_presets_read_only_what_they_use() -> None:
    needs = {name: Pipeline.build(name).needs for name in POLICIES}
    assert needs == {"least_load": Need.SESSION, "round_robin": Need.NONE, "random": Need.NONE,
                     "session": Need.SESSION | Need.SESSION_USER,
                     "prefix": Need.SESSION | Need.PREFIX}
    assert all(not Pipeline.build(name).scorers for name in POLICIES)  # no weighted scoring


def test_unknown_preset_rejected() -> None:
    with pytest.raises(PolicyError, match="unknown policy 'fastest'"):
        Pipeline.build("fastest")


def test_weighted_scores_sum_and_needs_union(replicas: Replicas) -> None:
    profile = parse_profile({"scorers": {"prefix-affinity": 1.0, "load": 2.0},
                             "picker": "max-score"}, name="w")
    p = Pipeline.build(profile, Settings(rng=random.Random(2)))
    assert p.needs == Need.PREFIX and p.name == "w"
    cands = replicas(3)
    keys = RouteKeys(prefix="conversation 7")
    scores = p.scores(cands, keys)  # 1 x affinity + 2 x load, all idle
    home = cands[scores.index(3.0)]
    assert scores == [3.0 if c is home else 2.0 for c in cands]
    assert p.choose(cands, keys, 0.0) == (home, "max_score")
    home.in_flight = 2  # 1 + 2 x (1/3) < 2 x 1: an idle replica now wins
    chosen, _ = p.choose(cands, keys, 0.0)
    assert chosen is not home
