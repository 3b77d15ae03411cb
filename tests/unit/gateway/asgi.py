"""Driving the gateway in process: ASGI calls, and a scripted router to send them to."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from nebula_gateway.app import GatewayApp, create_app
from nebula_gateway.config import GatewayConfig
from nebula_gateway.gateway import Gateway

NO_ROUTER = "http://127.0.0.1:9"
"""Nothing listens here: any request that got as far as a router fails with 503."""


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> dict[str, Any]:
        error: dict[str, Any] = self.json()["error"]
        return error


def scope(method: str, path: str, headers: dict[str, str], query: bytes = b"") -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "raw_path": path.encode(),
            "query_string": query, "root_path": "", "scheme": "http", "http_version": "1.1",
            "server": ("127.0.0.1", 8081), "client": ("127.0.0.1", 50000),
            "asgi": {"version": "3.0"}, "extensions": {},
            "headers": [(k.lower().encode(), v.encode())
                        for k, v in {"host": "gw", **headers}.items()]}


def body(raw: bytes) -> list[dict[str, Any]]:
    return [{"type": "http.request", "body": raw, "more_body": False}]


async def call(app: Gateway | GatewayApp, method: str, path: str,
               messages: list[dict[str, Any]] | None = None,
               headers: dict[str, str] | None = None, query: bytes = b"") -> Answer:
    """One request through ``app``; status 0 when nothing was sent back."""
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for message in messages if messages is not None else body(b""):
        queue.put_nowait(message)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return await queue.get()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope(method, path, headers or {}, query), receive, send)
    if not sent:
        return Answer(0, {}, b"")
    start = sent[0]
    hdrs = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    return Answer(start["status"], hdrs, b"".join(m.get("body", b"") for m in sent[1:]))


async def post(app: Gateway | GatewayApp, path: str, payload: Any,
               headers: dict[str, str] | None = None) -> Answer:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return await call(app, "POST", path, body(raw), headers)


def chat(model: str = "m", content: Any = "hi") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}]}


Handler = Callable[[web.Request], Any]


@dataclass
class FakeRouter:
    """A router on a loopback port: lists ``models``, records what it was sent and answers
    POSTs with ``answer`` (a handler; by default a small chat completion)."""

    models: list[dict[str, Any]] = field(default_factory=lambda: [
        {"id": "m", "nebula": {"model_uid": "m-uid", "engine": "sim"}}])
    models_status: int = 200
    answer: Handler | None = None
    seen: list[web.Request] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    url: str = ""

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": self.models},
                                 status=self.models_status)

    async def _post(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(request)
        self.bodies.append(await request.read())
        if self.answer is not None:
            result: web.StreamResponse = await self.answer(request)
            return result
        return web.json_response(
            {"id": "c", "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "ok"},
                 "finish_reason": "stop"}],
             "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}},
            headers={"x-nebula-replica": "m-uid/r0"})

    @asynccontextmanager
    async def running(self) -> AsyncIterator[FakeRouter]:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/{tail:.*}", self._post)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        try:
            yield self
        finally:
            await runner.cleanup()


@asynccontextmanager
async def gateway_app(config: GatewayConfig) -> AsyncIterator[GatewayApp]:
    """The whole ASGI app (hot path and Quart), its router pool closed afterwards."""
    app = create_app(config)
    try:
        yield app
    finally:
        await app.gateway.pool.close()
