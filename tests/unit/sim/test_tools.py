"""The sim's tool calls: which tools, arguments valid under their schema, vLLM's wire shapes."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from nebula_node.sim import tools
from nebula_node.sim.protocol import BadRequest
from nebula_node.sim.tokenizer import detokenize, token_ids, token_text, tokenize
from tests.support.openai_schema import checker
from tests.unit.sim.test_sim_app import client, sse_data

Validate = Callable[[str, Any], None]

WEATHER = {"type": "object", "properties": {
    "city": {"type": "string", "minLength": 2, "maxLength": 40},
    "unit": {"enum": ["celsius", "fahrenheit"]},
    "days": {"type": "integer", "minimum": 1, "maximum": 7}}, "required": ["city"],
    "additionalProperties": False}
SEARCH = {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}


def chat_tool(name: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


CHAT_TOOLS = [chat_tool("get_weather", WEATHER), chat_tool("search", SEARCH)]


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}],
            "tools": CHAT_TOOLS, **extra}


# -- arguments from schemas --------------------------------------------------------------

SCHEMAS: list[dict[str, Any]] = [
    WEATHER,
    SEARCH,
    {"type": "object", "properties": {}},
    {"type": "object", "properties": {
        "when": {"type": "string", "format": "date-time"},
        "email": {"type": "string", "format": "email"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 3},
                 "minItems": 2, "maxItems": 4, "uniqueItems": True},
        "score": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "price": {"type": "number", "minimum": 0.5, "maximum": 99.5, "multipleOf": 0.25},
        "step": {"type": "integer", "minimum": -20, "maximum": -3, "multipleOf": 4},
        "flag": {"type": "boolean"}, "nothing": {"type": "null"},
        "maybe": {"type": ["string", "null"], "const": "fixed"},
        "either": {"anyOf": [{"type": "null"}, {"type": "integer", "minimum": 5}]},
        "pair": {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}],
                 "minItems": 2},
    }, "required": ["when", "tags", "score", "price", "step"]},
    {"type": "object", "$defs": {"point": {"type": "object", "properties": {
        "x": {"type": "number"}, "y": {"type": "number"}}, "required": ["x", "y"]}},
     "properties": {"path": {"type": "array", "items": {"$ref": "#/$defs/point"},
                             "minItems": 3}},
     "required": ["path"]},
    {"allOf": [{"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
               {"properties": {"b": {"type": "integer", "exclusiveMinimum": 10}},
                "required": ["b"]}]},
    {"type": "object", "required": ["free"], "additionalProperties": {"type": "integer"},
     "minProperties": 3},
    {"type": "object", "properties": {"deep": {"type": "object", "properties": {
        "deeper": {"type": "object", "properties": {"leaf": {"type": "string",
                                                             "minLength": 30}},
                   "required": ["leaf"]}}, "required": ["deeper"]}}, "required": ["deep"]},
]


@pytest.mark.parametrize("schema", SCHEMAS, ids=range(len(SCHEMAS)))
def test_generated_arguments_validate_against_their_schema(schema: dict[str, Any]) -> None:
    for seed in range(25):
        value = tools.example(schema, random.Random(seed))
        errors = [e.message for e in Draft202012Validator(schema).iter_errors(value)]
        assert not errors, (value, errors)
        assert isinstance(value, dict)
        json.dumps(value)


def test_draft_4_exclusive_bounds_are_honoured() -> None:
    schema = {"type": "object", "properties": {
        "n": {"type": "integer", "minimum": 3, "exclusiveMinimum": True, "maximum": 5,
              "exclusiveMaximum": True}}, "required": ["n"]}
    for seed in range(10):
        assert tools.example(schema, random.Random(seed)) == {"n": 4}


def test_same_prompt_same_arguments() -> None:
    first = tools.calls_for(chat("get_weather please", tool_choice="required"), False, "p")
    again = tools.calls_for(chat("get_weather please", tool_choice="required"), False, "p")
    other = tools.calls_for(chat("get_weather please", tool_choice="required"), False, "q")
    assert [c.arguments for c in first] == [c.arguments for c in again]
    assert first[0].call_id != again[0].call_id  # ids are fresh, as vLLM's
    assert [c.name for c in other] == ["get_weather"]


# -- which tools are called --------------------------------------------------------------

def names(body: dict[str, Any], responses: bool = False) -> list[str]:
    return [t.name for t in tools.chosen(body, responses)]


def test_which_tools_are_called() -> None:
    assert names(chat("hello there")) == []  # auto, no tool named: text
    assert names(chat("please search, then get_weather")) == ["search", "get_weather"]
    assert names(chat("please search, then get_weather", parallel_tool_calls=False)) == \
        ["search"]
    assert names(chat("research the weather")) == []  # a word, not a substring
    assert names(chat("hello", tool_choice="required")) == ["get_weather"]
    assert names(chat("use search", tool_choice="required")) == ["search"]
    assert names(chat("use search", tool_choice="none")) == []
    assert names(chat("hi", tool_choice={"type": "function",
                                         "function": {"name": "search"}})) == ["search"]
    with pytest.raises(BadRequest):
        tools.chosen(chat("hi", tool_choice={"type": "function",
                                             "function": {"name": "nope"}}), False)
    # after a tool result the model answers in text under auto
    turn = chat("search")
    turn["messages"] += [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "search", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "found it"}]
    assert names(turn) == []
    assert names({"model": "m", "messages": [{"role": "user", "content": "search"}]}) == []


def test_which_tools_are_called_in_responses_form() -> None:
    body = {"model": "m", "input": "search for cats",
            "tools": [{"type": "function", "name": "search", "parameters": SEARCH},
                      {"type": "web_search"}]}
    assert names(body, True) == ["search"]
    assert names({**body, "input": "hi", "tool_choice": {"type": "function",
                                                         "name": "search"}}, True) == ["search"]
    body["input"] = [{"role": "user", "content": "search"},
                     {"type": "function_call", "call_id": "c", "name": "search",
                      "arguments": "{}"},
                     {"type": "function_call_output", "call_id": "c", "output": "cats"}]
    assert names(body, True) == []


# -- chat completions on the wire --------------------------------------------------------

def arguments_valid(name: str, arguments: str) -> None:
    schema = {"get_weather": WEATHER, "search": SEARCH}[name]
    Draft202012Validator(schema).validate(json.loads(arguments))


async def test_chat_answers_with_a_tool_call(openai_validate: Validate) -> None:
    c, engine = client()
    body = await (await c.post("/v1/chat/completions",
                               json=chat("what is the weather? use get_weather"))).get_json()
    openai_validate("CreateChatCompletionResponse", body)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("chatcmpl-tool-")
    assert call["function"]["name"] == "get_weather"
    arguments_valid("get_weather", call["function"]["arguments"])
    # one completion token per four characters of arguments, as a stream sends them
    assert body["usage"]["completion_tokens"] == -(-len(call["function"]["arguments"]) // 4)
    assert 'finished_reason="stop"' in engine.metrics_text().decode()


async def test_chat_streams_tool_calls_as_vllm(openai_validate: Validate) -> None:
    c, _ = client(itl_ms=1)
    request = chat("search and get_weather", stream=True,
                   stream_options={"include_usage": True})
    full = await (await c.post("/v1/chat/completions",
                               json={**request, "stream": False})).get_json()
    chunks = sse_data(await (await c.post("/v1/chat/completions", json=request)).get_data())
    assert chunks[-1] == "[DONE]"
    for chunk in chunks[:-1]:
        openai_validate("CreateChatCompletionStreamResponse", chunk)
    deltas = [ch["choices"][0]["delta"] for ch in chunks[:-1] if ch["choices"]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    calls: dict[int, dict[str, Any]] = {}
    for delta in deltas[1:]:
        for part in delta.get("tool_calls", []):
            if "id" in part:  # the first delta of a call: id, type, name, empty arguments
                assert part["index"] not in calls
                assert part["type"] == "function" and part["function"]["arguments"] == ""
                calls[part["index"]] = {"id": part["id"], "name": part["function"]["name"],
                                        "arguments": ""}
            else:
                assert set(part["function"]) == {"arguments"}
                calls[part["index"]]["arguments"] += part["function"]["arguments"]
    assert [calls[i]["name"] for i in sorted(calls)] == ["search", "get_weather"]
    expected = [tc["function"] for tc in full["choices"][0]["message"]["tool_calls"]]
    assert [{"name": v["name"], "arguments": v["arguments"]} for _, v in sorted(calls.items())] \
        == expected  # stream and not, the same calls
    for call in calls.values():
        arguments_valid(call["name"], call["arguments"])
    finishes = [ch["choices"][0]["finish_reason"] for ch in chunks[:-1] if ch["choices"]]
    assert finishes[-1] == "tool_calls" and not any(finishes[:-1])
    assert chunks[-2]["usage"]["completion_tokens"] == full["usage"]["completion_tokens"]


async def test_tool_results_are_read_and_answered_in_text() -> None:
    c, _ = client()
    first = await (await c.post("/v1/chat/completions", json=chat("search cats"))).get_json()
    message = first["choices"][0]["message"]
    turn = chat("search cats")
    turn["messages"] += [
        {"role": "assistant", "content": None, "tool_calls": message["tool_calls"]},
        {"role": "tool", "tool_call_id": message["tool_calls"][0]["id"], "content": "3 cats"}]
    second = await (await c.post("/v1/chat/completions", json=turn)).get_json()
    assert second["choices"][0]["finish_reason"] == "stop"
    assert second["choices"][0]["message"]["content"]
    assert "tool_calls" not in second["choices"][0]["message"]


async def test_a_token_limit_cuts_the_arguments_short() -> None:
    c, _ = client()
    body = await (await c.post("/v1/chat/completions",
                               json=chat("get_weather", max_tokens=2))).get_json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert len(body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]) == 8
    assert body["usage"]["completion_tokens"] == 2


async def test_unknown_named_function_is_a_400() -> None:
    c, _ = client()
    resp = await c.post("/v1/chat/completions", json=chat(
        "x", tool_choice={"type": "function", "function": {"name": "nope"}}))
    assert resp.status_code == 400
    assert (await resp.get_json())["error"]["param"] == "tool_choice"


# -- Responses ---------------------------------------------------------------------------

RESPONSES_TOOLS = [{"type": "function", "name": "get_weather", "parameters": WEATHER,
                    "strict": False},
                   {"type": "function", "name": "search", "parameters": SEARCH}]


async def test_responses_answer_with_function_calls(openai_validate: Validate) -> None:
    c, _ = client(itl_ms=1)
    request = {"model": "m", "input": "search then get_weather", "tools": RESPONSES_TOOLS}
    full = await (await c.post("/v1/responses", json=request)).get_json()
    openai_validate("Response", full)
    assert [(i["type"], i["name"]) for i in full["output"]] == \
        [("function_call", "search"), ("function_call", "get_weather")]
    for item in full["output"]:
        arguments_valid(item["name"], item["arguments"])
        assert item["call_id"].startswith("call_") and item["id"].startswith("fc_")

    raw = await (await c.post("/v1/responses", json={**request, "stream": True})).get_data()
    events = [e for e in sse_data(raw)]
    shared = checker()
    for event in events:
        shared.check_event(event)
    kinds = [e["type"] for e in events]
    assert kinds[:3] == ["response.created", "response.in_progress",
                         "response.output_item.added"]
    assert kinds[-1] == "response.completed"
    assert kinds.count("response.output_item.added") == 2
    assert kinds.count("response.function_call_arguments.done") == 2
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    streamed: dict[int, str] = {}
    for e in events:
        if e["type"] == "response.function_call_arguments.delta":
            streamed[e["output_index"]] = streamed.get(e["output_index"], "") + e["delta"]
    final = events[-1]["response"]["output"]
    assert [streamed[0], streamed[1]] == [i["arguments"] for i in final] == \
        [i["arguments"] for i in full["output"]]


async def test_responses_read_function_call_output_and_answer_text() -> None:
    c, _ = client()
    request = {"model": "m", "tools": RESPONSES_TOOLS, "input": [
        {"role": "user", "content": "search"},
        {"type": "function_call", "call_id": "call_1", "name": "search", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "cats"}]}
    body = await (await c.post("/v1/responses", json=request)).get_json()
    assert [i["type"] for i in body["output"]] == ["message"]
    assert body["output"][0]["content"][0]["text"]


# -- tokenize ----------------------------------------------------------------------------

def test_token_ids_round_trip() -> None:
    text = "héllo, wörld 🙂 and more"
    ids = token_ids(text)
    assert len(ids) == -(-len(text) // 4)
    assert "".join(token_text(i) for i in ids) == text
    assert detokenize({"tokens": ids}) == {"prompt": text}
    with pytest.raises(BadRequest):
        detokenize({"tokens": [-1]})
    assert tokenize({"prompt": "abcdefgh"}, 100)["count"] == 2


async def test_tokenize_counts_what_chat_counts_as_the_prompt() -> None:
    c, _ = client()
    request = chat("a question that is long enough to span tokens")
    counted = await (await c.post("/tokenize", json={"model": "m",
                                                     "messages": request["messages"]})
                     ).get_json()
    answered = await (await c.post("/v1/chat/completions", json=request)).get_json()
    assert counted["count"] == answered["usage"]["prompt_tokens"]
    assert counted["max_model_len"] == 2048
    back = await (await c.post("/detokenize", json={"model": "m",
                                                    "tokens": counted["tokens"]})).get_json()
    assert back["prompt"].startswith("user: a question")
    missing = await c.post("/tokenize", json={"model": "other", "prompt": "x"})
    assert missing.status_code == 404


def test_required_after_a_tool_result_moves_on_to_a_tool_not_called_yet() -> None:
    """An agent loop forced to call a tool (pydantic-ai's output tool) must not call the
    first tool for ever: the next forced call is the first one the conversation lacks."""
    body = chat("hello", tool_choice="required")
    assert [t.name for t in tools.chosen(body, False)] == ["get_weather"]
    body["messages"] += [
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "c1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]
    assert [t.name for t in tools.chosen(body, False)] == ["search"]
    body["messages"][-2]["tool_calls"].append({"id": "c2", "type": "function", "function": {
        "name": "search", "arguments": "{}"}})
    assert [t.name for t in tools.chosen(body, False)] == ["get_weather"]  # all called: first
    responses = {"input": [{"type": "function_call", "name": "get_weather", "call_id": "c",
                            "arguments": "{}"}]}
    assert tools.called_before(responses, True) == {"get_weather"}
