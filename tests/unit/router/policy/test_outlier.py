"""Passive outlier ejection state machine."""

from __future__ import annotations

from nebula_router.policy import Candidate, OutlierPolicy


def test_ejects_after_n_consecutive_failures() -> None:
    o = OutlierPolicy(eject_after=3, base_s=5, max_s=60)
    c = Candidate("m", "r0")
    assert not o.on_failure(c, 0.0)
    assert not o.on_failure(c, 0.0)
    o.on_success(c)  # a success in between resets the count
    assert not o.on_failure(c, 1.0)
    assert not o.on_failure(c, 1.0)
    assert o.on_failure(c, 1.0)
    assert o.state(c, 2.0) == "ejected" and not o.available(c, 2.0)
    assert o.state(c, 6.0) == "half_open" and o.available(c, 6.0)


def test_half_open_lets_one_probe_and_success_closes() -> None:
    o = OutlierPolicy(eject_after=1, base_s=5)
    c = Candidate("m", "r0")
    assert o.on_failure(c, 0.0)
    assert o.on_attempt(c, 5.0)  # the probe
    assert not o.available(c, 5.0)  # no second request while it is out
    o.on_success(c)
    assert o.state(c, 5.0) == "closed" and c.failures == 0 and c.ejections == 0
    assert not o.on_attempt(c, 5.0)


def test_failed_probe_doubles_the_period_up_to_the_cap() -> None:
    o = OutlierPolicy(eject_after=2, base_s=5, max_s=12)
    c = Candidate("m", "r0")
    o.on_failure(c, 0.0)
    assert o.on_failure(c, 0.0)
    assert c.ejected_until == 5.0
    o.on_attempt(c, 5.0)
    assert o.on_failure(c, 5.0)  # the probe failed: ejected again at once, for 10s
    assert c.ejected_until == 15.0
    o.on_attempt(c, 15.0)
    assert o.on_failure(c, 15.0)
    assert c.ejected_until == 27.0  # 20s capped to 12s


def test_abandoned_probe_frees_the_slot() -> None:
    o = OutlierPolicy(eject_after=1, base_s=1)
    c = Candidate("m", "r0")
    o.on_failure(c, 0.0)
    o.on_attempt(c, 2.0)
    assert not o.available(c, 2.0)
    o.on_abandon(c)
    assert o.available(c, 2.0)


def test_disabled_ejection() -> None:
    o = OutlierPolicy(eject_after=0)
    c = Candidate("m", "r0")
    for _ in range(10):
        assert not o.on_failure(c, 0.0)
    assert o.available(c, 0.0)


def test_connect_timeouts_count_only_once_the_replica_stopped_answering() -> None:
    o = OutlierPolicy(answering_s=10)
    c = Candidate("m", "r0")
    assert o.connect_timeout_counts(c, 100.0)  # never answered: a timeout is a failure
    c.answered_at = 95.0
    assert not o.connect_timeout_counts(c, 100.0)  # answering others: a full accept queue
    assert o.connect_timeout_counts(c, 105.5)  # silent for longer: gone
