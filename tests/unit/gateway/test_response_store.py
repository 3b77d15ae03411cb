"""The stored responses: bounded by bytes, per key, expiring; what they keep and list."""

from __future__ import annotations

import json
from typing import Any

from nebula_gateway.response_store import ENTRY_OVERHEAD, ResponseStore
from nebula_gateway.responses_translate import items_page, kept_items


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def response(size: int = 0) -> bytes:
    return json.dumps({"id": "r", "object": "response", "output": [], "pad": "x" * size}
                      ).encode()


def message(text: str, **extra: Any) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": text, **extra}


def test_budget_is_bytes_and_the_oldest_go_first() -> None:
    store = ResponseStore(1000, max_bytes=10_000, max_entry_bytes=10_000)
    for i in range(5):
        assert store.put(f"r{i}", "k", response(2000), [])
    assert store.bytes <= 10_000 and len(store) == 4
    assert store.get("r0", "k") is None and store.get("r4", "k") is not None
    assert store.bytes == sum(len(response(2000)) + 2 + ENTRY_OVERHEAD for _ in range(4))


def test_an_entry_over_the_cap_is_not_kept() -> None:
    store = ResponseStore(1000, max_bytes=1 << 20, max_entry_bytes=4096)
    assert not store.put("big", "k", response(10), [message("x" * 5000)])
    assert store.get("big", "k") is None and store.bytes == 0
    assert store.put("small", "k", response(10), [message("x" * 100)])


def test_a_large_request_costs_about_its_size() -> None:
    """One 4 MB input is kept as about 4 MB (it cost about 27 MB as Python objects)."""
    store = ResponseStore(10, max_bytes=64 << 20, max_entry_bytes=8 << 20)
    items = [message("y" * 1000) for _ in range(4000)]
    assert store.put("r", "k", response(), kept_items(items))
    assert 4_000_000 < store.bytes < 4_500_000


def test_entries_belong_to_the_key_that_made_them() -> None:
    store = ResponseStore(10)
    store.put("r1", "alice", response(), [])
    assert store.get("r1", "bob") is None
    assert not store.delete("r1", "bob")
    assert store.get("r1", "alice") is not None
    assert store.delete("r1", "alice") and store.get("r1", "alice") is None
    assert store.bytes == 0


def test_entries_expire() -> None:
    clock = Clock()
    store = ResponseStore(10, ttl=60, clock=clock)
    store.put("old", "k", response(), [])
    clock.now += 30
    store.put("new", "k", response(), [])
    clock.now += 31
    assert store.get("old", "k") is None and store.get("new", "k") is not None
    store.put("newer", "k", response(), [])  # a put sweeps the expired off the front
    assert len(store) == 2
    clock.now += 60
    assert store.get("new", "k") is None


def test_only_what_reaches_an_engine_is_kept() -> None:
    items = [
        message("hi", id="msg_client", metadata={"blob": "z" * 10_000}),
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "look", "junk": "z" * 10_000},
            {"type": "input_image", "image_url": "data:image/png;base64,AA"},
            {"type": "input_audio", "data": "z" * 10_000}]},
        {"type": "reasoning", "encrypted_content": "z" * 10_000},
        {"type": "item_reference", "id": "x"},
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}", "x": "z"},
        {"type": "function_call_output", "call_id": "c", "output": "42", "x": "z"},
    ]
    kept = kept_items(items)
    assert kept == [
        {"type": "message", "id": "msg_client", "role": "user", "content": "hi"},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "look"},
            {"type": "input_image", "image_url": "data:image/png;base64,AA"}]},
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c", "output": "42"},
    ]
    assert "z" * 100 not in json.dumps(kept)


def test_input_items_pages_by_stable_ids() -> None:
    items = kept_items([message(f"m{i}") for i in range(5)])
    first = items_page("resp_abc", items, limit=2, order="asc", after=None)
    assert [i["content"][0]["text"] for i in first["data"]] == ["m0", "m1"]
    assert first["has_more"] and first["object"] == "list"
    again = items_page("resp_abc", items, limit=2, order="asc", after=None)
    assert again == first  # the same ids on every call
    rest = items_page("resp_abc", items, limit=10, order="asc", after=first["last_id"])
    assert [i["content"][0]["text"] for i in rest["data"]] == ["m2", "m3", "m4"]
    assert not rest["has_more"]
    newest = items_page("resp_abc", items, limit=1, order="desc", after=None)
    assert newest["data"][0]["content"] == [{"type": "input_text", "text": "m4"}]
    assert all(i["status"] == "completed" and i["id"] for i in rest["data"])
