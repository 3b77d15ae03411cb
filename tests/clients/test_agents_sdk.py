"""The OpenAI Agents SDK (``openai-agents``) running agent loops through Nebula on the sim.

An agent with a function tool, over the Responses API (``OpenAIResponsesModel``) and over
chat completions (``OpenAIChatCompletionsModel``), run to its end with ``Runner.run`` and
``Runner.run_streamed``; tracing export is off. The sim calls the tool the prompt names
(arguments from its JSON schema), the SDK runs it and sends its output back, and the sim
answers that in text, which ends the loop. On the Responses API both the sim's own
``/v1/responses`` (``MODEL``) and the gateway's translation to chat (``NO_TOKENIZE``, an
engine without native Responses) are driven. Every answer the SDK was sent is checked
against OpenAI's description on its way in (:mod:`tests.clients.openai_checking`).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx2
import pytest
from agents import (
    Agent,
    ItemHelpers,
    Model,
    ModelSettings,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    RawResponsesStreamEvent,
    RunConfig,
    RunItemStreamEvent,
    Runner,
    RunResult,
    RunResultStreaming,
    function_tool,
    set_tracing_disabled,
)
from jsonschema import Draft202012Validator
from openai import AsyncOpenAI
from openai.types.responses import ResponseFunctionToolCall

from tests.clients.conftest import KEY, MODEL, NO_TOKENIZE
from tests.clients.openai_checking import AsyncCheckingTransport
from tests.clients.weather import ASK, CALLS, get_weather
from tests.support.openai_schema import checker

set_tracing_disabled(True)  # no trace export (it would go to OpenAI's servers)
weather_tool = function_tool(get_weather)


def make_model(nebula: dict[str, Any], api: str, model: str
               ) -> tuple[Model, AsyncCheckingTransport]:
    transport = AsyncCheckingTransport()
    client = AsyncOpenAI(base_url=f"{nebula['gateway']}/v1", api_key=KEY, max_retries=0,
                         timeout=30, http_client=httpx2.AsyncClient(transport=transport))
    if api == "responses":
        return OpenAIResponsesModel(model=model, openai_client=client), transport
    return OpenAIChatCompletionsModel(model=model, openai_client=client), transport


def agent(model: Model) -> Agent[Any]:
    # include_usage: the SDK asks chat streams for usage only from api.openai.com by default
    return Agent(name="forecaster", instructions="You answer weather questions.",
                 model=model, tools=[weather_tool],
                 model_settings=ModelSettings(include_usage=True))


CONFIG = RunConfig(tracing_disabled=True, workflow_name="nebula-clients")
CASES = [("responses", MODEL), ("responses", NO_TOKENIZE), ("chat", MODEL)]


def check_loop(result: RunResult | RunResultStreaming) -> None:
    """One tool round: the call (arguments as the schema asks), its output, a text answer."""
    kinds = [item.type for item in result.new_items]
    assert kinds == ["tool_call_item", "tool_call_output_item", "message_output_item"], kinds
    call = result.new_items[0].raw_item
    assert isinstance(call, ResponseFunctionToolCall) and call.name == "get_weather"
    Draft202012Validator(weather_tool.params_json_schema).validate(json.loads(call.arguments))
    (city, days), = CALLS
    assert isinstance(city, str) and isinstance(days, int)
    assert result.new_items[1].output == f"cloudy, 4C in {city} for {days} days"
    answer = ItemHelpers.text_message_outputs(result.new_items)
    assert answer and result.final_output == answer
    assert len(result.raw_responses) == 2  # two model turns: the call, then the answer
    assert all(r.usage.output_tokens > 0 for r in result.raw_responses)


@pytest.mark.parametrize(("api", "model"), CASES)
def test_agent_with_tool(nebula: dict[str, Any], api: str, model: str) -> None:
    CALLS.clear()
    llm, transport = make_model(nebula, api, model)
    result = asyncio.run(Runner.run(agent(llm), ASK, run_config=CONFIG, max_turns=4))
    check_loop(result)
    kind = "responses" if api == "responses" else "completions"
    assert transport.checked[kind] == 2 and not transport.checked.failures


@pytest.mark.parametrize(("api", "model"), CASES)
def test_agent_with_tool_streamed(nebula: dict[str, Any], api: str, model: str) -> None:
    CALLS.clear()
    llm, transport = make_model(nebula, api, model)

    async def run() -> tuple[RunResultStreaming, list[Any]]:
        result = Runner.run_streamed(agent(llm), ASK, run_config=CONFIG, max_turns=4)
        return result, [event async for event in result.stream_events()]

    result, events = asyncio.run(run())
    check_loop(result)
    named = [e.name for e in events if isinstance(e, RunItemStreamEvent)]
    assert named == ["tool_called", "tool_output", "message_output_created"], named
    raw = [e.data for e in events if isinstance(e, RawResponsesStreamEvent)]
    deltas = [e.delta for e in raw if e.type == "response.output_text.delta"]
    assert "".join(deltas) == result.final_output  # the answer came streamed, in pieces
    assert len(deltas) > 1
    arguments = [e for e in raw if e.type == "response.function_call_arguments.delta"]
    assert len(arguments) > 1  # so did the call's arguments
    if api == "responses":  # the gateway's own events, as the SDK parsed them
        for event in raw:
            checker().check_event(event.to_dict())
        assert transport.checked["responses.streams"] == 2
    else:  # (the SDK turns chat chunks into Responses events of its own making)
        assert transport.checked["chat.streams"] == 2
    assert not transport.checked.failures
