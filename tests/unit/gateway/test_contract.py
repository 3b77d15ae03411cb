"""One request contract: what ``/openapi.json`` publishes is exactly what validation accepts.

Generated requests, both ways: schemathesis draws schema-valid and schema-invalid
bodies from the published document, and each is then mutated at a random place
with a value near the contract's edges (its enum values, its bounds and one past
them, other JSON types, a deleted member). For every body, validation accepts it
if and only if the published schema calls it valid. The published schemas are
also held against OpenAI's own description (tests/schemas/openai-openapi.yaml).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cache
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from schemathesis.config import CacheConfig, SchemathesisConfig
from schemathesis.generation import GenerationMode

from nebula_common.asgi import OPENAI_POST_PATHS
from nebula_gateway.contract import ENDPOINTS, MAX_EMBEDDING_DIMENSIONS
from nebula_gateway.openapi import openapi_document
from nebula_gateway.validation import ValidationError, validate
from tests.support.openai_schema import SchemaChecker

PATHS = sorted(ENDPOINTS)
OPENAI_PATHS = sorted(p for p, e in ENDPOINTS.items() if e.api == "openai")
"""The endpoints of OpenAI's API (the others are Anthropic's and vLLM's)."""
EXAMPLES = 100
"""Per endpoint and generation mode; each example is checked as drawn and mutated."""
GENERATED = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                     suppress_health_check=list(HealthCheck))
LIMIT = 1 << 24  # body size and nesting are the parser's limits, not the schema's


@cache
def document() -> dict[str, Any]:
    return openapi_document()


def request_schema(path: str) -> dict[str, Any]:
    ref = (document()["paths"][path]["post"]["requestBody"]["content"]["application/json"]
           ["schema"]["$ref"])
    schema: dict[str, Any] = document()["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return schema


@cache
def schema_validator(path: str) -> Draft202012Validator:
    return Draft202012Validator(request_schema(path))


def accepted(path: str, body: Any) -> tuple[bool, str | None]:
    """Validation's verdict on a body, and the param it names when it refuses."""
    try:
        validate(path, json.dumps(body).encode(), LIMIT)
    except ValidationError as exc:
        assert exc.status == 400 and exc.message, exc
        return False, exc.param
    return True, None


def agree(path: str, body: Any) -> bool:
    """Assert that validation and the published schema give one verdict; return it."""
    ok, param = accepted(path, body)
    valid = schema_validator(path).is_valid(body)
    errors = [] if valid else [e.message[:200] for e in schema_validator(path).iter_errors(body)]
    assert ok == valid, (
        f"{path}: validation {'accepts' if ok else f'refuses ({param})'}, the published "
        f"schema {'accepts' if valid else f'refuses: {errors[:3]}'}: "
        f"{json.dumps(body)[:600]}")
    return ok


# -- values near the contract's edges ----------------------------------------------------

def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


@cache
def edge_values() -> tuple[Any, ...]:
    """Every enum value and name the schemas know, every bound and one past it, and a
    value of each JSON type (nested ones the variants are told apart by)."""
    values: list[Any] = [None, True, False, 0, 1, -1, 0.5, 1.5, "", "x", [], [1], ["a"],
                         [[1]], [[]], [""], {}, {"type": "function"}, {"type": "text"},
                         {"type": 7}, {"role": "user", "content": "x"}, {"role": "assistant"},
                         ["a"] * 17, [{"type": "text", "text": "x"}], [{}], [None]]
    names: set[str] = set()
    for path in PATHS:
        for node in _walk(request_schema(path)):
            for key in ("const", "enum"):
                if key in node:
                    found = node[key] if key == "enum" else [node[key]]
                    values += [v for v in found if v is not None]
            for key in ("minimum", "maximum", "minLength", "maxLength", "minItems",
                        "maxItems"):
                if key in node:
                    bound = node[key]
                    values += [bound, bound - 1, bound + 1]
                    if key in ("minimum", "maximum"):
                        values += [bound - 0.5, bound + 0.5]
            names.update(node.get("properties", {}))
    values += sorted(names)
    values += [{name: "x"} for name in sorted(names)]
    return tuple(dict.fromkeys(json.dumps(v) for v in values).keys())


def _places(node: Any, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every member and element of a body, as a path of keys and indexes."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*at, key)
            yield from _places(value, (*at, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield (*at, i)
            yield from _places(value, (*at, i))


def _containers(node: Any, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(node, dict):
        yield at
        for key, value in node.items():
            yield from _containers(value, (*at, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _containers(value, (*at, i))


def _get(node: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        node = node[step]
    return node


@st.composite
def mutated(draw: st.DrawFn, body: Any) -> Any:
    """``body`` with one to three changes: a member set to an edge value, deleted, or
    added under a name some schema knows."""
    body = json.loads(json.dumps(body))
    if not isinstance(body, dict):
        return body
    for _ in range(draw(st.integers(1, 3))):
        value = json.loads(draw(st.sampled_from(edge_values())))
        places = list(_places(body))
        action = draw(st.sampled_from(("set", "delete", "add")))
        if action == "add" or not places:
            where = _get(body, draw(st.sampled_from(list(_containers(body)))))
            name = draw(st.sampled_from([v for v in map(json.loads, edge_values())
                                         if isinstance(v, str)] or ["model"]))
            where[name] = value
            continue
        place = draw(st.sampled_from(places))
        parent = _get(body, place[:-1])
        if action == "delete":
            del parent[place[-1]]
        else:
            parent[place[-1]] = value
    return body


# -- generated: schema and validation agree ----------------------------------------------

@cache
def operations() -> dict[str, Any]:
    config = SchemathesisConfig(cache=CacheConfig(enabled=False))
    schema = schemathesis.openapi.from_dict(document(), config=config)
    ops = [result.ok() for result in schema.get_all_operations()]
    return {op.path: op for op in ops if op.method.upper() == "POST"}


def json_body(case: Any) -> Any:
    """The case's body when it is JSON (negative mode also sends other media)."""
    try:
        json.dumps(case.body)
    except (TypeError, ValueError):
        return None
    return case.body


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                         ids=["schema-valid", "schema-invalid"])
def test_generated_requests_get_one_verdict(path: str, mode: GenerationMode) -> None:
    """Drawn from the published schema (valid or not), then mutated: one verdict."""
    verdicts = {"drawn": [0, 0], "mutated": [0, 0]}

    @given(case=operations()[path].as_strategy(generation_mode=mode), data=st.data())
    @GENERATED
    def run(case: Any, data: st.DataObject) -> None:
        body = json_body(case)
        if body is None:
            return
        ok = agree(path, body)
        if mode is GenerationMode.POSITIVE:
            assert ok, f"schema-valid but refused: {json.dumps(body)[:600]}"
        verdicts["drawn"][ok] += 1
        verdicts["mutated"][agree(path, data.draw(mutated(body)))] += 1

    run()
    # exercised both ways, not vacuously: accepted and refused bodies by the dozen
    drawn_refused, drawn_passed = verdicts["drawn"]
    refused, passed = verdicts["mutated"]
    if mode is GenerationMode.POSITIVE:
        assert drawn_passed >= EXAMPLES // 2, verdicts
        assert refused >= EXAMPLES // 10 and passed >= EXAMPLES // 10, verdicts
    else:
        assert drawn_refused >= EXAMPLES // 2, verdicts


def test_the_contract_is_what_is_published() -> None:
    assert set(ENDPOINTS) == OPENAI_POST_PATHS  # every proxied POST path has a contract
    for path, endpoint in ENDPOINTS.items():
        assert request_schema(path) == endpoint.body.schema()
        assert document()["paths"][path]["post"]["operationId"] == endpoint.operation_id


# The drifts the two former sources of truth had, each now one verdict on both sides.
AGREED: list[tuple[str, dict[str, Any], bool]] = [
    ("/v1/embeddings", {"model": "m", "input": "x", "dimensions": MAX_EMBEDDING_DIMENSIONS},
     True),
    ("/v1/embeddings", {"model": "m", "input": "x",
                        "dimensions": MAX_EMBEDDING_DIMENSIONS + 1}, False),
    ("/v1/embeddings", {"model": "m", "input": "x", "encoding_format": None}, True),
    ("/v1/embeddings", {"model": "m", "input": [[1, 2], [3]]}, True),
    ("/v1/embeddings", {"model": "m", "input": [[]]}, False),
    ("/v1/completions", {"model": "m", "prompt": [[1, 2], []]}, True),
    ("/v1/completions", {"model": "m", "prompt": "x", "best_of": 129}, False),
    ("/v1/chat/completions", {"model": "m", "messages": [{"role": "function", "name": "f",
                                                          "content": "42"}]}, True),
    ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "x"}],
                              "tool_choice": {"type": "allowed_tools"}}, True),
    ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "x"}],
                              "tool_choice": {"type": "web"}}, False),
    ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "x"}],
                              "response_format": {"type": "json_schema",
                                                  "json_schema": {"name": "x"}}}, True),
    ("/v1/chat/completions", {"model": "m", "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}]}, True),
    ("/v1/chat/completions", {"model": "m", "messages": [
        {"role": "assistant", "tool_calls": [{"id": "c"}]}]}, True),
    ("/v1/chat/completions", {"model": "m", "messages": [
        {"role": "assistant", "tool_calls": []}]}, False),
    ("/v1/chat/completions", {"model": "m", "messages": [
        {"role": "assistant", "content": None}]}, True),
    ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "x"}],
                              "user": None}, True),
    ("/v1/responses", {"model": "m", "input": [{"type": "function_call", "call_id": "c",
                                                "name": "f", "arguments": "{}"}]}, True),
    ("/v1/responses", {"model": "m", "input": "x", "tools": [{"type": "web_search"}]}, True),
    ("/v1/responses", {"model": "m", "input": "x",
                       "text": {"format": {"type": "json_schema", "schema": {}}}}, True),
    ("/v1/responses", {"model": "m", "input": [{"type": None, "role": "user",
                                                "content": "x"}]}, False),
    ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "x"}],
                              "temperature": 10**400}, False),
    # a required field excused by its sibling may be null; unexcused, it may not
    ("/tokenize", {"model": "m", "prompt": None,
                   "messages": [{"role": "tool", "content": ""}]}, True),
    ("/tokenize", {"model": "m", "prompt": None}, False),
    ("/tokenize", {"model": "m", "prompt": None, "messages": []}, False),
]


@pytest.mark.parametrize(("path", "body", "verdict"), AGREED,
                         ids=[f"{i}-{c[0][4:].replace('/', '-')}" for i, c in enumerate(AGREED)])
def test_former_drifts_have_one_verdict(path: str, body: dict[str, Any], verdict: bool) -> None:
    assert agree(path, body) is verdict


# -- against OpenAI's own description ----------------------------------------------------

def _openai_properties(spec: dict[str, Any], schema: dict[str, Any]) -> set[str]:
    """A request schema's property names in OpenAI's document, through ``allOf``/``$ref``."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        return _openai_properties(spec, spec["components"]["schemas"][name])
    names = set(schema.get("properties", {}))
    for part in schema.get("allOf", []):
        names |= _openai_properties(spec, part)
    return names


@pytest.mark.parametrize("path", OPENAI_PATHS)
def test_published_fields_are_openai_fields(path: str, openai_spec: dict[str, Any]) -> None:
    """Nothing we publish is our invention: each request field is one OpenAI defines."""
    name = ENDPOINTS[path].schema_name
    theirs = _openai_properties(openai_spec, openai_spec["components"]["schemas"][name])
    ours = set(request_schema(path)["properties"])
    assert ours <= theirs, f"{name}: not in OpenAI's description: {sorted(ours - theirs)}"


# Requests as the official SDKs send them: valid under OpenAI's description, and so
# accepted by the gateway and valid under what it publishes.
SDK_REQUESTS: list[tuple[str, dict[str, Any]]] = [
    ("/v1/chat/completions", {
        "model": "gpt-4o", "temperature": 0.2, "top_p": 1, "max_completion_tokens": 64,
        "stream": True, "stream_options": {"include_usage": True}, "seed": 3,
        "messages": [
            {"role": "developer", "content": "Be terse."},
            {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"},
                                         {"type": "image_url",
                                          "image_url": {"url": "https://x/y.png"}}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "weather", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"}],
        "tools": [{"type": "function", "function": {
            "name": "weather", "description": "Current weather", "strict": True,
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
        "tool_choice": {"type": "function", "function": {"name": "weather"}},
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "answer", "schema": {"type": "object"}, "strict": True}}}),
    ("/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": ["Once", "Twice"],
                         "max_tokens": 16, "stop": ["\n"], "logprobs": 2, "echo": False,
                         "n": 2, "best_of": 3, "suffix": "end", "user": "u1"}),
    ("/v1/embeddings", {"model": "text-embedding-3-small", "input": [[1, 2, 3], [4]],
                        "dimensions": 256, "encoding_format": "base64"}),
    ("/v1/responses", {
        "model": "gpt-4o", "instructions": "Be terse.", "store": True, "stream": False,
        "max_output_tokens": 128, "previous_response_id": "resp_1",
        # (text content: OpenAI's own oneOf finds a message with parts valid twice over)
        "input": [{"type": "message", "role": "user", "content": "Hi"},
                  {"type": "function_call", "call_id": "c1", "name": "weather",
                   "arguments": "{}"},
                  {"type": "function_call_output", "call_id": "c1", "output": "18C"}],
        "tools": [{"type": "function", "name": "weather", "strict": True,
                   "parameters": {"type": "object", "properties": {}}},
                  {"type": "web_search_preview"}],
        "tool_choice": "auto",
        "text": {"format": {"type": "json_schema", "name": "answer", "strict": True,
                            "schema": {"type": "object"}}}}),
]


@pytest.mark.parametrize(("path", "body"), SDK_REQUESTS,
                         ids=[p[4:].replace("/", "-") for p, _ in SDK_REQUESTS])
def test_sdk_shaped_requests_pass_both_descriptions(path: str, body: dict[str, Any],
                                                   checker: SchemaChecker) -> None:
    checker.check(ENDPOINTS[path].schema_name, body)  # OpenAI's own description
    assert agree(path, body)
