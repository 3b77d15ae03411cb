"""Shared fixtures for the gateway's unit tests: the OpenAI schema, loaded once, and a
checker that validates objects against its components (refs resolved in the document)."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SCHEMA_PATHS = (
    Path(__file__).resolve().parents[3].parent / "shared" / "schemas" / "openai-openapi.yaml",
    Path("/work/shared/schemas/openai-openapi.yaml"),
)


@pytest.fixture(scope="session")
def openai_spec() -> dict[str, Any]:
    for path in SCHEMA_PATHS:
        if path.exists():
            loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
            with open(path, encoding="utf-8") as handle:
                return yaml.load(handle, Loader=loader)
    pytest.skip("OpenAI OpenAPI description not found (../shared/schemas)")


URI = "urn:openai-openapi"



class SchemaChecker:
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


@pytest.fixture(scope="session")
def checker(openai_spec: dict[str, Any]) -> SchemaChecker:
    return SchemaChecker(openai_spec)
