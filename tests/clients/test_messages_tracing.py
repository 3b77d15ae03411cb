"""/v1/messages is traced as the OpenAI paths are: one trace gateway -> router -> engine, the
gateway's span carrying the model and the engine's usage. The sim here is started by a node
(its declared capabilities, tokenize among them, travel with its endpoint)."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import requests

from devtools.cluster import http_get
from tests.e2e.test_tracing import MODEL, _check_chain, _spans, _traceparent, traced

__all__ = ["traced"]  # (the fixture, shared with tests/e2e/test_tracing.py)


def test_a_messages_request_is_one_trace(traced: dict[str, Any]) -> None:
    header, trace_id, caller = _traceparent()
    reply = requests.post(f"{traced['gateway']}/v1/messages", timeout=30,
                          headers={"traceparent": header, "anthropic-version": "2023-06-01"},
                          json={"model": MODEL, "max_tokens": 5,
                                "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status_code == 200, reply.text
    chain = _check_chain(_spans(traced["receiver"], trace_id), caller)
    gateway = chain["gateway"].attributes
    assert gateway.get("url.path") == "/v1/messages"
    assert gateway.get("gen_ai.request.model") == MODEL
    assert gateway.get("nebula.messages.translated") is True
    assert gateway.get("gen_ai.usage.output_tokens") == reply.json()["usage"]["output_tokens"]
    assert gateway.get("gen_ai.usage.input_tokens") == reply.json()["usage"]["input_tokens"]


def test_count_tokens_on_a_node_started_sim(traced: dict[str, Any]) -> None:
    client = anthropic.Anthropic(base_url=traced["gateway"], api_key="unused", max_retries=0,
                                 timeout=30)
    messages: Any = [{"role": "user", "content": "how many tokens is this?"}]
    counted = client.messages.count_tokens(model=MODEL, messages=messages)
    answered = client.messages.create(model=MODEL, max_tokens=2, messages=messages)
    assert counted.input_tokens == answered.usage.input_tokens > 0
    by_path = json.loads(http_get(f"{traced['engine']}/sim/stats")[1])["by_path"]
    assert by_path.get("/tokenize", 0) >= 1  # counted by the engine's tokenizer
