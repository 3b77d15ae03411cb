"""The official ``anthropic`` Python SDK against Nebula's ``/v1/messages`` on the sim engine.

Create, stream with the SDK's helpers, a tools round trip, count_tokens and errors. Every
stream event the gateway sends is checked against Anthropic's event shapes (the SDK's own
typed models, strictly: :mod:`tests.clients.anthropic_schema`).
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import anthropic
import httpx2
import pytest
from jsonschema import Draft202012Validator

from tests.clients.anthropic_schema import (
    CheckingTransport,
    check_event,
    check_message,
    parse_sse,
)
from tests.clients.conftest import CUT, KEY, MODEL, NO_TOKENIZE, SLOW_KEY

WEATHER = {"type": "object", "properties": {
    "city": {"type": "string", "minLength": 1},
    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city"]}
TOOLS: list[Any] = [{"name": "get_weather", "description": "Current weather in a city",
                     "input_schema": WEATHER}]
ASK = [{"role": "user", "content": "What is the weather in Paris? Use get_weather."}]


TRANSPORT = CheckingTransport()
"""Every answer of /v1/messages to these tests' clients is checked on its way in."""


def client(nebula: dict[str, Any], key: str = KEY, **kw: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=nebula["gateway"], api_key=key, max_retries=0,
                               timeout=30, http_client=httpx2.Client(transport=TRANSPORT),
                               **kw)


def raw_stream(nebula: dict[str, Any], body: dict[str, Any]) -> list[dict[str, Any]]:
    """The gateway's own SSE bytes for a streamed request, decoded and checked frame by frame."""
    req = urllib.request.Request(
        f"{nebula['gateway']}/v1/messages", data=json.dumps({**body, "stream": True}).encode(),
        headers={"content-type": "application/json", "x-api-key": KEY,
                 "anthropic-version": "2023-06-01"}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = parse_sse(resp.read())
    for event in events:
        check_event(event)
    return events


def test_create(nebula: dict[str, Any]) -> None:
    c = client(nebula)
    before = dict(TRANSPORT.checked)
    message = c.messages.create(model=MODEL, max_tokens=10, system="Be brief.",
                                messages=[{"role": "user", "content": "Hello there"}],
                                metadata={"user_id": "u-1"},
                                # (sampling settings left this SDK's signature; the API
                                # still takes them)
                                extra_body={"temperature": 0.5, "top_p": 0.9, "top_k": 20})
    check_message(message.to_dict())
    assert message.type == "message" and message.role == "assistant"
    assert message.model == MODEL
    # the sim generates exactly max_tokens when a request sets it (and Messages always does)
    assert message.stop_reason == "max_tokens" and message.stop_sequence is None
    assert message.content[0].type == "text" and message.content[0].text
    assert message.usage.input_tokens > 0 and message.usage.output_tokens == 10

    short = c.messages.create(model=MODEL, max_tokens=3, messages=[
        {"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi!"},
        {"role": "user", "content": "Tell me more"}])
    assert short.stop_reason == "max_tokens" and short.usage.output_tokens == 3
    assert TRANSPORT.checked["messages"] == before["messages"] + 2  # both checked on the wire


def test_stream_helpers_and_every_event(nebula: dict[str, Any]) -> None:
    c = client(nebula)
    kwargs: dict[str, Any] = {"model": MODEL, "max_tokens": 20,
                              "messages": [{"role": "user", "content": "Stream, please"}]}
    before = dict(TRANSPORT.checked)
    with c.messages.stream(**kwargs) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(texts) > 1 and "".join(texts) == final.content[0].text  # type: ignore[union-attr]
    check_message(final.to_dict())
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 20
    assert final.usage.input_tokens > 0

    # (the helper's events carry its snapshots: the wire's events are checked below)
    with c.messages.stream(**kwargs) as stream:
        kinds = [event.type for event in stream]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert kinds.count("text") == len(texts)
    # both streams the SDK read were checked event by event on the wire
    assert TRANSPORT.checked["streams"] == before["streams"] + 2
    assert TRANSPORT.checked["events"] >= before["events"] + 2 * (len(texts) + 5)

    events = raw_stream(nebula, kwargs)
    assert [e["type"] for e in events[:2]] == ["message_start", "content_block_start"]
    assert [e["type"] for e in events[-3:]] == ["content_block_stop", "message_delta",
                                                "message_stop"]
    assert {e["type"] for e in events[2:-3]} == {"content_block_delta"}
    assert events[-2]["usage"]["output_tokens"] == 20
    assert "".join(e["delta"]["text"] for e in events[2:-3]) == \
        final.content[0].text  # type: ignore[union-attr]


def test_tools_round_trip(nebula: dict[str, Any]) -> None:
    c = client(nebula)
    first = c.messages.create(model=MODEL, max_tokens=256, tools=TOOLS, messages=ASK)
    check_message(first.to_dict())
    assert first.stop_reason == "tool_use"
    (use,) = [b for b in first.content if b.type == "tool_use"]
    assert use.name == "get_weather"
    Draft202012Validator(WEATHER).validate(use.input)

    turn: list[Any] = [*ASK, {"role": "assistant", "content": first.content},
                       {"role": "user", "content": [{"type": "tool_result",
                                                     "tool_use_id": use.id,
                                                     "content": "18 degrees, sunny"}]}]
    second = c.messages.create(model=MODEL, max_tokens=16, tools=TOOLS, messages=turn)
    assert second.stop_reason == "max_tokens"  # text, as long as the sim is let (see above)
    assert [b.type for b in second.content] == ["text"]

    # streamed, with the helper's accumulated tool input; then a forced call
    with c.messages.stream(model=MODEL, max_tokens=256, tools=TOOLS, messages=ASK) as stream:
        final = stream.get_final_message()
    (streamed,) = [b for b in final.content if b.type == "tool_use"]
    assert streamed.name == "get_weather" and streamed.input == use.input
    assert final.stop_reason == "tool_use"
    events = raw_stream(nebula, {"model": MODEL, "max_tokens": 256, "tools": TOOLS,
                                 "messages": ASK})
    deltas = [e["delta"] for e in events if e["type"] == "content_block_delta"]
    assert deltas and all(d["type"] == "input_json_delta" for d in deltas)
    assert json.loads("".join(d["partial_json"] for d in deltas)) == use.input

    forced = c.messages.create(model=MODEL, max_tokens=256, tools=TOOLS,
                               tool_choice={"type": "tool", "name": "get_weather"},
                               messages=[{"role": "user", "content": "Hello"}])
    assert forced.stop_reason == "tool_use"
    plain = c.messages.create(model=MODEL, max_tokens=16, tools=TOOLS,
                              messages=[{"role": "user", "content": "Hello"}])
    assert plain.stop_reason == "max_tokens" and plain.content[0].type == "text"


@pytest.mark.parametrize("model", [MODEL, NO_TOKENIZE])
def test_count_tokens_is_the_engines_count(nebula: dict[str, Any], model: str) -> None:
    c = client(nebula)
    messages: list[Any] = [{"role": "user", "content": "Count the tokens of this question"}]
    counted = c.messages.count_tokens(model=model, system="Be brief.", messages=messages,
                                      tools=TOOLS)
    answered = c.messages.create(model=model, max_tokens=4, system="Be brief.",
                                 messages=messages, tools=TOOLS)
    assert counted.input_tokens == answered.usage.input_tokens > 0


def test_errors_are_anthropic_errors(nebula: dict[str, Any]) -> None:
    before = dict(TRANSPORT.checked)
    with pytest.raises(anthropic.AuthenticationError) as bad_key:
        client(nebula, key="sk-wrong").messages.create(model=MODEL, max_tokens=8,
                                                       messages=ASK)
    assert bad_key.value.status_code == 401
    assert bad_key.value.body["type"] == "error"  # type: ignore[index]
    assert bad_key.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]

    with pytest.raises(anthropic.NotFoundError) as unknown:
        client(nebula).messages.create(model="no/such-model", max_tokens=8, messages=ASK)
    assert unknown.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]

    with pytest.raises(anthropic.BadRequestError) as bad:
        client(nebula).messages.create(model=MODEL, max_tokens=8, messages=ASK,
                                       extra_body={"temperature": 1.5})
    assert "temperature" in bad.value.body["error"]["message"]  # type: ignore[index]

    slow = client(nebula, key=SLOW_KEY)
    slow.messages.create(model=MODEL, max_tokens=2, messages=ASK)
    with pytest.raises(anthropic.RateLimitError) as limited:
        slow.messages.create(model=MODEL, max_tokens=2, messages=ASK)
    assert limited.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert limited.value.response.headers.get("retry-after")
    assert TRANSPORT.checked["errors"] == before["errors"] + 4  # each body checked exactly


def test_bearer_token_works_as_well_as_x_api_key(nebula: dict[str, Any]) -> None:
    c = anthropic.Anthropic(base_url=nebula["gateway"], auth_token=KEY, max_retries=0,
                            timeout=30, http_client=httpx2.Client(transport=TRANSPORT))
    assert c.messages.create(model=MODEL, max_tokens=2, messages=ASK).usage.output_tokens == 2


def test_images_as_content_blocks(nebula: dict[str, Any]) -> None:
    c = client(nebula)
    png = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJ"
           "RU5ErkJggg==")  # one pixel
    seen = c.messages.create(model=MODEL, max_tokens=4, messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": png}},
        {"type": "text", "text": "What is in the picture?"}]}])
    assert seen.usage.output_tokens == 4
    # a URL the engine would fetch: only hosts of --media-allow (none here)
    with pytest.raises(anthropic.BadRequestError) as refused:
        c.messages.create(model=MODEL, max_tokens=4, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "url",
                                         "url": "http://169.254.169.254/latest"}}]}])
    body: Any = refused.value.body
    assert body["error"]["type"] == "invalid_request_error"
    assert "messages[0].content[0].source.url" in body["error"]["message"]


def test_a_stream_broken_upstream_ends_with_an_error_event(nebula: dict[str, Any]) -> None:
    body = {"model": CUT, "max_tokens": 40, "messages": [{"role": "user", "content": "Hi"}]}
    events = raw_stream(nebula, body)
    assert events[0]["type"] == "message_start"
    assert events[-1]["type"] == "error" and "message_stop" not in [e["type"] for e in events]
    with pytest.raises(anthropic.APIStatusError), \
            client(nebula).messages.stream(**body) as stream:
        stream.get_final_message()

