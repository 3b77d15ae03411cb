"""Conversations on the state store (real SQLite): ids, owner binding, turns appended."""

from __future__ import annotations

from pathlib import Path

import pytest

from nebula_gateway.conversations import Conversations, conversation_id, is_conversation_id
from nebula_gateway.state import ResponseLimits
from nebula_gateway.state.sqlite import SqliteState
from nebula_gateway.validation import ValidationError

LIMITS = ResponseLimits(capacity=100, max_bytes=1 << 20, max_entry_bytes=1 << 16, ttl=60.0)


def test_the_conversation_a_request_names() -> None:
    assert conversation_id({"conversation": "conv_1"}) == "conv_1"
    assert conversation_id({"conversation": {"id": "conv_2"}}) == "conv_2"
    assert conversation_id({"conversation": ""}) is None
    assert conversation_id({}) is None
    assert is_conversation_id("conv_x") and not is_conversation_id("resp_x")
    assert not is_conversation_id(None)


async def test_turns_are_appended_with_ids_and_bound_to_their_key(tmp_path: Path) -> None:
    store = Conversations(SqliteState(tmp_path / "s.db", LIMITS))
    conv = {"id": "conv_abc", "object": "conversation", "created_at": 1, "metadata": {}}
    await store.save("alice", conv, [])
    response = {"output": [{"type": "message", "role": "assistant", "id": "msg_out",
                            "content": [{"type": "output_text", "text": "hello"}]},
                           {"type": "reasoning", "summary": []}]}
    await store.append_turn("conv_abc", "alice",
                            [{"type": "message", "role": "user", "content": "hi"}], response)
    loaded, items = await store.load("conv_abc", "alice")
    assert loaded == conv
    assert [(i["type"], i["role"]) for i in items] == [("message", "user"),
                                                       ("message", "assistant")]
    assert all(i["id"].startswith("msg_") for i in items) and items[0]["id"] != items[1]["id"]
    assert items[1]["content"] == [{"type": "output_text", "text": "hello"}]
    with pytest.raises(ValidationError) as other:
        await store.load("conv_abc", "bob")  # another key's conversation does not exist
    assert other.value.status == 404
    with pytest.raises(ValidationError):
        await store.load("resp_abc", "alice")  # a response is never a conversation


async def test_a_conversation_over_the_entry_cap_is_refused(tmp_path: Path) -> None:
    small = ResponseLimits(capacity=10, max_bytes=1 << 20, max_entry_bytes=600, ttl=60.0)
    store = Conversations(SqliteState(tmp_path / "s.db", small))
    conv = {"id": "conv_big", "object": "conversation", "created_at": 1, "metadata": {}}
    with pytest.raises(ValidationError) as refused:
        await store.save("alice", conv, [{"type": "message", "role": "user",
                                          "content": "x" * 1000, "id": "msg_1"}])
    assert refused.value.code == "conversation_too_large"
