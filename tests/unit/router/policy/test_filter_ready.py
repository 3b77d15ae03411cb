"""The ``ready`` filter: draining and failed endpoints get no new requests."""

from __future__ import annotations

from collections.abc import Callable

from nebula_common.records import EndpointState
from nebula_router.policy import Candidate, Need, RouteKeys
from nebula_router.policy.filters.ready import Ready, ready

Replicas = Callable[..., list[Candidate]]

def test_keeps_only_ready_endpoints(replicas: Replicas) -> None:
    cands = replicas(4)
    cands[1].status = EndpointState.DRAINING
    cands[2].status = "failed"  # as decoded from etcd: a plain string
    cands[3].status = "ready"
    assert Ready().filter(cands, RouteKeys(), 0.0) == [cands[0], cands[3]]
    assert ready(cands[1:3]) == []


def test_default_candidate_is_ready_and_needs_nothing(replicas: Replicas) -> None:
    assert replicas(1)[0].status == EndpointState.READY
    assert Ready().needs == Need.NONE
