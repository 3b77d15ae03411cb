"""Property-based requests from the gateway's own /openapi.json (schemathesis + hypothesis).

Bounded: at most ``MAX_EXAMPLES`` cases per operation and generation mode, each
answered within ``CALL_TIMEOUT``. Whatever is sent (schema-valid or not, for a
made-up model or for the real one), the gateway never answers 5xx, never hangs,
answers errors in OpenAI's shape, and stays healthy.

(schemathesis' pytest plugin cannot take a live URL from a fixture with this
pytest; the operations are driven with ``hypothesis.given`` inside the test.)
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.config import CacheConfig, SchemathesisConfig
from schemathesis.generation import GenerationMode

from devtools.cluster import http_get
from tests.edge.conftest import MODEL, Edge

MAX_EXAMPLES = 50
CALL_TIMEOUT = 15.0
SKIP_PATHS = {"/metrics", "/readyz"}  # Prometheus text; 503 by design while routers start
TOKEN_LIMITS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def operations(edge: Edge) -> list[Any]:
    # No crash cache: schemathesis would otherwise write .schemathesis/ into the repo.
    config = SchemathesisConfig(cache=CacheConfig(enabled=False))
    schema = schemathesis.openapi.from_url(edge.gateway_url + "/openapi.json", config=config)
    ops = [result.ok() for result in schema.get_all_operations()]
    return [op for op in ops if op.path not in SKIP_PATHS]


def aim_at_real_model(case: Any) -> None:
    """Send a generated body to the served model with a small token budget (reaches the sim).

    ``dimensions`` is capped too: an absurd value (hypothesis found 4450812415) makes
    the sim build a vector of that many floats (event loop blocked, then out of
    memory on a shared machine); test_raw_http.test_absurd_embedding_dimensions
    asserts the refusal on its own, with a value that cannot exhaust memory.
    """
    if isinstance(case.body, dict):
        case.body["model"] = MODEL
        for name, cap in (*((n, 16) for n in TOKEN_LIMITS), ("dimensions", 256)):
            if isinstance(case.body.get(name), int) and not isinstance(case.body[name], bool):
                case.body[name] = max(1, min(case.body[name], cap))


def check(edge: Edge, case: Any, seen: dict[int, int]) -> None:
    response = case.call(base_url=edge.gateway_url, timeout=CALL_TIMEOUT)
    seen[response.status_code] = seen.get(response.status_code, 0) + 1
    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path} -> {response.status_code}: "
        f"{response.text[:300]}\nbody: {json.dumps(case.body, default=str)[:500]}")
    assert float(response.elapsed) < CALL_TIMEOUT
    if response.status_code >= 400:
        body = json.loads(response.content)
        assert isinstance(body["error"]["message"], str), body


@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode,aimed", [
    (GenerationMode.POSITIVE, False), (GenerationMode.POSITIVE, True),
    (GenerationMode.NEGATIVE, False), (GenerationMode.NEGATIVE, True),
], ids=["positive", "positive-real-model", "negative", "negative-real-model"])
def test_gateway_never_answers_5xx(edge: Edge, mode: GenerationMode, aimed: bool) -> None:
    seen: dict[int, int] = {}
    ran = 0
    for op in operations(edge):
        if aimed and op.method.upper() != "POST":
            continue

        @given(case=op.as_strategy(generation_mode=mode))
        @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case: Any) -> None:
            if aimed:
                aim_at_real_model(case)
            check(edge, case, seen)

        try:
            run()
        except Unsatisfiable:
            continue  # no invalid request exists for it (negative mode, no parameters)
        ran += 1
    assert ran, "no operation in /openapi.json"
    print(f"\n[schemathesis {schemathesis.__version__}] {mode.value} aimed={aimed}: "
          f"statuses {dict(sorted(seen.items()))}")
    status, body = edge.good_request()
    assert status == 200, body
    assert http_get(edge.gateway_url + "/healthz") == (200, b"ok")
