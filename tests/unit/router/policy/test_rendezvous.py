"""Rendezvous hashing and bounded loads, shared by the affinity plugins."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from nebula_router.policy import Candidate
from nebula_router.policy.rendezvous import (
    affinity_scores,
    bounded_affinity,
    load_cap,
    preferred,
    rendezvous_order,
    under_cap,
)

Replicas = Callable[..., list[Candidate]]


def test_only_moves_keys_of_removed_replica(replicas: Replicas) -> None:
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


def test_stable_across_processes_and_orders(replicas: Replicas) -> None:
    # blake2b, not Python's per-process salted hash(): every router agrees.
    assert rendezvous_order("abc", replicas(3))[0].replica_id == \
        rendezvous_order("abc", list(reversed(replicas(3))))[0].replica_id
    cands = replicas(6)
    assert all(preferred(f"k{i}", cands) is rendezvous_order(f"k{i}", cands)[0]
               for i in range(200))


def test_bounded_load_cap(replicas: Replicas) -> None:
    cands = replicas(4)
    assert load_cap(cands, 0.25) == 1  # an idle cluster: every replica may take one
    for c in cands:
        c.in_flight = 4
    # average 4.25 after this request, cap ceil(1.25 * 4.25) = 6
    assert load_cap(cands, 0.25) == 6
    order = rendezvous_order("k", cands)
    assert under_cap(order[0], cands, 0.25)
    order[0].in_flight = 6
    assert not under_cap(order[0], cands, 0.25)
    c, home = bounded_affinity("k", cands, 0.25)
    assert not home and c is order[1]
    assert under_cap(order[0], [order[0]], 0.25)  # a lone replica is never over


def test_bounded_affinity_when_every_replica_is_over_the_cap(replicas: Replicas) -> None:
    # engine load counts running at half: 0.5 + 1 is over the cap ceil((0.5 + 0.5 + 1) / 2) = 1
    cands = replicas(2)
    cands[0].running = cands[1].running = 1.0
    assert load_cap(cands, 0.0) == 1 and not any(under_cap(c, cands, 0.0) for c in cands)
    assert bounded_affinity("any", cands, 0.0) == (rendezvous_order("any", cands)[0], False)


def test_affinity_scores(replicas: Replicas) -> None:
    cands = replicas(3)
    home = preferred("x", cands)
    assert affinity_scores("x", cands) == [1.0 if c is home else 0.0 for c in cands]
    assert affinity_scores(None, cands) == affinity_scores("", cands) == [0.0] * 3
