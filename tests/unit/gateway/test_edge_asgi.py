"""The hot path driven through its ASGI interface: refusals that never need a router."""

from __future__ import annotations

import asyncio
import json

from nebula_gateway.auth import load_keys
from nebula_gateway.config import GatewayConfig
from nebula_gateway.gateway import Gateway
from tests.unit.gateway.asgi import NO_ROUTER, body, call, chat, gateway_app, post


async def test_malformed_json_is_400_with_request_id() -> None:
    gateway = Gateway(GatewayConfig([NO_ROUTER]))
    answer = await post(gateway, "/v1/chat/completions", b"{nope", {"x-request-id": "abc-1"})
    assert answer.status == 400
    assert answer.headers["x-request-id"] == "abc-1"
    assert answer.error["type"] == "invalid_request_error"


async def test_declared_length_over_limit_is_413_before_reading() -> None:
    gateway = Gateway(GatewayConfig([NO_ROUTER], max_body_bytes=10))
    answer = await call(gateway, "POST", "/v1/completions", [], {"content-length": "11"})
    assert answer.status == 413 and answer.error["code"] == "request_too_large"


async def test_chunked_body_over_limit_is_413() -> None:
    gateway = Gateway(GatewayConfig([NO_ROUTER], max_body_bytes=10))
    chunks = [{"type": "http.request", "body": b"x" * 6, "more_body": True}] * 2
    assert (await call(gateway, "POST", "/v1/completions", chunks)).status == 413


async def test_slow_body_is_408() -> None:
    gateway = Gateway(GatewayConfig([NO_ROUTER], body_timeout=0.05))
    answer = await call(gateway, "POST", "/v1/embeddings",
                        [{"type": "http.request", "body": b"{", "more_body": True}])
    assert answer.status == 408 and answer.error["code"] == "body_timeout"


async def test_client_gone_while_sending_body_sends_nothing() -> None:
    gateway = Gateway(GatewayConfig([NO_ROUTER]))
    answer = await call(gateway, "POST", "/v1/embeddings", [
        {"type": "http.request", "body": b"{", "more_body": True},
        {"type": "http.disconnect"}])
    assert answer.status == 0


async def test_keys_are_checked_before_the_body() -> None:
    gateway = Gateway(GatewayConfig([NO_ROUTER], keys=load_keys(None, ["sk-1"])))
    ok = {"model": "m", "prompt": "x"}
    answer = await post(gateway, "/v1/completions", ok)
    assert answer.status == 401 and answer.error["code"] == "missing_api_key"
    answer = await post(gateway, "/v1/completions", ok, {"authorization": "Bearer sk-2"})
    assert answer.status == 401 and answer.error["code"] == "invalid_api_key"


async def test_no_router_is_503_with_retry_after_and_no_internal_address() -> None:
    gateway = Gateway(GatewayConfig([NO_ROUTER]))
    answer = await post(gateway, "/v1/completions", {"model": "m", "prompt": "x"})
    await gateway.pool.close()
    assert answer.status == 503 and answer.headers["retry-after"] == "1"
    assert answer.error["code"] == "router_unavailable"
    assert "127.0.0.1" not in answer.body.decode() and ":9" not in answer.body.decode()


# -- limits before the body (issue 20) ----------------------------------------------------

def never_read() -> list[dict[str, object]]:
    """A body the gateway must not wait for: its one message never arrives."""
    return []


async def test_rate_limit_is_checked_before_the_body_is_read() -> None:
    keys = load_keys("", ["sk-1"])
    gateway = Gateway(GatewayConfig([NO_ROUTER], keys=keys, default_rpm=1, body_timeout=5))
    auth = {"authorization": "Bearer sk-1"}
    first = await post(gateway, "/v1/completions", b"{nope", auth)  # takes the one token
    assert first.status == 400
    # over its limit: refused at once, its body never read (it never comes)
    answer = await call(gateway, "POST", "/v1/completions", never_read(), auth)
    assert answer.status == 429 and answer.error["code"] == "rate_limit_exceeded"


async def test_concurrency_slot_is_taken_before_the_body_and_freed_after() -> None:
    gateway = Gateway(GatewayConfig([NO_ROUTER], keys=load_keys("", ["sk-1"]),
                                    default_concurrency=1, body_timeout=0.2))
    auth = {"authorization": "Bearer sk-1"}
    slow = [{"type": "http.request", "body": b"{", "more_body": True}]
    first = asyncio.ensure_future(call(gateway, "POST", "/v1/completions", slow, auth))
    await asyncio.sleep(0.05)  # (the first holds the slot while its body trickles in)
    second = await call(gateway, "POST", "/v1/completions", never_read(), auth)
    assert second.status == 429 and second.error["code"] == "concurrency_limit_exceeded"
    assert (await first).status == 408
    third = await post(gateway, "/v1/completions", b"{nope", auth)
    assert third.status == 400  # the slot is free again


async def test_anonymous_callers_have_limits_too() -> None:
    gateway = Gateway(GatewayConfig([NO_ROUTER], anonymous_rpm=2))
    statuses = [(await post(gateway, "/v1/completions", b"{nope")).status for _ in range(3)]
    assert statuses == [400, 400, 429]


async def test_requests_over_max_in_flight_get_503_with_retry_after() -> None:
    gateway = Gateway(GatewayConfig([NO_ROUTER], max_in_flight=1, body_timeout=0.2))
    slow = [{"type": "http.request", "body": b"{", "more_body": True}]
    first = asyncio.ensure_future(call(gateway, "POST", "/v1/completions", slow))
    await asyncio.sleep(0.05)
    answer = await call(gateway, "POST", "/v1/completions", never_read())
    assert answer.status == 503 and answer.headers["retry-after"] == "1"
    assert answer.error["code"] == "server_busy"
    assert (await first).status == 408
    assert gateway.in_flight == 0
    assert (await post(gateway, "/v1/completions", b"{nope")).status == 400


# -- client input that yielded a 500 (issue 20) ------------------------------------------

def responses(*items: dict[str, object]) -> dict[str, object]:
    return {"model": "m", "input": list(items)}


BAD_INPUT = [
    (responses({"type": "function_call_output", "call_id": "c", "output": [1]}),
     "input[0].output[0]"),
    (responses({"type": "message", "role": "user",
                "content": [{"type": "input_text", "text": 5}]}), "input[0].content[0].text"),
    (responses({"type": "message", "role": "user",
                "content": [{"type": "refusal", "refusal": ["x"]}]}),
     "input[0].content[0].refusal"),
    (responses({"role": "user", "content": [{"type": "input_image", "image_url": 7}]}),
     "input[0].content[0].image_url"),
]


async def test_input_that_crashed_the_translation_is_a_400() -> None:
    gateway = Gateway(GatewayConfig([NO_ROUTER]))
    for payload, param in BAD_INPUT:
        answer = await post(gateway, "/v1/responses", payload)
        assert answer.status == 400, (payload, answer.body)
        assert answer.error["param"] == param, answer.error
        assert answer.error["type"] == "invalid_request_error"


async def test_deeply_nested_json_is_a_400() -> None:
    gateway = Gateway(GatewayConfig([NO_ROUTER]))
    deep = b'{"model": "m", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    answer = await post(gateway, "/v1/chat/completions", deep)
    assert answer.status == 400 and answer.error["code"] == "invalid_json"


async def test_doubled_slashes_are_no_route_not_a_500() -> None:
    async with gateway_app(GatewayConfig([NO_ROUTER])) as app:
        for path in ("//v1/chat/completions", "/v1//chat/completions", "//v1/models"):
            method = "GET" if path.endswith("models") else "POST"
            answer = await call(app, method, path, body(json.dumps(chat()).encode()))
            assert answer.status == 404, (path, answer.body[:200])
            assert answer.error["code"] == "not_found"


# -- what a caller without a key sees (issue 20) -----------------------------------------

async def test_metrics_and_openapi_need_a_key_when_keys_are_configured() -> None:
    config = GatewayConfig([NO_ROUTER], keys=load_keys("", ["sk-1"]))
    async with gateway_app(config) as app:
        for path in ("/metrics", "/openapi.json"):
            answer = await call(app, "GET", path)
            assert answer.status == 401 and answer.error["code"] == "missing_api_key", path
            wrong = await call(app, "GET", path, headers={"authorization": "Bearer sk-2"})
            assert wrong.status == 401, path
            good = await call(app, "GET", path, headers={"authorization": "Bearer sk-1"})
            assert good.status == 200, path
        for path in ("/healthz", "/readyz"):  # probes stay open
            assert (await call(app, "GET", path)).status in (200, 503)
    async with gateway_app(GatewayConfig([NO_ROUTER])) as app:  # no keys: nothing to show
        assert (await call(app, "GET", "/metrics")).status == 200
