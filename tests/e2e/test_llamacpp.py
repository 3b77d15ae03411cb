"""Real tokens from a real model: SmolLM2-135M on llama.cpp, through gateway and router."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.support.smollm2 import MODEL, smollm2_cluster

pytestmark = pytest.mark.llamacpp



@pytest.fixture(scope="module")
def smol(tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    with smollm2_cluster(tmp_path_factory.mktemp("llamacpp") / "run") as gateway:
        yield openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0,
                            timeout=120)


def test_chat_answer_from_the_real_model(smol: openai.OpenAI) -> None:
    reply = smol.chat.completions.create(
        model=MODEL, temperature=0, max_tokens=24,
        messages=[{"role": "user", "content": "What is the capital of France?"}])
    text = reply.choices[0].message.content
    assert text and text.strip()
    assert reply.usage.prompt_tokens > 5 and reply.usage.completion_tokens > 0


def test_streamed_chat_from_the_real_model(smol: openai.OpenAI) -> None:
    chunks = list(smol.chat.completions.create(
        model=MODEL, temperature=0, max_tokens=16, stream=True,
        messages=[{"role": "user", "content": "Count from one to five."}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()


def test_responses_are_translated_for_llamacpp(smol: openai.OpenAI) -> None:
    """llama.cpp has no /v1/responses: the gateway translates to chat completions and back."""
    response = smol.responses.create(model=MODEL, input="Say hi.", max_output_tokens=48,
                                     instructions="You are terse.", temperature=0)
    # A reply cut by max_output_tokens is "incomplete", as OpenAI reports it.
    assert response.status in ("completed", "incomplete") and response.output_text.strip()
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0

    events = list(smol.responses.create(model=MODEL, input="Say hi.", max_output_tokens=48,
                                        temperature=0, stream=True))
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert "response.output_text.delta" in types
    assert types[-1] in ("response.completed", "response.incomplete")
    seq = [e.sequence_number for e in events]
    assert seq == sorted(set(seq))
    final = events[-1].response
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert final.output_text == deltas
    # llama-cpp-python's server sends no usage in streams (no stream_options support), and
    # the gateway reports only the engine's own counts, never an estimate.
    assert final.usage is None


def test_embeddings_on_a_llamacpp_model_without_them_is_a_400(smol: openai.OpenAI) -> None:
    """The node declares what llama.cpp was started with (no ``--embedding True`` here): the
    gateway answers 400 itself instead of a 500 from the replica that would count against it."""
    with pytest.raises(openai.BadRequestError) as err:
        smol.embeddings.create(model=MODEL, input=["hello"])
    body = err.value.body
    assert isinstance(body, dict) and body["code"] == "model_not_supported", body
    assert "does not support embeddings" in body["message"] and "llamacpp" in body["message"]
    assert smol.chat.completions.create(  # and the replica still serves what it can
        model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "Hi"}]).choices
