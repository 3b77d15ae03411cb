"""Small pure pieces of the gateway: request ids, SSE framing, the OpenAPI document."""

from __future__ import annotations

import json
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from nebula_gateway.openapi import openapi_document
from nebula_gateway.outcome import request_id_from
from nebula_gateway.passthrough import usage_of
from nebula_gateway.sse import SseFrames, frame_data
from nebula_gateway.validation import validate


def test_request_id_sane_or_generated() -> None:
    assert request_id_from("abc-123_x.y:z") == "abc-123_x.y:z"
    for bad in ("", "a b", "x" * 200, "<script>", "a\nb"):
        generated = request_id_from(bad)
        assert generated != bad and len(generated) == 32
    assert len(request_id_from(None)) == 32


def test_sse_frames_recut_on_boundaries_without_changing_bytes() -> None:
    stream = b'data: {"a":1}\n\ndata: {"b":2}\n\nevent: x\ndata: [DONE]\n\n'
    for size in (1, 3, 7, 100):
        frames = SseFrames()
        out = b""
        for i in range(0, len(stream), size):
            block = frames.push(stream[i:i + size])
            assert block == b"" or block.endswith(b"\n\n")
            out += block
        out += frames.rest()
        assert out == stream
    assert frame_data(b"event: x\ndata: [DONE]") == b"[DONE]"
    assert frame_data(b": comment") is None


def test_openapi_document_is_valid_and_describes_the_endpoints() -> None:
    validate_spec = pytest.importorskip("openapi_spec_validator").validate
    doc = openapi_document()
    validate_spec(doc)
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings",
                 "/v1/responses", "/v1/models", "/v1/models/{model}"):
        assert path in doc["paths"]
    assert "400" in doc["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert "404" in doc["paths"]["/v1/models/{model}"]["get"]["responses"]


def _validator(doc: dict[str, Any], name: str) -> Draft202012Validator:
    registry = Registry().with_resource("urn:doc", Resource(doc, DRAFT202012))
    return Draft202012Validator({"$ref": f"urn:doc#/components/schemas/{name}"},
                                registry=registry)


def test_openapi_examples_accepted_by_validation() -> None:
    """What the document calls valid, the gateway's validation accepts, and the reverse."""
    doc = openapi_document()
    names = {"/v1/chat/completions": "CreateChatCompletionRequest",
             "/v1/completions": "CreateCompletionRequest",
             "/v1/embeddings": "CreateEmbeddingRequest", "/v1/responses": "CreateResponse"}
    examples = {
        "/v1/chat/completions": {"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                 "temperature": 2, "top_p": 0, "max_tokens": 1},
        "/v1/completions": {"model": "m", "prompt": ["a"]},
        "/v1/embeddings": {"model": "m", "input": [1, 2]},
        "/v1/responses": {"model": "m", "input": [{"role": "user", "content": "hi"}]},
    }
    for path, body in examples.items():
        assert not list(_validator(doc, names[path]).iter_errors(body))
        validate(path, json.dumps(body).encode(), 1 << 20)
        missing_model = {k: v for k, v in body.items() if k != "model"}
        assert list(_validator(doc, names[path]).iter_errors(missing_model))


def test_usage_is_cut_out_without_decoding_the_payload() -> None:
    usage = {"prompt_tokens": 3, "total_tokens": 3,
             "prompt_tokens_details": {"cached_tokens": 1}}
    body = {"object": "list", "data": [{"embedding": [0.1] * 50}],
            "note": 'the text "usage": {"prompt_tokens": 99}', "usage": usage}
    assert usage_of(json.dumps(body).encode()) == usage
    assert usage_of(json.dumps(body, indent=2).encode()) == usage
    assert usage_of(b'{"choices": []}') is None
    assert usage_of(b'{"usage": null}') is None
    assert usage_of(b"not json") is None
