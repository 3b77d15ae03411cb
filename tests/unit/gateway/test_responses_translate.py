"""Responses <-> chat completions translation, both ways, and the stream state machine."""

from __future__ import annotations

import json
from typing import Any

import pytest

from nebula_common.sse import sse_event
from nebula_gateway.response_store import ResponseStore
from nebula_gateway.responses_translate import (
    StreamTranslator,
    chat_to_response,
    expand_previous,
    responses_to_chat,
)
from nebula_gateway.validation import ValidationError
from tests.support.openai_schema import SchemaChecker

TOOLS = [{"type": "function", "name": "get_weather", "description": "weather by city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                         "required": ["city"]}, "strict": True}]


def test_request_string_input_instructions_and_sampling() -> None:
    body = {"model": "m", "input": "Hello", "instructions": "Be brief.",
            "max_output_tokens": 32, "temperature": 0.2, "top_p": 0.9, "stream": True}
    chat = responses_to_chat(body, expand_previous(body, ResponseStore(4), "k"))
    assert chat == {
        "model": "m",
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "Hello"}],
        "max_tokens": 32, "temperature": 0.2, "top_p": 0.9,
        "stream": True, "stream_options": {"include_usage": True},
    }


def test_request_message_items_tools_and_json_schema() -> None:
    body = {
        "model": "m",
        "input": [
            {"type": "message", "role": "developer",
             "content": [{"type": "input_text", "text": "dev note"}]},
            {"role": "user", "content": [{"type": "input_text", "text": "Weather in "},
                                         {"type": "input_text", "text": "Paris?"}]},
            {"type": "message", "role": "assistant",
             "content": [{"type": "output_text", "text": "Checking."}]},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather",
             "arguments": '{"city":"Paris"}'},
            {"type": "function_call", "call_id": "call_2", "name": "get_weather",
             "arguments": '{"city":"Lyon"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            {"type": "function_call_output", "call_id": "call_2", "output": "rain"},
        ],
        "tools": TOOLS,
        "tool_choice": {"type": "function", "name": "get_weather"},
        "text": {"format": {"type": "json_schema", "name": "answer", "strict": True,
                            "schema": {"type": "object"}}},
    }
    chat = responses_to_chat(body, expand_previous(body, ResponseStore(4), "k"))
    assert chat["messages"] == [
        {"role": "system", "content": "dev note"},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Checking."},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "call_2", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Lyon"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "rain"},
    ]
    assert chat["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "weather by city",
        "parameters": TOOLS[0]["parameters"], "strict": True}}]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert chat["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "answer", "schema": {"type": "object"}, "strict": True}}
    assert "stream" not in chat


def test_request_non_function_tool_is_refused() -> None:
    body = {"model": "m", "input": "x", "tools": [{"type": "web_search"}]}
    with pytest.raises(ValidationError) as caught:
        responses_to_chat(body, expand_previous(body, ResponseStore(4), "k"))
    assert caught.value.param == "tools[0].type"


USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}


def test_response_from_chat_text(checker: SchemaChecker) -> None:
    chat = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000,
            "model": "m", "usage": USAGE,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "Hi there"}}]}
    body = {"model": "m", "input": "Hello"}
    response = chat_to_response(chat, body)
    checker.check("Response", response)
    assert response["status"] == "completed"
    assert response["output"][0]["content"][0]["text"] == "Hi there"
    assert response["usage"]["input_tokens"] == 11
    assert response["usage"]["output_tokens"] == 7
    assert response["usage"]["total_tokens"] == 18


def test_response_from_chat_tool_calls_and_length(checker: SchemaChecker) -> None:
    chat = {"created": 1, "usage": USAGE, "choices": [{"index": 0, "finish_reason": "length",
            "message": {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_9", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]}}]}
    response = chat_to_response(chat, {"model": "m", "input": "x", "tools": TOOLS})
    checker.check("Response", response)
    [item] = response["output"]
    assert item["type"] == "function_call"
    assert (item["call_id"], item["name"], item["arguments"]) == (
        "call_9", "get_weather", '{"city":"Oslo"}')
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None,
          usage: dict[str, Any] | None = None) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    out: dict[str, Any] = {"id": "c", "object": "chat.completion.chunk", "created": 1,
                           "model": "m", "choices": choices}
    if usage is not None:
        out["usage"] = usage
    return out


def run_stream(body: dict[str, Any], chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    translator = StreamTranslator(body)
    events = translator.start()
    for c in chunks:
        events += translator.feed(c)
    events += translator.finish()
    return events


def check_sequence(checker: SchemaChecker, events: list[dict[str, Any]]) -> None:
    for i, event in enumerate(events):
        assert event["sequence_number"] == i
        checker.check_event(event)
        frame = sse_event(event)
        assert frame.startswith(b"event: " + event["type"].encode() + b"\ndata: ")
        assert json.loads(frame.split(b"data: ", 1)[1]) == event


def test_stream_text_event_sequence(checker: SchemaChecker) -> None:
    chunks = [chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}),
              chunk({"content": "lo"}), chunk({}, finish="stop"), chunk(usage=USAGE)]
    events = run_stream({"model": "m", "input": "hi"}, chunks)
    check_sequence(checker, events)
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", "response.output_text.delta",
        "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
    assert events[6]["text"] == "Hello"
    final = events[-1]["response"]
    assert final["status"] == "completed"
    assert final["output"][0]["content"][0]["text"] == "Hello"
    assert (final["usage"]["input_tokens"], final["usage"]["output_tokens"],
            final["usage"]["total_tokens"]) == (11, 7, 18)
    checker.check("Response", final)


def test_stream_tool_call_event_sequence(checker: SchemaChecker) -> None:
    chunks = [
        chunk({"role": "assistant", "content": "Let me check."}),
        chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                               "function": {"name": "get_weather", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        chunk({}, finish="tool_calls"), chunk(usage=USAGE)]
    events = run_stream({"model": "m", "input": "hi", "tools": TOOLS}, chunks)
    check_sequence(checker, events)
    types = [e["type"] for e in events]
    assert types == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed"]
    done = events[11]
    assert done["arguments"] == '{"city":"Paris"}' and done["name"] == "get_weather"
    final = events[-1]["response"]
    assert [o["type"] for o in final["output"]] == ["message", "function_call"]
    assert final["output"][1]["call_id"] == "call_1"
    assert final["usage"]["output_tokens"] == 7


def test_stream_without_usage_says_none_and_length_is_incomplete(
        checker: SchemaChecker) -> None:
    events = run_stream({"model": "m", "input": "hi"},
                        [chunk({"content": "x"}), chunk({}, finish="length")])
    check_sequence(checker, events)
    assert events[-1]["type"] == "response.incomplete"
    assert "usage" not in events[-1]["response"]


def test_stream_failure_emits_error_event(checker: SchemaChecker) -> None:
    translator = StreamTranslator({"model": "m", "input": "hi"})
    events = translator.start() + translator.feed(chunk({"content": "x"}))
    events += translator.fail("replica died", "upstream_error")
    check_sequence(checker, events)
    assert events[-1]["type"] == "error"
    assert translator.finish() == []


def stored_output(output: list[dict[str, Any]]) -> bytes:
    return json.dumps({"id": "r", "object": "response", "output": output}).encode()


def test_store_and_previous_response_id() -> None:
    store = ResponseStore(2)
    first = {"model": "m", "input": "My name is Ada."}
    items = expand_previous(first, store, "k")
    store.put("resp_1", "k", stored_output([
        {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
         "content": [{"type": "output_text", "text": "Hi Ada", "annotations": []}]}]), items)
    second = {"model": "m", "input": "What is my name?", "previous_response_id": "resp_1"}
    expanded = expand_previous(second, store, "k")
    assert expanded == [
        {"type": "message", "role": "user", "content": "My name is Ada."},
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "Hi Ada"}]},
        {"type": "message", "role": "user", "content": "What is my name?"}]
    chat = responses_to_chat(second, expanded)
    assert [m["role"] for m in chat["messages"]] == ["user", "assistant", "user"]
    assert chat["messages"][1]["content"] == "Hi Ada"
    with pytest.raises(ValidationError) as caught:
        expand_previous({**second, "previous_response_id": "resp_nope"}, store, "k")
    assert caught.value.status == 400 and caught.value.param == "previous_response_id"
    # bounded: the oldest entry goes first
    store.put("resp_2", "k", b"{}", [])
    store.put("resp_3", "k", b"{}", [])
    assert store.get("resp_1", "k") is None and len(store) == 2


def test_store_disabled_refuses_previous_response_id() -> None:
    with pytest.raises(ValidationError) as caught:
        expand_previous({"model": "m", "input": "x", "previous_response_id": "r"},
                        ResponseStore(0), "k")
    assert caught.value.code == "unsupported_parameter"
