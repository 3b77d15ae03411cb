"""The official ``openai`` client running tool-call round trips through Nebula on the sim.

Chat completions (create, streamed raw, and the SDK's ``chat.completions.stream`` helper)
and the Responses API (function_call out, function_call_output back), so agent loops can
be tested without a GPU.
"""

from __future__ import annotations

import json
from typing import Any

import openai
from jsonschema import Draft202012Validator

from tests.clients.conftest import KEY, MODEL
from tests.support.openai_schema import checker

WEATHER = {"type": "object", "properties": {
    "city": {"type": "string"}, "days": {"type": "integer", "minimum": 1, "maximum": 5}},
    "required": ["city", "days"], "additionalProperties": False}
TOOLS: list[Any] = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather forecast", "parameters": WEATHER}}]
ASK: list[Any] = [{"role": "user", "content": "Forecast for Oslo? Call get_weather."}]


def client(nebula: dict[str, Any]) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{nebula['gateway']}/v1", api_key=KEY, max_retries=0,
                         timeout=30)


def answer_with(calls: list[Any]) -> list[Any]:
    """The conversation after the assistant's calls, each answered by a tool message."""
    return [*ASK, {"role": "assistant", "content": None, "tool_calls": calls},
            *({"role": "tool", "tool_call_id": call["id"], "content": "cloudy, 4C"}
              for call in calls)]


def test_chat_tool_round_trip(nebula: dict[str, Any]) -> None:
    c = client(nebula)
    first = c.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS)
    checker().check("CreateChatCompletionResponse", first.to_dict())
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather"
    Draft202012Validator(WEATHER).validate(json.loads(call.function.arguments))

    second = c.chat.completions.create(
        model=MODEL, tools=TOOLS, max_tokens=8,
        messages=answer_with([call.to_dict()]))
    assert second.choices[0].finish_reason == "length"
    assert second.choices[0].message.content and not second.choices[0].message.tool_calls


def test_chat_tool_call_streamed(nebula: dict[str, Any]) -> None:
    c = client(nebula)
    chunks = list(c.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS,
                                            stream=True,
                                            stream_options={"include_usage": True}))
    for chunk in chunks:
        checker().check("CreateChatCompletionStreamResponse", chunk.to_dict())
    parts = [tc for ch in chunks if ch.choices for tc in ch.choices[0].delta.tool_calls or []]
    assert parts[0].id and parts[0].function and parts[0].function.name == "get_weather"
    arguments = "".join(p.function.arguments or "" for p in parts if p.function)
    assert len(parts) > 3  # the arguments came in fragments
    Draft202012Validator(WEATHER).validate(json.loads(arguments))
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "tool_calls"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0

    # the SDK's stream helper: its events and its accumulated completion
    with c.chat.completions.stream(model=MODEL, messages=ASK, tools=TOOLS) as stream:
        done = [e for e in stream if e.type == "tool_calls.function.arguments.done"]
        final = stream.get_final_completion()
    assert [e.name for e in done] == ["get_weather"] and done[0].arguments == arguments
    (call,) = final.choices[0].message.tool_calls or []
    assert call.function.arguments == arguments
    assert final.choices[0].finish_reason == "tool_calls"

    # (no max_tokens: the helper refuses an answer cut by the limit; the sim stops after
    # its --output-tokens)
    with c.chat.completions.stream(model=MODEL, tools=TOOLS,
                                   messages=answer_with([call.to_dict()])) as stream:
        answer = stream.get_final_completion().choices[0]
    assert answer.message.content and answer.finish_reason == "stop"


def test_responses_function_call_round_trip(nebula: dict[str, Any]) -> None:
    c = client(nebula)
    tools: list[Any] = [{"type": "function", "name": "get_weather", "strict": False,
                         "description": "Weather forecast", "parameters": WEATHER}]
    first = c.responses.create(model=MODEL, input="Oslo forecast via get_weather", tools=tools)
    (call,) = [item for item in first.output if item.type == "function_call"]
    Draft202012Validator(WEATHER).validate(json.loads(call.arguments))
    second = c.responses.create(model=MODEL, tools=tools, previous_response_id=first.id,
                                max_output_tokens=6,
                                input=[{"type": "function_call_output", "call_id": call.call_id,
                                        "output": "cloudy, 4C"}])
    assert second.output_text and not [i for i in second.output if i.type == "function_call"]

    with c.responses.stream(model=MODEL, input="Oslo forecast via get_weather",
                            tools=tools) as stream:
        events = list(stream)
        final = stream.get_final_response()
    for event in events:
        checker().check_event(event.to_dict())
    (streamed,) = [item for item in final.output if item.type == "function_call"]
    assert streamed.arguments == call.arguments
