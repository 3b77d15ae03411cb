"""Routing policies as pure functions: no network, no etcd."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from nebula_router.policy import Candidate, OutlierPolicy, Pipeline, RouteKeys, prefix_text
from nebula_router.policy.pipeline import (
    load_cap,
    pick_bounded_affinity,
    pick_p2c,
    ready,
    rendezvous_order,
    session_key,
)


def replicas(n: int, uid: str = "m") -> list[Candidate]:
    return [Candidate(uid, f"r{i}", base_url=f"http://h{i}") for i in range(n)]


def test_ready_filter_drops_draining_and_failed() -> None:
    cands = replicas(3)
    cands[1].status = "draining"
    cands[2].status = "failed"
    assert ready(cands) == [cands[0]]
    p = Pipeline()
    for _ in range(20):
        c, _ = p.choose(cands, RouteKeys(), now=0.0)
        assert c is cands[0]


def test_no_candidate_when_nothing_ready() -> None:
    cands = replicas(2)
    for c in cands:
        c.status = "draining"
    assert Pipeline().choose(cands, RouteKeys(), 0.0) == (None, "no_candidate")


def test_panic_routes_among_ejected_when_every_ready_replica_is_ejected() -> None:
    p = Pipeline()
    cands = replicas(2)
    for c in cands:
        c.ejected_until = 100.0  # both ejected until t=100
    chosen, reason = p.choose(cands, RouteKeys(), now=1.0)
    assert chosen in cands and reason.startswith("panic_")
    # one replica healthy again: no panic, the ejected one gets nothing
    cands[1].ejected_until = 0.0
    assert all(p.choose(cands, RouteKeys(), now=1.0) == (cands[1], "single") for _ in range(20))
    # a retry never goes back to a replica already tried, panic or not
    cands[1].ejected_until = 100.0
    assert p.choose(cands, RouteKeys(), 1.0, tried=cands) == (None, "no_candidate")
    # draining replicas are never a panic target
    for c in cands:
        c.status = "draining"
    assert p.choose(cands, RouteKeys(), 1.0) == (None, "no_candidate")


def test_p2c_prefers_lower_load_and_spreads_equal_load() -> None:
    rng = random.Random(1)
    cands = replicas(4)
    counts = Counter(pick_p2c(cands, rng)[0].replica_id for _ in range(4000))
    assert set(counts) == {"r0", "r1", "r2", "r3"}
    assert min(counts.values()) > 800  # roughly uniform under equal load
    cands[0].in_flight = 10
    counts = Counter(pick_p2c(cands, rng)[0].replica_id for _ in range(1000))
    assert counts["r0"] == 0  # the busiest of four never wins a pair


def test_p2c_uses_engine_queue_from_stats() -> None:
    rng = random.Random(2)
    a, b = replicas(2)
    b.waiting = 5
    assert all(pick_p2c([a, b], rng)[0] is a for _ in range(100))


def test_round_robin_cycles() -> None:
    cands = replicas(3)
    p = Pipeline(policy="round_robin")
    picks = [p.choose(cands, RouteKeys(), 0.0) for _ in range(9)]
    assert Counter(c.replica_id for c, _ in picks) == {"r0": 3, "r1": 3, "r2": 3}
    assert {reason for _, reason in picks} == {"round_robin"}


def test_random_distribution() -> None:
    p = Pipeline(policy="random", rng=random.Random(3))
    counts = Counter(p.choose(replicas(3), RouteKeys(), 0.0)[0].replica_id for _ in range(3000))
    assert min(counts.values()) > 800


def test_rendezvous_only_moves_keys_of_removed_replica() -> None:
    cands = replicas(5)
    keys = [f"session-{i}" for i in range(2000)]
    before = {k: rendezvous_order(k, cands)[0].replica_id for k in keys}
    assert min(Counter(before.values()).values()) > 300  # spread over all five
    survivors = [c for c in cands if c.replica_id != "r2"]
    after = {k: rendezvous_order(k, survivors)[0].replica_id for k in keys}
    for k in keys:
        if before[k] != "r2":
            assert after[k] == before[k]
    # adding a replica only takes keys to the new one
    grown = [*cands, Candidate("m", "r5", base_url="http://h5")]
    added = {k: rendezvous_order(k, grown)[0].replica_id for k in keys}
    moved = [k for k in keys if added[k] != before[k]]
    assert moved and all(added[k] == "r5" for k in moved)
    assert len(moved) < len(keys) / 3


def test_rendezvous_is_stable_across_processes() -> None:
    # blake2b, not Python's per-process salted hash(): every router agrees.
    cands = replicas(3)
    assert rendezvous_order("abc", cands)[0].replica_id == \
        rendezvous_order("abc", list(reversed(replicas(3))))[0].replica_id


def test_session_affinity_sticks_and_bounded_load_spills() -> None:
    cands = replicas(3)
    p = Pipeline(policy="session", bound_c=0.25)
    keys = RouteKeys(session="user-42")
    first, reason = p.choose(cands, keys, 0.0)
    assert reason == "session_affinity"
    for _ in range(50):
        c, reason = p.choose(cands, keys, 0.0)
        assert c is first and reason == "session_affinity"
    # the preferred replica becomes hot: the session spills to another one
    first.in_flight = 20
    c, reason = p.choose(cands, keys, 0.0)
    assert c is not first and reason == "session_spill_busy"


def test_bounded_affinity_cap() -> None:
    cands = replicas(4)
    assert load_cap(cands, 0.25) == 1  # an idle cluster: every replica may take one
    for c in cands:
        c.in_flight = 4
    # average 4.25 after this request, cap ceil(1.25 * 4.25) = 6
    assert load_cap(cands, 0.25) == 6
    order = rendezvous_order("k", cands)
    order[0].in_flight = 6
    c, preferred = pick_bounded_affinity("k", cands, 0.25)
    assert not preferred and c is order[1]


def test_session_header_applies_under_every_load_based_policy() -> None:
    cands = replicas(4)
    for policy in ("least_load", "prefix", "session"):
        p = Pipeline(policy=policy, rng=random.Random(5))
        got = {p.choose(cands, RouteKeys(session="s1", prefix="x"), 0.0)[0].replica_id
               for _ in range(30)}
        assert len(got) == 1, policy
    p = Pipeline(policy="round_robin")
    got = {p.choose(cands, RouteKeys(session="s1"), 0.0)[0].replica_id for _ in range(8)}
    assert len(got) == 4  # round_robin is not load based: no affinity


def test_session_key_header_then_user() -> None:
    assert session_key("h", {"user": "u"}) == "h"
    assert session_key(None, {"user": "u"}) == "u"
    assert session_key(None, {"user": 3}) is None
    assert session_key(None, {}) is None


def test_prefix_hit_and_fallback_when_busy() -> None:
    cands = replicas(3)
    p = Pipeline(policy="prefix", rng=random.Random(7))
    keys = RouteKeys(prefix="system:You are a pirate.\nuser:hi")
    c, reason = p.choose(cands, keys, 0.0)
    assert reason == "prefix_hit"
    assert all(p.choose(cands, keys, 0.0)[0] is c for _ in range(20))
    c.in_flight = 10
    other, reason = p.choose(cands, keys, 0.0)
    assert reason == "prefix_fallback_busy" and other is not c


def test_prefix_spreads_distinct_prefixes() -> None:
    cands = replicas(4)
    p = Pipeline(policy="prefix")
    counts = Counter(p.choose(cands, RouteKeys(prefix=f"conv {i}"), 0.0)[0].replica_id
                     for i in range(2000))
    assert len(counts) == 4 and min(counts.values()) > 350


def test_prefix_without_prompt_falls_back_to_load() -> None:
    p = Pipeline(policy="prefix")
    _, reason = p.choose(replicas(3), RouteKeys(), 0.0)
    assert reason == "prefix_none"


def test_prefix_text_chat_and_completions() -> None:
    body = {"messages": [
        {"role": "system", "content": "S"},
        {"role": "user", "content": [{"type": "text", "text": "first"}]},
        {"role": "assistant", "content": "reply"},
        {"role": "user", "content": "second"},
    ]}
    text = prefix_text(body, 1000)
    assert text == "system:S\nuser:first"
    # a later turn of the same conversation has the same prefix
    body["messages"] = body["messages"][:2]
    assert prefix_text(body, 1000) == text
    assert prefix_text({"prompt": "abcdef"}, 3) == "abc"
    assert prefix_text({"prompt": ["xyz", "q"]}, 10) == "xyz"
    assert prefix_text({"input": "hello"}, 10) == "hello"
    assert prefix_text({"model": "m"}, 10) is None


def test_overload_filter_is_soft() -> None:
    cands = replicas(2)
    p = Pipeline(max_in_flight=2, rng=random.Random(1))
    cands[0].in_flight = 2
    assert all(p.choose(cands, RouteKeys(), 0.0)[0] is cands[1] for _ in range(10))
    cands[1].in_flight = 2
    assert p.choose(cands, RouteKeys(), 0.0)[0] is not None


def test_excludes_tried_replicas() -> None:
    cands = replicas(3)
    p = Pipeline(rng=random.Random(1))
    tried = [cands[0], cands[1]]
    assert p.choose(cands, RouteKeys(), 0.0, tried)[0] is cands[2]
    assert p.choose(cands, RouteKeys(), 0.0, cands)[0] is None


def test_unknown_policy_rejected() -> None:
    with pytest.raises(ValueError):
        Pipeline(policy="fastest")


def test_ejected_replica_is_skipped_until_half_open() -> None:
    cands = replicas(2)
    p = Pipeline(outlier=OutlierPolicy(eject_after=1, base_s=10), rng=random.Random(1))
    assert p.outlier.on_failure(cands[0], now=100.0)
    assert all(p.choose(cands, RouteKeys(), 105.0)[0] is cands[1] for _ in range(20))
    # period over: one probe may go to it, then it is held until the probe's verdict
    picks = [p.choose([cands[0]], RouteKeys(), 111.0)[0] for _ in range(2)]
    assert picks[0] is cands[0]
    p.outlier.on_attempt(cands[0], 111.0)
    # held while its probe is out: another replica gets the traffic ...
    assert all(p.choose(cands, RouteKeys(), 111.0)[0] is cands[1] for _ in range(20))
    # ... and when it is the model's only replica, panic routing still uses it
    chosen, reason = p.choose([cands[0]], RouteKeys(), 111.0)
    assert chosen is cands[0] and reason.startswith("panic_")
