"""Table-driven validation: every malformed request gets a 4xx naming the param."""

from __future__ import annotations

import json
from typing import Any

import pytest

from nebula_gateway.validation import MAX_NESTING, ValidationError, validate

LIMIT = 4096
MSG = [{"role": "user", "content": "hi"}]


def chat(**fields: Any) -> bytes:
    return json.dumps({"model": "m", "messages": MSG, **fields}).encode()


def comp(**fields: Any) -> bytes:
    return json.dumps({"model": "m", "prompt": "hi", **fields}).encode()


def emb(**fields: Any) -> bytes:
    return json.dumps({"model": "m", "input": "hi", **fields}).encode()


def resp(**fields: Any) -> bytes:
    return json.dumps({"model": "m", "input": "hi", **fields}).encode()


def without(base: dict[str, Any], key: str) -> bytes:
    return json.dumps({k: v for k, v in base.items() if k != key}).encode()


# (path, raw body, expected status, expected param)
CASES: list[tuple[str, bytes, int, str | None]] = [
    ("/v1/chat/completions", b"{not json", 400, None),
    ("/v1/chat/completions", b"", 400, None),
    ("/v1/chat/completions", b"[1, 2]", 400, None),
    ("/v1/chat/completions", b'"a string"', 400, None),
    ("/v1/chat/completions", b"\xff\xfe{}", 400, None),
    ("/v1/chat/completions", b"[" * (MAX_NESTING + 5) + b"]" * (MAX_NESTING + 5), 400, None),
    ("/v1/chat/completions", b"{" + b" " * LIMIT + b"}", 413, None),
    ("/v1/chat/completions", without({"model": "m", "messages": MSG}, "model"), 400, "model"),
    ("/v1/chat/completions", chat(model=""), 400, "model"),
    ("/v1/chat/completions", chat(model=42), 400, "model"),
    ("/v1/chat/completions", chat(model=None), 400, "model"),
    ("/v1/chat/completions", without({"model": "m", "messages": MSG}, "messages"), 400,
     "messages"),
    ("/v1/chat/completions", chat(messages="hello"), 400, "messages"),
    ("/v1/chat/completions", chat(messages=[]), 400, "messages"),
    ("/v1/chat/completions", chat(messages=["hi"]), 400, "messages[0]"),
    ("/v1/chat/completions", chat(messages=[{"content": "hi"}]), 400, "messages[0].role"),
    ("/v1/chat/completions", chat(messages=[{"role": "wizard", "content": "x"}]), 400,
     "messages[0].role"),
    ("/v1/chat/completions", chat(messages=[{"role": "user"}]), 400, "messages[0].content"),
    ("/v1/chat/completions", chat(messages=[{"role": "user", "content": 5}]), 400,
     "messages[0].content"),
    ("/v1/chat/completions", chat(messages=[{"role": "user", "content": [1]}]), 400,
     "messages[0].content[0]"),
    ("/v1/chat/completions", chat(stream="yes"), 400, "stream"),
    ("/v1/chat/completions", chat(max_tokens=0), 400, "max_tokens"),
    ("/v1/chat/completions", chat(max_tokens=-5), 400, "max_tokens"),
    ("/v1/chat/completions", chat(max_tokens=1.5), 400, "max_tokens"),
    ("/v1/chat/completions", chat(max_tokens=float("inf")), 400, None),
    ("/v1/chat/completions", chat(max_tokens=True), 400, "max_tokens"),
    ("/v1/chat/completions", chat(temperature=2.5), 400, "temperature"),
    ("/v1/chat/completions", chat(temperature=-0.1), 400, "temperature"),
    ("/v1/chat/completions", chat(temperature="hot"), 400, "temperature"),
    ("/v1/chat/completions", chat(top_p=1.5), 400, "top_p"),
    ("/v1/chat/completions", chat(n="2"), 400, "n"),
    ("/v1/chat/completions", chat(n=0), 400, "n"),
    ("/v1/chat/completions", chat(stop=5), 400, "stop"),
    ("/v1/chat/completions", chat(stop=["a", 1]), 400, "stop"),
    ("/v1/chat/completions", chat(stream_options="x"), 400, "stream_options"),
    ("/v1/chat/completions", chat(stream_options={"include_usage": "yes"}), 400,
     "stream_options.include_usage"),
    ("/v1/chat/completions", chat(tools="f"), 400, "tools"),
    ("/v1/chat/completions", chat(tools=[{"type": "function"}]), 400, "tools[0].function"),
    ("/v1/chat/completions", chat(tools=[{"type": "function", "function": {}}]), 400,
     "tools[0].function.name"),
    ("/v1/chat/completions", chat(tools=[{"type": "web", "function": {"name": "f"}}]), 400,
     "tools[0].type"),
    ("/v1/chat/completions", chat(tool_choice="always"), 400, "tool_choice"),
    ("/v1/chat/completions", chat(response_format={"type": "xml"}), 400, "response_format"),
    ("/v1/chat/completions", chat(presence_penalty=3), 400, "presence_penalty"),
    ("/v1/completions", without({"model": "m", "prompt": "x"}, "prompt"), 400, "prompt"),
    ("/v1/completions", comp(prompt=5), 400, "prompt"),
    ("/v1/completions", comp(prompt=[]), 400, "prompt"),
    ("/v1/completions", comp(prompt=["a", 1]), 400, "prompt"),
    ("/v1/completions", comp(max_tokens="10"), 400, "max_tokens"),
    ("/v1/completions", comp(echo="no"), 400, "echo"),
    ("/v1/embeddings", without({"model": "m", "input": "x"}, "input"), 400, "input"),
    ("/v1/embeddings", emb(input=""), 400, "input"),
    ("/v1/embeddings", emb(input=[]), 400, "input"),
    ("/v1/embeddings", emb(input={"a": 1}), 400, "input"),
    ("/v1/embeddings", emb(encoding_format="hex"), 400, "encoding_format"),
    ("/v1/responses", without({"model": "m", "input": "x"}, "input"), 400, "input"),
    ("/v1/responses", without({"model": "m", "input": "x"}, "model"), 400, "model"),
    ("/v1/responses", resp(input=7), 400, "input"),
    ("/v1/responses", resp(input=[7]), 400, "input[0]"),
    ("/v1/responses", resp(input=[{"type": "message", "role": "robot", "content": "x"}]), 400,
     "input[0].role"),
    ("/v1/responses", resp(input=[{"type": "telepathy"}]), 400, "input[0].type"),
    ("/v1/responses", resp(input=[{"type": "function_call", "name": "f"}]), 400,
     "input[0].call_id"),
    ("/v1/responses", resp(input=[{"type": "function_call_output", "call_id": "c"}]), 400,
     "input[0].output"),
    ("/v1/responses", resp(max_output_tokens=0), 400, "max_output_tokens"),
    ("/v1/responses", resp(instructions=5), 400, "instructions"),
    ("/v1/responses", resp(previous_response_id=""), 400, "previous_response_id"),
    ("/v1/responses", resp(text={"format": {"type": "yaml"}}), 400, "text.format"),
    ("/v1/responses", resp(text={"format": {"type": "json_schema"}}), 400,
     "text.format.schema"),
    ("/v1/responses", resp(tools=[{"type": "function"}]), 400, "tools[0].name"),
    ("/v1/responses", resp(stream=1), 400, "stream"),
    ("/v1/responses", resp(store="yes"), 400, "store"),
]


def test_there_are_at_least_thirty_cases() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize(("path", "raw", "status", "param"), CASES,
                         ids=[f"{i}-{c[0].rsplit('/', 1)[-1]}-{c[3]}" for i, c in
                              enumerate(CASES)])
def test_malformed_request_is_refused(path: str, raw: bytes, status: int,
                                      param: str | None) -> None:
    with pytest.raises(ValidationError) as caught:
        validate(path, raw, LIMIT)
    assert caught.value.status == status
    assert 400 <= caught.value.status < 500
    assert caught.value.param == param
    assert caught.value.message


GOOD: list[tuple[str, bytes]] = [
    ("/v1/chat/completions", chat()),
    ("/v1/chat/completions", chat(stream=True, stream_options={"include_usage": True},
                                  temperature=0, top_p=1, max_tokens=5, n=1, stop=["x"])),
    ("/v1/chat/completions", chat(messages=[
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c", "type": "function",
                         "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c", "content": "42"}],
        tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
        tool_choice="auto")),
    ("/v1/completions", comp(prompt=["a", "b"])),
    ("/v1/completions", comp(prompt=[1, 2, 3])),
    ("/v1/embeddings", emb(input=["a", "b"])),
    ("/v1/responses", resp()),
    ("/v1/responses", resp(input=[{"role": "user", "content": [
        {"type": "input_text", "text": "hi"}]}], instructions="be brief",
        text={"format": {"type": "json_schema", "name": "x", "schema": {}}},
        tools=[{"type": "function", "name": "f", "parameters": {}}])),
]


@pytest.mark.parametrize(("path", "raw"), GOOD)
def test_valid_requests_pass(path: str, raw: bytes) -> None:
    body = validate(path, raw, LIMIT)
    assert body["model"] == "m"


def test_nesting_within_strings_is_not_counted() -> None:
    text = "[" * (MAX_NESTING * 2)
    assert validate("/v1/completions", comp(prompt=text), 1 << 20)["prompt"] == text


# (path, body, param, code, message): how a refusal reads, as OpenAI words it
WORDING: list[tuple[str, dict[str, Any], str, str, str]] = [
    ("/v1/embeddings", {"model": "m"}, "input", "missing_required_parameter",
     "you must provide an input parameter"),
    ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user"}]},
     "messages[0].content", "missing_required_parameter", "messages[0].content is required"),
    # a nested member not given is refused as a null would be
    ("/v1/chat/completions", {"model": "m", "messages": MSG, "tools": [{"type": "function"}]},
     "tools[0].function", "invalid_request", "tools[0].function must be an object"),
    ("/v1/responses", {"model": "m", "input": [{"content": "x"}]}, "input[0].role",
     "invalid_request", "input[0].role must be one of user, system, developer, assistant"),
    ("/v1/embeddings", {"model": "m", "input": ""}, "input", "invalid_request",
     "input must not be empty"),
    # of several bad options the first in the contract's order, whatever the body's order
    ("/v1/chat/completions", {"model": "m", "messages": MSG, "stop": 5, "n": 0, "stream": 1},
     "stream", "invalid_request", "stream must be a boolean"),
    ("/v1/chat/completions", {"stream_options": 1, "model": "m", "messages": MSG, "seed": 0.5},
     "seed", "invalid_request", "seed must be an integer"),
]


@pytest.mark.parametrize(("path", "body", "param", "code", "message"), WORDING,
                         ids=[w[2] for w in WORDING])
def test_refusals_are_worded_as_before(path: str, body: dict[str, Any], param: str, code: str,
                                       message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        validate(path, json.dumps(body).encode(), LIMIT)
    assert (caught.value.param, caught.value.code, caught.value.message) == (
        param, code, message)
