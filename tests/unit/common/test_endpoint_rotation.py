"""Which etcd endpoint a client tries after one failed (nebula_common.store.next_endpoint)."""

from __future__ import annotations

import aetcd.exceptions as etcd_errors
import pytest

from nebula_common.store import WatchBroken, answered, next_endpoint

NOW = 100.0


def test_round_robin_while_nothing_is_held() -> None:
    assert [next_endpoint(i, 3, {}, NOW) for i in range(3)] == [1, 2, 0]


def test_an_endpoint_that_did_not_answer_is_passed_over_while_held() -> None:
    # m0 was killed (held); m1 and m2 say "no leader" in turn during the election.
    held = {0: NOW + 30}
    assert next_endpoint(1, 3, held, NOW) == 2
    assert next_endpoint(2, 3, held, NOW) == 1
    assert next_endpoint(2, 3, held, NOW + 31) == 0, "tried again once the hold ran out"


def test_when_every_other_endpoint_is_held_the_one_held_longest_ago_is_tried() -> None:
    assert next_endpoint(0, 3, {1: NOW + 30, 2: NOW + 30}, NOW) == 1
    # m2 timed out first (the killed member), m1 a moment ago (slow during the election).
    assert next_endpoint(0, 3, {1: NOW + 29, 2: NOW + 12}, NOW) == 2
    assert next_endpoint(0, 1, {}, NOW) == 0


@pytest.mark.parametrize("exc", [
    etcd_errors.ConnectionFailedError("etcdserver: no leader"),
    WatchBroken("etcd cancelled the watch: etcdserver: no leader"),
    WatchBroken("UNAVAILABLE: etcdserver: leader changed"),
])
def test_a_members_own_refusal_is_an_answer(exc: BaseException) -> None:
    assert answered(exc)


@pytest.mark.parametrize("exc", [
    TimeoutError(),
    etcd_errors.ConnectionTimeoutError("Deadline Exceeded"),
    WatchBroken("UNAVAILABLE: Stream removed (Socket closed)"),
    WatchBroken("no answer from etcd for 5.1s"),
    etcd_errors.ConnectionFailedError("failed to connect to all addresses"),
])
def test_a_timeout_or_a_dead_connection_is_not(exc: BaseException) -> None:
    assert not answered(exc)
