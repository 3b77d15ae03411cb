"""Failover, pure parts: the continuation request (what vLLM and the sim are sent)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from nebula_router.failover import NotResumable, plan_continuation, reassemble
from nebula_router.failover.continuation import CHAT_PATH, COMPLETIONS_PATH, request_problem

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]


def frame(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def chat_stream(*pieces: str, finish: str | None = None, role: bool = True) -> bytes:
    def chunk(delta: dict[str, Any], fin: str | None = None) -> bytes:
        return frame({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                      "choices": [{"index": 0, "delta": delta, "finish_reason": fin}]})
    out = chunk({"role": "assistant", "content": ""}) if role else b""
    out += b"".join(chunk({"content": p}) for p in pieces)
    if finish:
        out += chunk({}, finish)
    return out


def cmpl_stream(*pieces: str) -> bytes:
    return b"".join(frame({"id": "x", "object": "text_completion", "created": 1, "model": "m",
                           "choices": [{"index": 0, "text": p, "finish_reason": None}]})
                    for p in pieces)


def test_vllm_chat_continuation_carries_the_partial_message_and_reduces_the_budget() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    request = {"model": "m", "messages": MESSAGES, "stream": True, "max_tokens": 10,
               "max_completion_tokens": 12, "temperature": 0, "seed": 7, "top_p": 0.5,
               "tools": tools, "stream_options": {"include_usage": True}, "min_tokens": 2}
    plan = plan_continuation(CHAT, request, reassemble(chat_stream(" the", " nebula", " routes")))
    body = plan.body
    assert body is not None and not plan.drop
    assert body["messages"] == [*MESSAGES, {"role": "assistant",
                                            "content": " the nebula routes"}]
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert (body["max_tokens"], body["max_completion_tokens"], body["min_tokens"]) == (7, 9, 0)
    for same in ("temperature", "seed", "top_p", "tools", "stream", "stream_options", "model"):
        assert body[same] == request[same]
    assert request["messages"] == MESSAGES and request["max_tokens"] == 10  # not mutated


def test_a_client_prefill_is_extended_not_duplicated() -> None:
    messages = [*MESSAGES, {"role": "assistant", "content": "Sure:"}]
    request = {"model": "m", "messages": messages, "stream": True,
               "continue_final_message": True, "add_generation_prompt": False}
    body = plan_continuation(CHAT, request, reassemble(chat_stream(" one", " two"))).body
    assert body is not None
    assert body["messages"] == [*MESSAGES, {"role": "assistant", "content": "Sure: one two"}]


def test_completions_continuation_appends_the_text_to_the_prompt() -> None:
    request = {"model": "m", "prompt": "Once", "stream": True, "max_tokens": 5, "seed": 1}
    body = plan_continuation(COMPLETIONS_PATH, request, reassemble(cmpl_stream(" upon", " a"))).body
    assert body == {**request, "prompt": "Once upon a", "max_tokens": 3}
    listed = {**request, "prompt": ["Once"]}
    body = plan_continuation(COMPLETIONS_PATH, listed, reassemble(cmpl_stream(" upon"))).body
    assert body is not None and body["prompt"] == ["Once upon"]


def test_a_break_before_any_text_resends_the_request_as_it_was() -> None:
    request = {"model": "m", "messages": MESSAGES, "stream": True, "max_tokens": 4}
    plan = plan_continuation(CHAT, request, reassemble(chat_stream()))
    assert plan.body == request and not plan.drop


def test_a_complete_answer_missing_only_its_end() -> None:
    request = {"model": "m", "messages": MESSAGES, "stream": True, "max_tokens": 2}
    # budget spent, no usage asked: finished here, with finish_reason length
    plan = plan_continuation(CHAT, request, reassemble(chat_stream(" a", " b")))
    assert plan.body is None and plan.drop and plan.finish_reason == "length"
    # finish reason already sent: nothing to force
    plan = plan_continuation(CHAT, request, reassemble(chat_stream(" a", finish="stop")))
    assert plan.body is None and plan.finish_reason is None
    # usage asked: one token is asked for, only for its usage
    with_usage = {**request, "stream_options": {"include_usage": True}}
    plan = plan_continuation(CHAT, with_usage, reassemble(chat_stream(" a", " b")))
    assert plan.drop and plan.body is not None and plan.body["max_tokens"] == 1
    no_limit = {k: v for k, v in with_usage.items() if k != "max_tokens"}
    plan = plan_continuation(CHAT, no_limit, reassemble(chat_stream(" a", finish="stop")))
    assert plan.drop and plan.body is not None and plan.body["max_tokens"] == 1


@pytest.mark.parametrize(("extra", "why"), [
    ({"n": 2}, "n > 1"), ({"logprobs": True, "top_logprobs": 2}, "logprobs"),
    ({"echo": True}, "echo"), ({"response_format": {"type": "json_object"}}, "structured"),
    ({"guided_json": {}}, "structured"),
])
def test_requests_that_cannot_be_resumed_exactly(extra: dict[str, Any], why: str) -> None:
    request = {"model": "m", "messages": MESSAGES, "stream": True, **extra}
    with pytest.raises(NotResumable, match=why):
        plan_continuation(CHAT, request, reassemble(chat_stream(" a")))


def test_a_break_after_a_tool_call_delta_is_refused() -> None:
    tool = frame({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                  "choices": [{"index": 0, "delta": {"tool_calls": [
                      {"index": 0, "function": {"arguments": '{"ci'}}]}, "finish_reason": None}]})
    request = {"model": "m", "messages": MESSAGES, "stream": True}
    with pytest.raises(NotResumable, match="tool-call"):
        plan_continuation(CHAT, request, reassemble(chat_stream(" a") + tool))


def test_request_problems_by_path() -> None:
    assert request_problem(CHAT_PATH, {"messages": []}) == ""
    assert request_problem("/v1/embeddings", {}) != ""
    assert request_problem(COMPLETIONS_PATH, {"prompt": [1, 2]}) == "the prompt is not one string"
    assert request_problem(COMPLETIONS_PATH, {"prompt": ["a", "b"]}) != ""
    with pytest.raises(NotResumable, match="path"):
        plan_continuation(COMPLETIONS_PATH, {"prompt": "p"}, reassemble(chat_stream(" a")))
