"""The contract of vLLM's /v1/rerank (/rerank) and /v1/score: validation's one-line 400s,
the same verdict as the published schema (the generated cases are test_contract's)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from nebula_gateway.openapi import openapi_document
from nebula_gateway.validation import ValidationError, validate
from tests.unit.gateway.test_contract import agree

RERANK = {"model": "m", "query": "q", "documents": ["a", "b"]}
SCORE = {"model": "m", "text_1": "a", "text_2": ["b", "c"]}

CASES: list[tuple[str, dict[str, Any], str | None, str]] = [
    ("/v1/rerank", RERANK, None, ""),
    ("/rerank", {**RERANK, "top_n": 1, "truncate_prompt_tokens": -1}, None, ""),
    ("/v1/rerank", {"model": "m", "documents": ["a"]}, "query", "you must provide a query"),
    ("/v1/rerank", {**RERANK, "documents": []}, "documents", "at least one document"),
    ("/v1/rerank", {**RERANK, "documents": ["a", 3]}, "documents[1]", "must be a string"),
    ("/v1/rerank", {**RERANK, "top_n": -1}, "top_n", "top_n must be"),
    ("/v1/score", SCORE, None, ""),
    ("/v1/score", {**SCORE, "text_1": ["a", "b"]}, None, ""),
    ("/v1/score", {"model": "m", "text_1": "a"}, "text_2", "you must provide a text_2"),
    ("/v1/score", {**SCORE, "text_2": []}, "text_2", "non-empty array of strings"),
    ("/v1/score", {**SCORE, "text_1": 5}, "text_1", "must be a string or"),
]


@pytest.mark.parametrize(("path", "body", "param", "text"), CASES,
                         ids=[f"{i}-{c[0][1:].replace('/', '-')}" for i, c in enumerate(CASES)])
def test_pooling_requests(path: str, body: dict[str, Any], param: str | None,
                          text: str) -> None:
    assert agree(path, body) is (param is None)
    if param is None:
        assert validate(path, json.dumps(body).encode(), 1 << 20) == body
        return
    with pytest.raises(ValidationError) as err:
        validate(path, json.dumps(body).encode(), 1 << 20)
    assert err.value.param == param and text in str(err.value), str(err.value)


def test_openapi_lists_them() -> None:
    doc = openapi_document()
    for path, schema in (("/v1/rerank", "RerankRequest"), ("/rerank", "RerankRequest"),
                         ("/v1/score", "ScoreRequest")):
        ref = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        assert ref["schema"]["$ref"].endswith("/" + schema)
    assert doc["components"]["schemas"]["RerankRequest"]["required"] == [
        "model", "query", "documents"]
