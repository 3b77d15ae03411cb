"""pydantic-ai (``pydantic-ai-slim[openai]``) agents through Nebula on the sim engine.

An agent with a function tool and structured output (``output_type`` a pydantic model):
pydantic-ai offers the model an output tool (``final_result``) whose parameters are the
model's JSON schema and forces a tool call (``tool_choice: required``). The sim calls the
tool the prompt names first; its arguments are generated from the schema, so the output
tool's arguments validate as the pydantic model. Over chat completions (``OpenAIChatModel``)
and the Responses API (``OpenAIResponsesModel``), run whole and streamed. What the gateway
sent is checked against OpenAI's description on its way in.

The sim answers ``required`` with the first tool offered when the last message is a tool
result, and pydantic-ai offers the function tools before the output tool; so here, as an
agent whose tool is used once would, ``get_weather`` withdraws itself once it has answered
(its ``prepare``), and the next turn has only ``final_result`` to call.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import httpx2
import pytest
from openai import AsyncOpenAI
from pydantic import BaseModel, Field
from pydantic_ai import Agent, RunContext, Tool
from pydantic_ai.messages import ModelResponse, ToolCallPart, ToolReturnPart
from pydantic_ai.models import Model
from pydantic_ai.models.openai import OpenAIChatModel, OpenAIResponsesModel
from pydantic_ai.providers.openai import OpenAIProvider
from pydantic_ai.tools import ToolDefinition

from tests.clients.conftest import KEY, MODEL, NO_TOKENIZE
from tests.clients.openai_checking import AsyncCheckingTransport
from tests.clients.weather import ASK, CALLS, get_weather


class Forecast(BaseModel):
    """A structured forecast: constraints the sim's arguments must meet to validate."""

    city: str = Field(min_length=1)
    days: int = Field(ge=1, le=5)
    temperature_c: float = Field(ge=-40, le=45)
    conditions: list[Literal["sun", "cloud", "rain", "snow"]] = Field(min_length=1)
    summary: str




async def until_answered(ctx: RunContext[None], tool: ToolDefinition) -> ToolDefinition | None:
    """Offered until the tool has been called once (see the module's docstring)."""
    called = any(isinstance(part, ToolCallPart) and part.tool_name == tool.name
                 for message in ctx.messages if isinstance(message, ModelResponse)
                 for part in message.parts)
    return None if called else tool


def make_agent(nebula: dict[str, Any], api: str, model: str
               ) -> tuple[Agent[None, Forecast], AsyncCheckingTransport]:
    transport = AsyncCheckingTransport()
    client = AsyncOpenAI(base_url=f"{nebula['gateway']}/v1", api_key=KEY, max_retries=0,
                         timeout=30, http_client=httpx2.AsyncClient(transport=transport))
    provider = OpenAIProvider(openai_client=client)
    llm: Model = OpenAIResponsesModel(model, provider=provider) if api == "responses" \
        else OpenAIChatModel(model, provider=provider)
    agent = Agent(llm, output_type=Forecast, instructions="You forecast the weather.",
                  tools=[Tool(get_weather, prepare=until_answered)])
    return agent, transport


CASES = [("chat", MODEL), ("responses", MODEL), ("responses", NO_TOKENIZE)]


def check_run(messages: list[Any], output: Forecast) -> None:
    """The tool called (arguments as its schema asks) and answered, then the output tool."""
    assert isinstance(output, Forecast)
    (city, days), = CALLS
    assert isinstance(city, str) and isinstance(days, int)
    calls = [p.tool_name for m in messages if isinstance(m, ModelResponse)
             for p in m.parts if isinstance(p, ToolCallPart)]
    assert calls == ["get_weather", "final_result"], calls
    returned = [p for m in messages for p in getattr(m, "parts", ())
                if isinstance(p, ToolReturnPart) and p.tool_name == "get_weather"]
    assert [r.content for r in returned] == [f"cloudy, 4C in {city} for {days} days"]


@pytest.mark.parametrize(("api", "model"), CASES)
def test_agent_tool_and_structured_output(nebula: dict[str, Any], api: str,
                                          model: str) -> None:
    CALLS.clear()
    agent, transport = make_agent(nebula, api, model)
    result = agent.run_sync(ASK)
    check_run(result.all_messages(), result.output)
    usage = result.usage
    assert usage.requests == 2 and usage.input_tokens > 0 and usage.output_tokens > 0
    kind = "responses" if api == "responses" else "completions"
    assert transport.checked[kind] == 2 and not transport.checked.failures


@pytest.mark.parametrize(("api", "model"), CASES)
def test_agent_streamed(nebula: dict[str, Any], api: str, model: str) -> None:
    CALLS.clear()
    agent, transport = make_agent(nebula, api, model)

    async def run() -> tuple[list[Forecast], Forecast, list[Any]]:
        async with agent.run_stream(ASK) as result:
            partial = [out async for out in result.stream_output(debounce_by=None)]
            return partial, await result.get_output(), result.all_messages()

    partial, output, messages = asyncio.run(run())
    check_run(messages, output)
    assert partial and partial[-1] == output  # the output was built up as it streamed
    streams = "responses.streams" if api == "responses" else "chat.streams"
    assert transport.checked[streams] == 2 and not transport.checked.failures
