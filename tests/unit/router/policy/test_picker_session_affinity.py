"""The ``session-affinity`` picker: bounded-load consistent hashing on the session key."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from nebula_router.policy import Candidate, Need, PolicyError, RouteKeys
from nebula_router.policy.pickers.p2c import P2C
from nebula_router.policy.pickers.session_affinity import SessionAffinity, build
from nebula_router.policy.plugin import Options, Settings

Replicas = Callable[..., list[Candidate]]


def picker(user: bool = False) -> SessionAffinity:
    return SessionAffinity(P2C(random.Random(4)), bound_c=0.25, user=user)


def test_sticks_and_spills_when_the_home_replica_is_hot(affinity: Callable[..., None]) -> None:
    affinity(picker().pick, RouteKeys(session="user-42"), "session_affinity",
             "session_spill_busy")


def test_without_a_key_the_next_picker_chooses(replicas: Replicas) -> None:
    cands = replicas(3)
    assert picker().pick(cands, RouteKeys())[1] == "p2c"
    assert picker().pick(cands[:1], RouteKeys())[1] == "single"
    # a session policy (reading `user`) names its keyless requests
    assert picker(user=True).pick(cands, RouteKeys())[1] == "session_none"


def test_needs_and_chain_rules() -> None:
    assert picker().needs == Need.SESSION
    assert picker(user=True).needs == Need.SESSION | Need.SESSION_USER
    with pytest.raises(PolicyError, match="must follow"):
        build(Settings(), Options("picker"), None)
    with pytest.raises(PolicyError, match="'user' must be true or false"):
        build(Settings(), Options("picker", {"user": "yes"}), P2C(random.Random()))
