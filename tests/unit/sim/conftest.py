"""Shared fixtures for the sim unit tests: the OpenAI OpenAPI schema as validators."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[3]
SCHEMA_CANDIDATES = [
    os.environ.get("NEBULA_OPENAI_SCHEMA", ""),
    str(REPO / "schemas" / "openai-openapi.yaml"),
    str(REPO.parent / "shared" / "schemas" / "openai-openapi.yaml"),
]


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


@pytest.fixture(scope="session")
def openai_validate() -> Callable[[str, Any], None]:
    """``validate(schema_name, instance)`` against components.schemas of OpenAI's spec."""
    path = next((p for p in SCHEMA_CANDIDATES if p and Path(p).is_file()), None)
    if path is None:
        pytest.skip("OpenAI OpenAPI schema not found (set NEBULA_OPENAI_SCHEMA)")
    import yaml
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path, encoding="utf-8") as fh:
        doc = _nullable_to_31(yaml.load(fh, Loader=loader))
    registry = Registry().with_resource(
        "urn:openai", Resource.from_contents(doc, default_specification=DRAFT202012))
    validators: dict[str, Draft202012Validator] = {}

    def validate(name: str, instance: Any) -> None:
        if name not in validators:
            assert name in doc["components"]["schemas"], name
            validators[name] = Draft202012Validator(
                {"$ref": f"urn:openai#/components/schemas/{name}"}, registry=registry)
        errors = sorted(validators[name].iter_errors(instance), key=lambda e: e.path)
        assert not errors, f"{name}: " + "; ".join(
            f"{list(e.absolute_path)}: {e.message[:300]}" for e in errors[:5])

    return validate
