"""The smaller subset on a real model: the ``anthropic`` SDK against SmolLM2-135M on
llama.cpp (no /tokenize there: count_tokens asks the engine for its prompt count)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx2
import pytest

from tests.clients.anthropic_schema import CheckingTransport
from tests.support.smollm2 import MODEL, smollm2_cluster

pytestmark = pytest.mark.llamacpp

TRANSPORT = CheckingTransport()


@pytest.fixture(scope="module")
def smol(tmp_path_factory: pytest.TempPathFactory) -> Iterator[anthropic.Anthropic]:
    with smollm2_cluster(tmp_path_factory.mktemp("llamacpp-clients") / "run") as gateway:
        yield anthropic.Anthropic(base_url=gateway, api_key="unused", max_retries=0,
                                  timeout=120, http_client=httpx2.Client(transport=TRANSPORT))


ASK: Any = [{"role": "user", "content": "What is the capital of France?"}]


def test_create_stream_and_count_on_a_real_model(smol: anthropic.Anthropic) -> None:
    message = smol.messages.create(model=MODEL, max_tokens=24, system="You are terse.",
                                   messages=ASK, extra_body={"temperature": 0})
    assert message.content[0].type == "text" and message.content[0].text.strip()
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.input_tokens > 5 and message.usage.output_tokens > 0

    with smol.messages.stream(model=MODEL, max_tokens=16, messages=ASK,
                              extra_body={"temperature": 0}) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text.strip() and final.content[0].text == text  # type: ignore[union-attr]
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert TRANSPORT.checked["streams"] == 1 and TRANSPORT.checked["messages"] == 1

    counted = smol.messages.count_tokens(model=MODEL, system="You are terse.", messages=ASK)
    assert counted.input_tokens == message.usage.input_tokens
