"""The ``not-ejected`` filter over the outlier state machine."""

from __future__ import annotations

from collections.abc import Callable

from nebula_router.policy import Candidate, OutlierPolicy, RouteKeys
from nebula_router.policy.filters.not_ejected import NotEjected

Replicas = Callable[..., list[Candidate]]

def test_ejected_dropped_until_half_open_then_held_while_probing(replicas: Replicas) -> None:
    outlier = OutlierPolicy(eject_after=1, base_s=10)
    f = NotEjected(outlier)
    a, b = replicas(2)
    assert outlier.on_failure(a, now=100.0)
    assert f.filter([a, b], RouteKeys(), 105.0) == [b]
    assert f.filter([a, b], RouteKeys(), 110.0) == [a, b]  # half-open: one probe may go
    outlier.on_attempt(a, 110.0)
    assert f.filter([a, b], RouteKeys(), 111.0) == [b]  # its probe is out
    outlier.on_success(a)
    assert f.filter([a, b], RouteKeys(), 111.0) == [a, b]
