"""Declared engine capabilities: parsed, shared across replicas, and refused by path."""

from __future__ import annotations

from nebula_common.capabilities import (
    Capability,
    parse_capabilities,
    refusal,
    shared_capabilities,
)

CHAT, EMB = Capability.CHAT, Capability.EMBEDDINGS


def test_parse_keeps_known_names_and_ignores_a_newer_nodes_others() -> None:
    assert parse_capabilities(["chat", "embeddings", "teleport", 3]) == {CHAT, EMB}
    assert parse_capabilities([]) == frozenset()


def test_shared_is_what_every_declaring_replica_serves() -> None:
    assert shared_capabilities([frozenset({CHAT, EMB}), frozenset({CHAT})]) == {CHAT}
    # a replica of an older node declared nothing: it neither adds nor removes
    assert shared_capabilities([None, frozenset({CHAT, EMB})]) == {CHAT, EMB}
    assert shared_capabilities([None, None]) is None
    assert shared_capabilities([]) is None


def test_refusal_names_what_the_model_lacks() -> None:
    assert refusal("m", "/v1/embeddings", frozenset({CHAT})) == (
        "model 'm' does not support embeddings")
    assert refusal("m", "/v1/embeddings", frozenset({CHAT, EMB})) is None
    assert refusal("m", "/v1/embeddings", None) is None  # nothing declared: forwarded
    assert refusal("m", "/v1/responses", frozenset({CHAT})) is None  # translated instead
