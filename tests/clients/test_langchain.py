"""LangChain's ``ChatOpenAI`` and ``ChatAnthropic`` against Nebula's gateway on the sim.

Each: invoke, stream, batch, and ``bind_tools`` with a tool round trip (the sim calls the
tool the prompt names, LangChain runs it, the sim answers its result in text), streamed and
not. ``ChatOpenAI`` on chat completions and on the Responses API (``use_responses_api``),
``ChatAnthropic`` on ``/v1/messages``. What the gateway sent is checked on its way in:
OpenAI answers against OpenAI's description (:mod:`tests.clients.openai_checking`),
Messages streams and Messages event by event against Anthropic's shapes
(:mod:`tests.clients.anthropic_schema`).
"""

from __future__ import annotations

from typing import Any

import anthropic
import httpx2
import pytest
from jsonschema import Draft202012Validator
from langchain_anthropic import ChatAnthropic
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage
from langchain_core.tools import tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_openai import ChatOpenAI

from tests.clients import anthropic_schema, openai_checking
from tests.clients.conftest import KEY, MODEL

ASK = "What is the forecast for Oslo? Call get_weather."
PROMPTS = ["Say something about rivers.", "Say something about hills.", "Name a colour."]


@tool
def get_weather(city: str, days: int) -> str:
    """The weather forecast for a city, some days ahead."""
    return f"cloudy, 4C in {city} for {days} days"


SCHEMA = convert_to_openai_tool(get_weather)["function"]["parameters"]


class Client:
    """A LangChain chat model on the gateway, with what checks its answers."""

    def __init__(self, llm: BaseChatModel, checked: dict[str, int] | openai_checking.Counts,
                 kind: str) -> None:
        self.llm, self.checked, self.kind = llm, checked, kind


def chat_openai(nebula: dict[str, Any], responses: bool) -> Client:
    transport = openai_checking.CheckingTransport()
    llm = ChatOpenAI(model=MODEL, base_url=f"{nebula['gateway']}/v1", api_key=KEY,
                     max_retries=0, timeout=30, stream_usage=True,
                     use_responses_api=responses,
                     http_client=httpx2.Client(transport=transport))
    return Client(llm, transport.checked, "responses" if responses else "chat")


def chat_anthropic(nebula: dict[str, Any]) -> Client:
    llm = ChatAnthropic(model_name=MODEL, base_url=nebula["gateway"], api_key=KEY,
                        max_retries=0, timeout=30, max_tokens=64, stream_usage=True)
    transport = anthropic_schema.CheckingTransport()
    # ChatAnthropic builds its SDK client itself (a cached property) and takes no httpx
    # client: this one is the same client, on the checking transport.
    llm.__dict__["_client"] = anthropic.Anthropic(
        base_url=nebula["gateway"], api_key=KEY, max_retries=0, timeout=30,
        http_client=httpx2.Client(transport=transport))
    return Client(llm, transport.checked, "messages")


CLIENTS = ["chat", "responses", "messages"]


@pytest.fixture(params=CLIENTS)
def lc(request: pytest.FixtureRequest, nebula: dict[str, Any]) -> Client:
    kind = request.param
    return chat_anthropic(nebula) if kind == "messages" else \
        chat_openai(nebula, responses=kind == "responses")


def streams_checked(c: Client) -> int:
    return {"chat": lambda: c.checked["chat.streams"],
            "responses": lambda: c.checked["responses.streams"],
            "messages": lambda: c.checked["streams"]}[c.kind]()


def failures(c: Client) -> list[str]:
    return c.checked.failures if isinstance(c.checked, openai_checking.Counts) else []


def test_invoke(lc: Client) -> None:
    answer = lc.llm.invoke([HumanMessage("Tell me about rivers.")])
    assert isinstance(answer, AIMessage) and answer.text and not answer.tool_calls
    usage = answer.usage_metadata
    assert usage and usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert answer.response_metadata.get("model_name", answer.response_metadata.get("model"))
    assert not failures(lc)


def test_stream(lc: Client) -> None:
    chunks = list(lc.llm.stream("Tell me about rivers."))
    assert len([c for c in chunks if c.text]) > 1  # the text came in pieces
    whole: AIMessageChunk = sum(chunks[1:], chunks[0])
    assert whole.text == lc.llm.invoke("Tell me about rivers.").text  # the sim is
    # deterministic: the streamed text is the answer's
    assert whole.usage_metadata and whole.usage_metadata["output_tokens"] > 0
    assert streams_checked(lc) == 1 and not failures(lc)


def test_batch(lc: Client) -> None:
    answers = lc.llm.batch(PROMPTS)
    texts = [a.text for a in answers]
    assert all(texts) and len(set(texts)) == len(PROMPTS)
    assert texts == [lc.llm.invoke(p).text for p in PROMPTS]  # each in its place


def test_tool_round_trip(lc: Client) -> None:
    llm = lc.llm.bind_tools([get_weather])
    first = llm.invoke([HumanMessage(ASK)])
    assert isinstance(first, AIMessage)
    (call,) = first.tool_calls
    assert call["name"] == "get_weather" and call["id"]
    Draft202012Validator(SCHEMA).validate(call["args"])
    result = get_weather.invoke(call)  # a ToolMessage for the call's id
    assert result.content == f"cloudy, 4C in {call['args']['city']} for {call['args']['days']} days"
    answer = llm.invoke([HumanMessage(ASK), first, result])
    assert isinstance(answer, AIMessage) and answer.text and not answer.tool_calls
    assert not failures(lc)


def test_tool_round_trip_streamed(lc: Client) -> None:
    llm = lc.llm.bind_tools([get_weather])
    chunks = list(llm.stream([HumanMessage(ASK)]))
    fragments = [tc for c in chunks for tc in c.tool_call_chunks]
    assert len(fragments) > 2  # the arguments came in pieces
    first: AIMessageChunk = sum(chunks[1:], chunks[0])
    (call,) = first.tool_calls
    assert call["name"] == "get_weather"
    assert call["args"] == llm.invoke([HumanMessage(ASK)]).tool_calls[0]["args"]  # as the
    # sim calls it unstreamed
    history = [HumanMessage(ASK), first, get_weather.invoke(call)]
    answered = list(llm.stream(history))
    answer: AIMessageChunk = sum(answered[1:], answered[0])
    assert answer.text and not answer.tool_calls
    assert answer.text == llm.invoke(history).text
    assert streams_checked(lc) == 2 and not failures(lc)
