"""The ``not-overloaded`` filter: a soft per-replica in-flight cap."""

from __future__ import annotations

from collections.abc import Callable

from nebula_router.policy import Candidate, RouteKeys
from nebula_router.policy.filters.not_overloaded import NotOverloaded, build
from nebula_router.policy.plugin import Options, Settings

Replicas = Callable[..., list[Candidate]]

def test_no_limit_passes_the_input_through(replicas: Replicas) -> None:
    cands = replicas(2)
    cands[0].in_flight = 1000
    assert NotOverloaded(0).filter(cands, RouteKeys(), 0.0) is cands
    # built without a limit it is not built at all: the pipeline skips a no-op call
    assert build(Settings(), Options("filter")) is None
    assert isinstance(build(Settings(max_in_flight=3), Options("filter")), NotOverloaded)


def test_drops_replicas_at_the_limit_but_never_all(replicas: Replicas) -> None:
    cands = replicas(3)
    f = NotOverloaded(2)
    cands[0].in_flight = 2
    cands[1].in_flight = 5
    assert f.filter(cands, RouteKeys(), 0.0) == [cands[2]]
    cands[2].in_flight = 2
    assert f.filter(cands, RouteKeys(), 0.0) == cands  # everyone full: queue, don't fail
