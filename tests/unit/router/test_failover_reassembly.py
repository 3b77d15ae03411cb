"""Failover, pure parts: the record of forwarded bytes and the client's view re-assembled."""

from __future__ import annotations

import json
from typing import Any

from nebula_router.failover import Recorder, reassemble
from nebula_router.failover.events import frames, payloads


def frame(obj: dict[str, Any], end: bytes = b"\n\n") -> bytes:
    return b"data: " + json.dumps(obj).encode() + end


def chat_chunk(delta: dict[str, Any], finish: str | None = None, index: int = 0,
               **extra: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7,
            "model": "m", **extra,
            "choices": [{"index": index, "delta": delta, "logprobs": None,
                         "finish_reason": finish}]}


def cmpl_chunk(text: str, finish: str | None = None) -> dict[str, Any]:
    return {"id": "cmpl-1", "object": "text_completion", "created": 9, "model": "m",
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}


def test_recorder_keeps_bytes_until_its_limit_then_turns_off() -> None:
    rec = Recorder(limit=10)
    rec.add(b"12345")
    rec.add(b"678")
    assert rec.active and rec.data == bytearray(b"12345678")
    rec.add(b"901")
    assert not rec.active and rec.data is None
    rec.add(b"x")  # stays off
    assert rec.data is None


def test_recorder_tells_a_stream_that_got_its_done_marker() -> None:
    rec = Recorder()
    rec.add(frame(cmpl_chunk(" a")))
    assert not rec.ended()
    assert rec.ended(b"data: [DONE]")  # still held back, about to be sent
    rec.add(b"data: [DONE]\r\n\r\n")
    assert rec.ended()


def test_frames_split_every_line_ending_style_and_keep_non_data_frames() -> None:
    data = b'data: {"a":1}\r\n\r\n: ping\n\ndata: {"b":\ndata: 2}\r\rdata: [DONE]\n\n'
    assert list(payloads(data)) == ['{"a":1}', None, '{"b":\n2}', "[DONE]"]
    assert [raw for raw, _ in frames(data)][1] == b": ping\n\n"


def test_chat_stream_identity_role_text_and_token_count() -> None:
    data = (frame(chat_chunk({"role": "assistant", "content": ""}, system_fingerprint="fp"))
            + frame(chat_chunk({"content": " the"}, system_fingerprint="fp"))
            + frame(chat_chunk({"content": " nebula"}, system_fingerprint="fp"), b"\r\n\r\n"))
    st = reassemble(data)
    assert (st.kind, st.id, st.created, st.model) == ("chat", "chatcmpl-1", 7, "m")
    assert st.fingerprint == (True, "fp")
    c = st.choices[0]
    assert (c.role, c.text, c.chunks, c.finish_reason) == ("assistant", " the nebula", 2, None)
    assert st.tokens == 2 and not st.done and st.usage is None and not st.problem


def test_completion_stream_with_finish_usage_and_done() -> None:
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    data = (frame(cmpl_chunk(" a")) + frame(cmpl_chunk(" b")) + frame(cmpl_chunk("", "length"))
            + frame({"id": "cmpl-1", "object": "text_completion", "created": 9, "model": "m",
                     "choices": [], "usage": usage}) + b"data: [DONE]\n\n")
    st = reassemble(data)
    assert st.kind == "completion" and st.fingerprint == (False, None)
    assert st.choices[0].text == " a b" and st.choices[0].finish_reason == "length"
    assert st.usage == usage and st.done and st.tokens == 2


def test_what_cannot_be_resumed_is_named() -> None:
    tool = {"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": "{"}}]}
    st = reassemble(frame(chat_chunk(tool)))
    assert st.choices[0].tool_calls and not st.problem  # the continuation planner refuses it
    assert "reasoning_content" in reassemble(
        frame(chat_chunk({"reasoning_content": "hmm"}))).problem
    lp = chat_chunk({"content": "x"})
    lp["choices"][0]["logprobs"] = {"content": []}
    assert "logprobs" in reassemble(frame(lp)).problem
    assert "error" in reassemble(frame({"error": {"message": "x"}})).problem
    assert reassemble(b'data: {"n": 1}\n\n').problem == "not a chat or completions stream"
    assert reassemble(b"data: {not json\n\n").problem
    assert reassemble(b"").problem == "no chunk was sent yet"


def test_two_choices_are_kept_apart() -> None:
    data = frame(chat_chunk({"content": "a"}, index=0)) + frame(chat_chunk({"content": "b"},
                                                                           index=1))
    st = reassemble(data)
    assert {i: c.text for i, c in st.choices.items()} == {0: "a", 1: "b"}
