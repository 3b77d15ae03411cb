"""The ``openai`` package for Node.js (tests/clients/node, pinned in its package-lock.json)
against Nebula's gateway on the sim, run with the machine's ``node``.

``clients.mjs`` makes the calls (chat: create, a raw stream, the stream helper, a tool round
trip; Responses: create, retrieve, the stream helper; embeddings as base64, the SDK's
default, and as floats) and prints what came back as JSON lines; this test checks them,
each against OpenAI's description and each stream event by event. ``make node-clients``
(a dependency of ``make test``) runs ``npm ci`` there; a missing install fails this test.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.clients.conftest import KEY, MODEL
from tests.support.openai_schema import checker

NODE_DIR = Path(__file__).parent / "node"


@pytest.fixture(scope="module")
def out(nebula: dict[str, Any]) -> dict[str, Any]:
    """What clients.mjs printed, by call name."""
    node = shutil.which("node")
    assert node, "node is not on PATH (the machine's Node.js, v20)"
    assert (NODE_DIR / "node_modules" / "openai" / "package.json").is_file(), \
        "the Node openai package is not installed: run `make node-clients`"
    env = {**os.environ, "NEBULA_BASE_URL": f"{nebula['gateway']}/v1",
           "NEBULA_API_KEY": KEY, "NEBULA_MODEL": MODEL}
    proc = subprocess.run([node, "clients.mjs"], cwd=NODE_DIR, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, f"clients.mjs failed:\n{proc.stderr[-4000:]}"
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    by_name = {line.pop("name"): line for line in lines}
    assert list(by_name) == ["chat", "chat.stream", "chat.stream_helper", "chat.tools",
                             "responses", "responses.stream", "embeddings", "done"]
    return by_name


def test_node_package_pinned() -> None:
    package = json.loads((NODE_DIR / "package.json").read_text())
    lock = json.loads((NODE_DIR / "package-lock.json").read_text())
    pinned = package["dependencies"]["openai"]
    assert pinned[0].isdigit(), "an exact version, not a range"
    assert lock["packages"]["node_modules/openai"]["version"] == pinned
    installed = json.loads((NODE_DIR / "node_modules/openai/package.json").read_text())
    assert installed["version"] == pinned


def test_chat(out: dict[str, Any]) -> None:
    completion = out["chat"]["completion"]
    checker().check("CreateChatCompletionResponse", completion)
    assert completion["model"] == MODEL and completion["choices"][0]["message"]["content"]
    assert completion["usage"]["completion_tokens"] > 0


def test_chat_stream(out: dict[str, Any]) -> None:
    chunks = out["chat.stream"]["chunks"]
    for chunk in chunks:
        checker().check("CreateChatCompletionStreamResponse", chunk)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks
                   if c["choices"])
    assert text == out["chat"]["completion"]["choices"][0]["message"]["content"]
    assert chunks[-1]["usage"]["completion_tokens"] > 0  # include_usage: last, no choices
    helper = out["chat.stream_helper"]
    assert len(helper["deltas"]) > 1 and "".join(helper["deltas"]) == text
    checker().check("CreateChatCompletionResponse", helper["final"])
    assert helper["final"]["choices"][0]["message"]["content"] == text


def test_chat_tool_round_trip(out: dict[str, Any]) -> None:
    first, second = out["chat.tools"]["first"], out["chat.tools"]["second"]
    for completion in (first, second):
        checker().check("CreateChatCompletionResponse", completion)
    (call,) = first["choices"][0]["message"]["tool_calls"]
    assert first["choices"][0]["finish_reason"] == "tool_calls"
    arguments = json.loads(call["function"]["arguments"])
    assert call["function"]["name"] == "get_weather" and 1 <= arguments["days"] <= 5
    assert second["choices"][0]["message"]["content"]
    assert not second["choices"][0]["message"].get("tool_calls")


def test_responses(out: dict[str, Any]) -> None:
    created, retrieved = out["responses"]["created"], out["responses"]["retrieved"]
    checker().check("Response", created)
    checker().check("Response", retrieved)
    assert created["status"] == "completed" and out["responses"]["output_text"]
    assert retrieved["id"] == created["id"] and retrieved["output"] == created["output"]


def test_responses_stream(out: dict[str, Any]) -> None:
    events, final = out["responses.stream"]["events"], out["responses.stream"]["final"]
    for event in events:
        checker().check_event(event)
    types = [e["type"] for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert len(deltas) > 1 and "".join(deltas) == out["responses.stream"]["output_text"]
    checker().check("Response", final)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


def test_embeddings(out: dict[str, Any]) -> None:
    base64, floats = out["embeddings"]["base64"], out["embeddings"]["floats"]
    checker().check("CreateEmbeddingResponse", floats)
    assert [d["index"] for d in base64["data"]] == [0, 1]
    for packed, plain in zip(base64["data"], floats["data"], strict=True):
        assert isinstance(packed["embedding"], list)  # the SDK decoded the base64
        assert len(packed["embedding"]) == len(plain["embedding"]) > 0
        assert all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7)
                   for a, b in zip(packed["embedding"], plain["embedding"], strict=True))
    assert floats["data"][0]["embedding"] != floats["data"][1]["embedding"]
