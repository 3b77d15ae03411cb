"""The Anthropic Messages API over chat completions: the pure translation, both ways."""

from __future__ import annotations

import json
from typing import Any

import pytest

from nebula_gateway import messages_translate as t
from nebula_gateway.validation import ValidationError, validate
from tests.clients.anthropic_schema import (
    check_error,
    check_event,
    check_message,
    events_accumulate,
)

B64 = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def request(**extra: Any) -> dict[str, Any]:
    body = {"model": "m", "max_tokens": 64,
            "messages": [{"role": "user", "content": "Hi"}], **extra}
    return validate("/v1/messages", json.dumps(body).encode(), 1 << 20)


# -- request -----------------------------------------------------------------------------

def test_sampling_and_limits_translate() -> None:
    chat = t.messages_to_chat(request(
        system="Be terse.", stop_sequences=["END", "\n\n"], temperature=0.5, top_p=0.9,
        top_k=40, metadata={"user_id": "u-1"}, stream=True))
    assert chat == {
        "model": "m", "max_tokens": 64, "stop": ["END", "\n\n"], "temperature": 0.5,
        "top_p": 0.9, "top_k": 40, "user": "u-1", "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "system", "content": "Be terse."},
                     {"role": "user", "content": "Hi"}]}


def test_structured_output_becomes_a_response_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    chat = t.messages_to_chat(request(output_config={
        "effort": "low", "format": {"type": "json_schema", "schema": schema}}))
    assert chat["response_format"] == {"type": "json_schema",
                                       "json_schema": {"name": "output", "schema": schema}}
    assert "response_format" not in t.messages_to_chat(request(output_config={"effort": "low"}))


def test_system_blocks_and_multi_turn() -> None:
    chat = t.messages_to_chat(request(
        system=[{"type": "text", "text": "One."}, {"type": "text", "text": "Two."}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "a"},
                                               {"type": "text", "text": "b"}]},
                  {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm",
                                                     "signature": "s"},
                                                    {"type": "text", "text": "c"}]},
                  {"role": "user", "content": "d"}]))
    assert chat["messages"] == [
        {"role": "system", "content": "One.\nTwo."},
        {"role": "user", "content": "ab"},
        {"role": "assistant", "content": "c"},
        {"role": "user", "content": "d"}]


def test_a_prefilled_answer_is_continued() -> None:
    chat = t.messages_to_chat(request(messages=[{"role": "user", "content": "JSON please"},
                                                {"role": "assistant", "content": "{"}]))
    assert chat["messages"][-1] == {"role": "assistant", "content": "{"}
    assert chat["continue_final_message"] is True and chat["add_generation_prompt"] is False
    assert "continue_final_message" not in t.messages_to_chat(request())


def test_images_become_image_url_parts() -> None:
    chat = t.messages_to_chat(request(messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is it?"},
        {"type": "image", "source": B64},
        {"type": "image", "source": {"type": "url", "url": "https://img.example/x.png"}}]}]))
    assert chat["messages"][0]["content"] == [
        {"type": "text", "text": "What is it?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://img.example/x.png"}}]
    body = request(messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "url", "url": "http://a/b"}},
        {"type": "tool_result", "tool_use_id": "t", "content": [
            {"type": "image", "source": {"type": "url", "url": "http://c/d"}}]}]}])
    assert list(t.media_urls(body)) == [
        ("messages[0].content[0].source.url", "http://a/b"),
        ("messages[0].content[1].content[0].source.url", "http://c/d")]


def test_tools_tool_use_and_tool_result_round_trip() -> None:
    chat = t.messages_to_chat(request(
        tools=[{"name": "get_weather", "description": "Weather now", "input_schema": WEATHER},
               {"type": "custom", "name": "noop", "input_schema": {"type": "object"}}],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                 "input": {"city": "Paris"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True,
                 "content": [{"type": "text", "text": "no"}, {"type": "image",
                                                              "source": B64}]},
                {"type": "text", "text": "And tomorrow?"}]}]))
    assert chat["tools"] == [
        {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER,
                                          "description": "Weather now"}},
        {"type": "function", "function": {"name": "noop", "parameters": {"type": "object"}}}]
    assert chat["tool_choice"] == "required" and chat["parallel_tool_calls"] is False
    assert chat["messages"][1:] == [
        {"role": "assistant", "content": "Let me check.", "tool_calls": [
            {"id": "toolu_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "no"},
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "text", "text": "And tomorrow?"}]}]


@pytest.mark.parametrize(("choice", "expected"), [
    ({"type": "auto"}, "auto"), ({"type": "any"}, "required"), ({"type": "none"}, "none"),
    ({"type": "tool", "name": "get_weather"},
     {"type": "function", "function": {"name": "get_weather"}})])
def test_tool_choice(choice: dict[str, Any], expected: Any) -> None:
    chat = t.messages_to_chat(request(tools=[{"name": "get_weather", "input_schema": WEATHER}],
                                      tool_choice=choice))
    assert chat["tool_choice"] == expected and "parallel_tool_calls" not in chat


def test_what_cannot_be_translated_is_a_400() -> None:
    with pytest.raises(ValidationError) as caught:
        t.messages_to_chat(request(tools=[{"type": "web_search_20250305", "name": "web"}]))
    assert caught.value.status == 400 and caught.value.param == "tools[0].type"
    with pytest.raises(ValidationError) as caught:
        t.messages_to_chat(request(messages=[{"role": "user", "content": [
            {"type": "document", "source": {"type": "text", "data": "x"}}]}]))
    assert caught.value.param == "messages[0].content[0].type"


def test_the_contract_refuses_malformed_messages() -> None:
    for body, param in [
            ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
            ({"model": "m", "max_tokens": 1, "messages": [{"role": "system",
                                                           "content": "x"}]},
             "messages[0].role"),
            ({"model": "m", "max_tokens": 1, "temperature": 1.5,
              "messages": [{"role": "user", "content": "x"}]}, "temperature"),
            ({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [
                {"type": "tool_use", "id": "t", "name": "f"}]}]},
             "messages[0].content[0].input"),
            ({"model": "m", "max_tokens": 1, "tool_choice": {"type": "tool"},
              "messages": [{"role": "user", "content": "x"}]}, "tool_choice.name")]:
        with pytest.raises(ValidationError) as caught:
            validate("/v1/messages", json.dumps(body).encode(), 1 << 20)
        assert caught.value.param == param, (body, caught.value)


def test_count_request_is_what_tokenize_counts() -> None:
    body = validate("/v1/messages/count_tokens", json.dumps({
        "model": "m", "system": "S", "messages": [{"role": "user", "content": "Hi"}],
        "tools": [{"name": "f", "input_schema": {"type": "object"}}]}).encode(), 1 << 20)
    assert t.count_request(body) == {
        "model": "m", "add_generation_prompt": True,
        "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}],
        "tools": [{"type": "function", "function": {"name": "f",
                                                    "parameters": {"type": "object"}}}]}


# -- answer ------------------------------------------------------------------------------

USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}


def completion(message: dict[str, Any], finish: str, **choice: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": message, "finish_reason": finish, **choice}],
            "usage": USAGE}


def test_a_text_answer() -> None:
    message = t.chat_to_message(completion({"role": "assistant", "content": "Hello"}, "stop"),
                                request())
    check_message(message)
    assert message["content"] == [{"type": "text", "text": "Hello"}]
    assert message["stop_reason"] == "end_turn" and message["stop_sequence"] is None
    assert message["usage"] == {"input_tokens": 11, "output_tokens": 7}
    assert message["id"].startswith("msg_") and message["model"] == "m"


@pytest.mark.parametrize(("finish", "matched", "reason", "sequence"), [
    ("length", None, "max_tokens", None),
    ("stop", "END", "stop_sequence", "END"),
    ("stop", 2, "end_turn", None),  # vLLM's stop_reason is a token id for an EOS token
    ("content_filter", None, "refusal", None)])
def test_stop_reasons(finish: str, matched: Any, reason: str, sequence: str | None) -> None:
    message = t.chat_to_message(completion({"role": "assistant", "content": "x"}, finish,
                                           stop_reason=matched),
                                request(stop_sequences=["END"]))
    check_message(message)
    assert (message["stop_reason"], message["stop_sequence"]) == (reason, sequence)


def test_a_tool_call_answer() -> None:
    message = t.chat_to_message(completion({"role": "assistant", "content": None, "tool_calls": [
        {"id": "chatcmpl-tool-1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "chatcmpl-tool-2", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": '}}]}, "tool_calls"),
        request())
    check_message(message)
    assert message["stop_reason"] == "tool_use"
    assert message["content"] == [
        {"type": "tool_use", "id": "chatcmpl-tool-1", "name": "get_weather",
         "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "chatcmpl-tool-2", "name": "get_weather", "input": {}}]


# -- stream ------------------------------------------------------------------------------

def chunk(delta: dict[str, Any] | None = None, finish: str | None = None,
          usage: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"id": "c", "object": "chat.completion.chunk", "created": 1,
                           "model": "m", "choices": [] if delta is None else [
                               {"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage:
        out["usage"] = usage
    return out


def call_delta(index: int, *, head: str | None = None, args: str = "") -> dict[str, Any]:
    part: dict[str, Any] = {"index": index, "function": {"arguments": args}}
    if head:
        part.update(id=f"call-{index}", type="function")
        part["function"]["name"] = head
    return {"tool_calls": [part]}


def run(stream: t.MessageStream, chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    events = stream.start()
    for c in chunks:
        events += stream.feed(c)
    events += stream.finish()
    for event in events:
        check_event(event)
    return events


def test_a_streamed_text_answer() -> None:
    events = run(t.MessageStream(request()), [
        chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}),
        chunk({"content": "lo"}), chunk({}, "stop"), chunk(usage=USAGE)])
    assert [e["type"] for e in events] == [
        "message_start", "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_stop", "message_delta", "message_stop"]
    assert events[0]["message"]["content"] == [] and events[0]["message"]["stop_reason"] is None
    assert events[1] == {"type": "content_block_start", "index": 0,
                         "content_block": {"type": "text", "text": ""}}
    assert events[5] == {"type": "message_delta",
                         "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                         "usage": {"input_tokens": 11, "output_tokens": 7}}
    final = events_accumulate(events)
    assert final.content[0].text == "Hello"  # type: ignore[union-attr]
    assert final.usage.input_tokens == 11 and final.usage.output_tokens == 7


def test_a_streamed_text_then_tool_calls_answer() -> None:
    events = run(t.MessageStream(request()), [
        chunk({"role": "assistant", "content": ""}), chunk({"content": "Checking."}),
        chunk(call_delta(0, head="get_weather")), chunk(call_delta(0, args='{"city"')),
        chunk(call_delta(0, args=': "Paris"}')), chunk(call_delta(1, head="get_weather")),
        chunk(call_delta(1, args='{"city": "Rome"}')), chunk({}, "tool_calls"),
        chunk(usage=USAGE)])
    starts = [e for e in events if e["type"] == "content_block_start"]
    assert [(e["index"], e["content_block"]["type"]) for e in starts] == \
        [(0, "text"), (1, "tool_use"), (2, "tool_use")]
    assert starts[1]["content_block"] == {"type": "tool_use", "id": "call-0",
                                          "name": "get_weather", "input": {}}
    assert [e["index"] for e in events if e["type"] == "content_block_stop"] == [0, 1, 2]
    deltas = [e["delta"]["partial_json"] for e in events
              if e["type"] == "content_block_delta" and e["index"] == 1]
    assert deltas == ['{"city"', ': "Paris"}']
    assert events[-2]["delta"]["stop_reason"] == "tool_use"
    final = events_accumulate(events)
    assert [b.type for b in final.content] == ["text", "tool_use", "tool_use"]
    assert final.content[1].input == {"city": "Paris"}  # type: ignore[union-attr]
    assert final.content[2].input == {"city": "Rome"}  # type: ignore[union-attr]
    assert final.stop_reason == "tool_use"


def test_a_stream_that_fails_ends_with_an_error_event() -> None:
    stream = t.MessageStream(request())
    stream.start()
    stream.feed(chunk({"content": "Hi"}))
    (event,) = stream.fail("replica went away", status=502)
    check_event(event)
    assert event == {"type": "error", "error": {"type": "api_error",
                                                "message": "replica went away"}}
    assert stream.finish() == [] and stream.fail("again") == []


# -- errors ------------------------------------------------------------------------------

@pytest.mark.parametrize(("status", "kind"), [
    (400, "invalid_request_error"), (401, "authentication_error"), (403, "permission_error"),
    (404, "not_found_error"), (413, "request_too_large"), (429, "rate_limit_error"),
    (500, "api_error"), (503, "overloaded_error"), (504, "timeout_error")])
def test_errors_are_anthropic_shaped(status: int, kind: str) -> None:
    openai = json.dumps({"error": {"message": "nope", "type": "x", "param": None,
                                   "code": "y"}}).encode()
    body = json.loads(t.reshaped_error(status, openai, "req-1"))
    assert body == {"type": "error", "error": {"type": kind, "message": "nope"},
                    "request_id": "req-1"}
    if kind != "request_too_large":  # (in Anthropic's error docs, not in its SDK's types)
        check_error(body)
    assert json.loads(t.reshaped_error(status, b"plain text"))["error"]["message"] == \
        "plain text"
