"""The ``session-affinity`` scorer: 1 for the replica the session key hashes to."""

from __future__ import annotations

from collections.abc import Callable

from nebula_router.policy import Candidate, Need, RouteKeys
from nebula_router.policy.plugin import Options, Settings
from nebula_router.policy.rendezvous import rendezvous_order
from nebula_router.policy.scorers.session_affinity import SessionAffinityScorer, build

Replicas = Callable[..., list[Candidate]]


def test_one_for_the_home_replica_zero_elsewhere(replicas: Replicas) -> None:
    cands = replicas(4)
    home = rendezvous_order("user-1", cands)[0]
    scores = SessionAffinityScorer().score(cands, RouteKeys(session="user-1"))
    assert scores == [1.0 if c is home else 0.0 for c in cands]
    # the same home whatever order the candidates come in
    back = list(reversed(cands))
    assert SessionAffinityScorer().score(back, RouteKeys(session="user-1")) == \
        [1.0 if c is home else 0.0 for c in back]


def test_no_session_key_scores_zero(replicas: Replicas) -> None:
    assert SessionAffinityScorer().score(replicas(3), RouteKeys(prefix="p")) == [0.0] * 3


def test_needs_session_and_user_only_when_asked() -> None:
    assert build(Settings(), Options("scorer")).needs == Need.SESSION
    assert build(Settings(), Options("scorer", {"user": True})).needs == \
        Need.SESSION | Need.SESSION_USER
