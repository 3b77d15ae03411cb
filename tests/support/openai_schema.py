"""OpenAI's own API description (tests/schemas/openai-openapi.yaml, MIT, licence beside it),
loaded once per session, and a checker that validates objects against its components
with refs resolved."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

REPO = Path(__file__).resolve().parents[2]
SCHEMA_PATHS = tuple(Path(p) for p in (
    os.environ.get("NEBULA_OPENAI_SCHEMA", ""),
    REPO / "tests" / "schemas" / "openai-openapi.yaml",
) if str(p))
URI = "urn:openai-openapi"


def _nullable_to_31(node: Any) -> Any:
    """Rewrite OpenAPI 3.0 ``nullable: true`` (still used in places) as JSON Schema null."""
    if isinstance(node, list):
        return [_nullable_to_31(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _nullable_to_31(v) for k, v in node.items()}
    if out.pop("nullable", False):
        if isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
            if "enum" in out:
                out["enum"] = [*out["enum"], None]
        else:
            return {"anyOf": [out, {"type": "null"}]}
    return out


@cache
def load_spec() -> dict[str, Any]:
    """The parsed description; a missing file is an error, not a skip."""
    for path in SCHEMA_PATHS:
        if path.is_file():
            loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
            with open(path, encoding="utf-8") as handle:
                return _nullable_to_31(yaml.load(handle, Loader=loader))
    raise FileNotFoundError(f"OpenAI API description not found in {SCHEMA_PATHS}; "
                            "set NEBULA_OPENAI_SCHEMA")


class SchemaChecker:
    """``check(name, value)`` against ``components.schemas[name]``; events by their type."""

    def __init__(self, spec: dict[str, Any]):
        self.spec = spec
        resource = Resource(contents=spec, specification=DRAFT202012)
        self.registry = Registry().with_resource(URI, resource)
        self.by_event_type: dict[str, str] = {}
        for ref in spec["components"]["schemas"]["ResponseStreamEvent"]["anyOf"]:
            name = ref["$ref"].rsplit("/", 1)[-1]
            enum = (spec["components"]["schemas"][name].get("properties", {})
                    .get("type", {}).get("enum") or [])
            for value in enum:
                self.by_event_type[value] = name
        self._validator = cache(self._make)

    def _make(self, name: str) -> Draft202012Validator:
        assert name in self.spec["components"]["schemas"], f"no schema named {name}"
        return Draft202012Validator({"$ref": f"{URI}#/components/schemas/{name}"},
                                    registry=self.registry)

    def errors(self, name: str, value: Any) -> list[str]:
        return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}"
                for e in self._validator(name).iter_errors(value)]

    def check(self, name: str, value: Any) -> None:
        errors = self.errors(name, value)
        assert not errors, f"{name} does not validate: {errors[:5]}"

    def check_event(self, event: dict[str, Any]) -> None:
        """The event's own schema (by its type) and the ResponseStreamEvent union."""
        name = self.by_event_type.get(event["type"])
        assert name, f"unknown Responses event type {event['type']!r}"
        self.check(name, event)
        self.check("ResponseStreamEvent", event)


@cache
def checker() -> SchemaChecker:
    return SchemaChecker(load_spec())
