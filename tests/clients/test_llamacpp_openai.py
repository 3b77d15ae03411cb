"""The smaller subset on a real model: the official ``openai`` SDK against SmolLM2-135M on
llama.cpp, placed with ``--embedding True`` as ``make up`` places it (the node starts it
through Nebula's pooling launcher): chat, the stream helper, and embeddings with one
vector per input from the replica that also chats."""

from __future__ import annotations

import math
from collections.abc import Iterator

import openai
import pytest

from devtools.up import ENGINE_ARGS
from tests.support.smollm2 import MODEL, smollm2_cluster

pytestmark = pytest.mark.llamacpp

ASK: list[openai.types.chat.ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smol(tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    with smollm2_cluster(tmp_path_factory.mktemp("llamacpp-openai") / "run",
                         engine_args=ENGINE_ARGS["llamacpp"]) as gateway:
        yield openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0,
                            timeout=120)


def test_chat_create_and_the_stream_helper(smol: openai.OpenAI) -> None:
    reply = smol.chat.completions.create(model=MODEL, messages=ASK, max_tokens=24,
                                         temperature=0)
    assert reply.choices[0].message.content and reply.choices[0].message.content.strip()
    assert reply.usage is not None and reply.usage.completion_tokens > 0

    with smol.chat.completions.stream(model=MODEL, messages=ASK, max_tokens=16,
                                      temperature=0) as stream:
        deltas = [e.delta for e in stream if e.type == "content.delta"]
        final = stream.get_final_completion()
    text = final.choices[0].message.content
    assert text and text.strip() and "".join(deltas) == text
    assert final.choices[0].finish_reason in ("stop", "length")


def test_embeddings_one_vector_per_input(smol: openai.OpenAI) -> None:
    inputs = ["hello world", "The capital of France is Paris.", "hello world"]
    out = smol.embeddings.create(model=MODEL, input=inputs)
    assert [d.index for d in out.data] == [0, 1, 2]
    vectors = [d.embedding for d in out.data]
    dims = {len(v) for v in vectors}
    assert len(dims) == 1 and dims.pop() > 100  # one flat vector each, not one per token
    assert all(isinstance(x, float) for x in vectors[1])
    assert vectors[0] == pytest.approx(vectors[2], abs=1e-5)
    assert vectors[0] != pytest.approx(vectors[1], abs=1e-3)
    assert out.usage.prompt_tokens > 0
    again = smol.embeddings.create(model=MODEL, input="hello world").data
    assert len(again) == 1 and again[0].embedding == pytest.approx(vectors[0], abs=1e-5)
    assert math.fsum(x * x for x in vectors[0]) > 0
