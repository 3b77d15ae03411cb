"""The hot path driven through its ASGI interface: refusals that never need a router."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from nebula_gateway.auth import load_keys
from nebula_gateway.config import GatewayConfig
from nebula_gateway.gateway import Gateway

# Nothing listens here: any request that got as far as a router would fail with 503.
NO_ROUTER = "http://127.0.0.1:9"


def scope(path: str, headers: dict[str, str]) -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": path,
            "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}


async def call(gateway: Gateway, path: str, messages: list[dict[str, Any]],
               headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for message in messages:
        queue.put_nowait(message)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return await queue.get()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await gateway(scope(path, headers or {}), receive, send)
    await gateway.pool.close()
    if not sent:
        return 0, {}, b""
    start = sent[0]
    hdrs = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], hdrs, b"".join(m.get("body", b"") for m in sent[1:])


def body(raw: bytes) -> list[dict[str, Any]]:
    return [{"type": "http.request", "body": raw, "more_body": False}]


async def test_malformed_json_is_400_with_request_id() -> None:
    gateway = Gateway(GatewayConfig([NO_ROUTER]))
    status, headers, data = await call(gateway, "/v1/chat/completions", body(b"{nope"),
                                       {"x-request-id": "abc-1"})
    assert status == 400
    assert headers["x-request-id"] == "abc-1"
    assert json.loads(data)["error"]["type"] == "invalid_request_error"


async def test_declared_length_over_limit_is_413_before_reading() -> None:
    gateway = Gateway(GatewayConfig([NO_ROUTER], max_body_bytes=10))
    status, _, data = await call(gateway, "/v1/completions", [],
                                 {"content-length": "11"})
    assert status == 413 and json.loads(data)["error"]["code"] == "request_too_large"


async def test_chunked_body_over_limit_is_413() -> None:
    gateway = Gateway(GatewayConfig([NO_ROUTER], max_body_bytes=10))
    chunks = [{"type": "http.request", "body": b"x" * 6, "more_body": True}] * 2
    status, _, _ = await call(gateway, "/v1/completions", chunks)
    assert status == 413


async def test_slow_body_is_408() -> None:
    gateway = Gateway(GatewayConfig([NO_ROUTER], body_timeout=0.05))
    status, _, data = await call(gateway, "/v1/embeddings",
                                 [{"type": "http.request", "body": b"{", "more_body": True}])
    assert status == 408 and json.loads(data)["error"]["code"] == "body_timeout"


async def test_client_gone_while_sending_body_sends_nothing() -> None:
    gateway = Gateway(GatewayConfig([NO_ROUTER]))
    status, _, _ = await call(gateway, "/v1/embeddings", [
        {"type": "http.request", "body": b"{", "more_body": True},
        {"type": "http.disconnect"}])
    assert status == 0


async def test_keys_are_checked_before_the_body() -> None:
    gateway = Gateway(GatewayConfig([NO_ROUTER], keys=load_keys(None, ["sk-1"])))
    ok = json.dumps({"model": "m", "prompt": "x"}).encode()
    status, _, data = await call(gateway, "/v1/completions", body(ok))
    assert status == 401 and json.loads(data)["error"]["code"] == "missing_api_key"
    status, _, data = await call(gateway, "/v1/completions", body(ok),
                                 {"authorization": "Bearer sk-2"})
    assert status == 401 and json.loads(data)["error"]["code"] == "invalid_api_key"


async def test_no_router_is_503_with_retry_after() -> None:
    gateway = Gateway(GatewayConfig([NO_ROUTER]))
    ok = json.dumps({"model": "m", "prompt": "x"}).encode()
    status, headers, data = await call(gateway, "/v1/completions", body(ok))
    assert status == 503 and headers["retry-after"] == "1"
    assert json.loads(data)["error"]["code"] == "router_unavailable"
