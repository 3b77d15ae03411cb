"""Wire shapes of the sim, checked against OpenAI's published OpenAPI schema."""

from __future__ import annotations

import base64
import json
import math
import struct
from collections.abc import Callable
from typing import Any

import pytest

from nebula_common.openai_errors import error_body
from nebula_node.sim.protocol import (
    DONE_FRAME,
    BadRequest,
    ChatFormat,
    CompletionFormat,
    ResponsesFormat,
    Usage,
    chat_prompt,
    completion_prompt,
    embedding_inputs,
    embeddings_response,
    models_list,
    responses_prompt,
)
from nebula_node.sim.tokens import generate_tokens

Validate = Callable[[str, Any], None]
TOKENS = generate_tokens("prompt", 5)
TEXT = "".join(TOKENS)
USAGE = Usage(prompt_tokens=7, completion_tokens=5, cached_tokens=4)

RESPONSE_EVENT_SCHEMAS = {
    "response.created": "ResponseCreatedEvent",
    "response.in_progress": "ResponseInProgressEvent",
    "response.output_item.added": "ResponseOutputItemAddedEvent",
    "response.content_part.added": "ResponseContentPartAddedEvent",
    "response.output_text.delta": "ResponseTextDeltaEvent",
    "response.output_text.done": "ResponseTextDoneEvent",
    "response.content_part.done": "ResponseContentPartDoneEvent",
    "response.output_item.done": "ResponseOutputItemDoneEvent",
    "response.completed": "ResponseCompletedEvent",
}


def parse_sse(frames: list[bytes]) -> list[tuple[str | None, Any]]:
    """(event name, decoded data) per frame; ``[DONE]`` stays a string."""
    out = []
    for frame in frames:
        assert frame.endswith(b"\n\n"), frame
        event, data = None, None
        for line in frame.decode().strip("\n").split("\n"):
            field, _, value = line.partition(": ")
            if field == "event":
                event = value
            elif field == "data":
                data = value if value == "[DONE]" else json.loads(value)
        out.append((event, data))
    return out


# -- chat ----------------------------------------------------------------------------------
def test_chat_full_response_matches_schema(openai_validate: Validate) -> None:
    body = ChatFormat("m", {}).full(TEXT, "length", USAGE)
    openai_validate("CreateChatCompletionResponse", body)
    assert body["choices"][0]["message"]["content"] == TEXT
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12,
                             "prompt_tokens_details": {"cached_tokens": 4}}


def test_chat_stream_chunks_match_schema_and_add_up(openai_validate: Validate) -> None:
    fmt = ChatFormat("m", {"stream_options": {"include_usage": True}})
    frames = fmt.all_frames(TOKENS, "stop", USAGE)
    assert frames[-1] == DONE_FRAME
    events = parse_sse(frames[:-1])
    for _, chunk in events:
        openai_validate("CreateChatCompletionStreamResponse", chunk)
        assert chunk["id"] == fmt.id
    chunks = [c for _, c in events]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == TEXT
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == USAGE.openai()
    # Same usage as the non-stream answer.
    assert fmt.full(TEXT, "stop", USAGE)["usage"] == chunks[-1]["usage"]


def test_chat_stream_without_include_usage_has_no_usage_chunk() -> None:
    chunks = [c for _, c in parse_sse(ChatFormat("m", {}).all_frames(TOKENS, "stop", USAGE))]
    assert chunks[-1] == "[DONE]"
    assert all("usage" not in c for c in chunks[:-1])


def test_token_with_quotes_and_unicode_is_valid_json() -> None:
    fmt = ChatFormat("m", {})
    (_, chunk), = parse_sse([fmt.token_frame('a "quoted"\n\u00e9 token', 0)])
    assert chunk["choices"][0]["delta"]["content"] == 'a "quoted"\n\u00e9 token'


# -- completions ---------------------------------------------------------------------------
def test_completion_full_and_stream_match_schema(openai_validate: Validate) -> None:
    fmt = CompletionFormat("m", {"stream_options": {"include_usage": True}})
    full = fmt.full(TEXT, "length", USAGE)
    openai_validate("CreateCompletionResponse", full)
    assert full["choices"][0]["text"] == TEXT
    chunks = [c for _, c in parse_sse(fmt.all_frames(TOKENS, "length", USAGE))]
    assert chunks[-1] == "[DONE]"
    for chunk in chunks[:-2]:
        # The spec shares one shape for both, but OpenAI (and vLLM) stream a null
        # finish_reason until the last chunk; the schema has no null there.
        if chunk["choices"][0]["finish_reason"] is None:
            chunk = json.loads(json.dumps(chunk))
            chunk["choices"][0]["finish_reason"] = "stop"
        openai_validate("CreateCompletionResponse", chunk)
    assert "".join(c["choices"][0]["text"] for c in chunks[:-2]) == TEXT
    assert chunks[-3]["choices"][0]["finish_reason"] == "length"
    assert chunks[-2]["usage"] == full["usage"]


# -- responses -----------------------------------------------------------------------------
def test_responses_full_object_matches_schema(openai_validate: Validate) -> None:
    fmt = ResponsesFormat("m", {"instructions": "be brief", "max_output_tokens": 5})
    body = fmt.full(TEXT, "length", USAGE)
    openai_validate("Response", body)
    assert body["status"] == "completed"
    assert body["output"][0]["content"][0] == {"type": "output_text", "text": TEXT,
                                               "annotations": [], "logprobs": []}
    assert body["usage"]["input_tokens"] == 7 and body["usage"]["output_tokens"] == 5
    assert body["usage"]["total_tokens"] == 12
    assert body["usage"]["input_tokens_details"]["cached_tokens"] == 4


def test_responses_event_sequence(openai_validate: Validate) -> None:
    fmt = ResponsesFormat("m", {})
    events = parse_sse(fmt.all_frames(TOKENS, "stop", USAGE))
    types = [data["type"] for _, data in events]
    assert types == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", *["response.output_text.delta"] * len(TOKENS),
        "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.completed"]
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    for event, data in events:
        assert event == data["type"]
        openai_validate(RESPONSE_EVENT_SCHEMAS[event], data)
    openai_validate("ResponseStreamEvent", events[4][1])
    assert "".join(d["delta"] for e, d in events if e == "response.output_text.delta") == TEXT
    completed = events[-1][1]["response"]
    assert completed["status"] == "completed"
    assert completed["usage"] == fmt.full(TEXT, "stop", USAGE)["usage"]
    assert events[0][1]["response"]["status"] == "in_progress"


# -- other shapes --------------------------------------------------------------------------
def test_embeddings_float_and_base64(openai_validate: Validate) -> None:
    body = embeddings_response("m", ["a", "b"], 8, "float", 2)
    openai_validate("CreateEmbeddingResponse", body)
    vec_a = body["data"][0]["embedding"]
    assert len(vec_a) == 8 and math.isclose(sum(v * v for v in vec_a), 1.0)
    assert vec_a != body["data"][1]["embedding"]
    assert embeddings_response("m", ["a"], 8, "float", 1)["data"][0]["embedding"] == vec_a
    b64 = embeddings_response("m", ["a"], 8, "base64", 1)["data"][0]["embedding"]
    decoded = struct.unpack("<8f", base64.b64decode(b64))
    assert all(math.isclose(x, y, rel_tol=1e-6) for x, y in zip(decoded, vec_a, strict=True))


def test_models_list_and_error_match_schema(openai_validate: Validate) -> None:
    body = models_list(["m", "alias"], 4096, 1700000000)
    openai_validate("ListModelsResponse", body)
    assert [m["id"] for m in body["data"]] == ["m", "alias"]
    assert body["data"][0]["owned_by"] == "nebula-sim"
    assert body["data"][0]["max_model_len"] == 4096
    openai_validate("ErrorResponse", error_body(500, "boom", code="sim_fault"))


# -- prompt flattening ---------------------------------------------------------------------
def test_chat_prompt_flattens_roles_and_parts() -> None:
    prompt = chat_prompt({"messages": [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text",
                                                                     "text": "b"}]},
        {"role": "assistant", "content": None}]})
    assert prompt == "system: sys\nuser: ab\nassistant: \n"


def test_completion_prompt_variants() -> None:
    assert completion_prompt({"prompt": "x"}) == "x"
    assert completion_prompt({"prompt": ["x", "y"]}) == "x\ny"
    assert completion_prompt({"prompt": [1, 2]}) == "1 2"
    assert completion_prompt({"prompt": [[1], [2, 3]]}) == "1\n2 3"


def test_responses_prompt_variants() -> None:
    assert responses_prompt({"input": "hi", "instructions": "be nice"}) == \
        "system: be nice\nuser: hi\n"
    assert responses_prompt({"input": [
        {"role": "user", "content": [{"type": "input_text", "text": "q"}]},
        {"type": "function_call_output", "call_id": "c", "output": "42"}]}) == \
        "user: q\ntool: 42\n"


def test_embedding_inputs_variants() -> None:
    assert embedding_inputs({"input": "a"}) == ["a"]
    assert embedding_inputs({"input": ["a", "b"]}) == ["a", "b"]
    assert embedding_inputs({"input": [1, 2]}) == ["1 2"]
    assert embedding_inputs({"input": [[1], [2]]}) == ["1", "2"]


@pytest.mark.parametrize("fn, body", [
    (chat_prompt, {}), (chat_prompt, {"messages": []}), (chat_prompt, {"messages": ["x"]}),
    (completion_prompt, {"prompt": 3}), (completion_prompt, {"prompt": []}),
    (responses_prompt, {}), (embedding_inputs, {"input": [1, "a"]}),
])
def test_bad_bodies_are_rejected(fn: Callable[[dict[str, Any]], Any],
                                 body: dict[str, Any]) -> None:
    with pytest.raises(BadRequest):
        fn(body)


def test_the_schema_check_rejects_a_wrong_shape(openai_validate: Validate) -> None:
    body = ChatFormat("m", {}).full(TEXT, "stop", USAGE)
    del body["choices"][0]["message"]
    with pytest.raises(AssertionError):
        openai_validate("CreateChatCompletionResponse", body)
