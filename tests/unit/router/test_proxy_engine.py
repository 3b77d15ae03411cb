"""The proxy against a scripted engine in this process (aiohttp on loopback), no etcd.

What needs exact control of the upstream's bytes and timing: a stream cut in the middle
of a frame, which headers reach an engine, what a failure tells the client and the log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import select
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from nebula_common.records import Endpoint
from nebula_router.policy import Pipeline
from nebula_router.proxy import Proxy
from nebula_router.table import EndpointTable
from tests.unit.router.test_proxy_parts import answer, call, load, make_proxy

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Engine:
    """A loopback HTTP server whose /v1/chat/completions runs ``handler``."""

    url: str = ""
    handler: Handler | None = None
    seen: list[web.Request] = field(default_factory=list)

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(request)
        assert self.handler is not None
        return await self.handler(request)


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    eng = Engine()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", eng.dispatch)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # bound above
    eng.url = f"http://127.0.0.1:{port}"
    try:
        yield eng
    finally:
        await runner.cleanup()


@pytest.fixture
async def proxy(engine: Engine) -> AsyncIterator[Proxy]:
    """Round robin over two replicas of ``m1`` (uid ``m1``), both on ``engine``."""
    p = make_proxy(Pipeline.build("round_robin"), retry_initial_s=0.0, retry_max_s=0.0)
    load(p.table, *(Endpoint("m1", "m1", str(i), "n1", engine.url, "sim") for i in range(2)))
    await p.start()
    try:
        yield p
    finally:
        await p.close()


def chat(**extra: object) -> bytes:
    return json.dumps({"model": "m1", "messages": [], **extra}).encode()


def body_of(sent: list[dict[str, object]]) -> bytes:
    return b"".join(m.get("body", b"") for m in sent[1:])  # type: ignore[misc]


def frames(data: bytes) -> list[bytes]:
    """SSE frames as the OpenAI SDK splits them (on any of the three frame ends)."""
    for end in (b"\r\n\r\n", b"\r\r"):
        data = data.replace(end, b"\n\n")
    return [f for f in data.split(b"\n\n") if f]


@pytest.mark.parametrize("end", [b"\n\n", b"\r\n\r\n"])
async def test_a_frame_cut_midway_is_not_sent_and_the_error_event_is_a_frame(
        engine: Engine, proxy: Proxy, end: bytes) -> None:
    async def cut(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"n": 1}' + end + b'data: {"n": 2, "te')
        assert request.transport is not None
        request.transport.close()  # dies mid-frame: no chunked terminator
        return resp

    engine.handler = cut
    sent = await call(proxy, [chat(stream=True)])
    assert sent[0]["status"] == 200
    got = frames(body_of(sent))
    assert got[0] == b'data: {"n": 1}'
    payloads = [json.loads(f.removeprefix(b"data: ")) for f in got]  # each one whole JSON
    assert payloads[-1]["error"]["code"] == "upstream_stream_error"
    assert len(payloads) == 2


async def test_a_crlf_stream_passes_through_byte_for_byte(engine: Engine, proxy: Proxy) -> None:
    parts = [b'data: {"n": 1}\r\n\r\ndata: {"n"', b': 2}\r\n\r', b"\ndata: [DONE]\r\n\r\n"]

    async def crlf(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for part in parts:
            await resp.write(part)
            await asyncio.sleep(0.01)
        await resp.write_eof()
        return resp

    engine.handler = crlf
    sent = await call(proxy, [chat(stream=True)])
    assert body_of(sent) == b"".join(parts)
    assert all(m.get("body", b"").endswith(b"\r\n\r\n") for m in sent[1:-1])  # type: ignore[union-attr]


async def test_engines_get_no_nebula_headers(engine: Engine, proxy: Proxy) -> None:
    async def ok(request: web.Request) -> web.StreamResponse:
        return web.json_response({"ok": True})

    engine.handler = ok
    sent = await call(proxy, [chat()], [(b"x-nebula-model-uid", b"m1"),
                                        (b"x-nebula-tenant", b"team-a"),
                                        (b"x-nebula-priority", b"1"),
                                        (b"x-request-id", b"r-1"), (b"x-session-id", b"s")])
    assert answer(sent)[0] == 200
    headers = {k.lower() for k in engine.seen[0].headers}
    assert not any(h.startswith("x-nebula-") for h in headers), headers
    assert {"x-request-id", "x-session-id"} <= headers


async def test_the_gateways_model_uid_is_routed_exactly(engine: Engine,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Model x1 is named "twin"; model "twin" (a uid) is named Org/Y."""
    monkeypatch.setattr(EndpointTable, "synced", property(lambda self: True))  # no etcd here
    async def ok(request: web.Request) -> web.StreamResponse:
        return web.json_response({"ok": True})

    engine.handler = ok
    proxy = make_proxy()
    load(proxy.table, Endpoint("x1", "twin", "0", "n1", engine.url, "sim"),
         Endpoint("twin", "Org/Y", "0", "n1", engine.url, "sim"))
    await proxy.start()

    async def ask(model: str, uid: str | None) -> tuple[int, dict[bytes, bytes], bytes]:
        headers = [(b"x-nebula-model-uid", uid.encode())] if uid is not None else []
        sent = await call(proxy, [json.dumps({"model": model}).encode()], headers)
        return sent[0]["status"], dict(sent[0]["headers"]), body_of(sent)

    try:
        status, headers, _ = await ask("twin", "x1")
        assert status == 200 and headers[b"x-nebula-replica"] == b"x1/0"
        status, headers, _ = await ask("x1", "x1")
        assert status == 200 and headers[b"x-nebula-replica"] == b"x1/0"
        # without the header: as before, a uid wins over another model's name
        status, headers, _ = await ask("twin", None)
        assert status == 200 and headers[b"x-nebula-replica"] == b"twin/0"
        status, _, body = await ask("Org/Y", "x1")  # the body names another model
        assert status == 400 and json.loads(body)["error"]["code"] == "model_mismatch"
        for uid in ("nope", "Org/Y"):  # not a uid at all; a name, not a uid
            status, _, body = await ask("Org/Y", uid)
            assert status == 404 and json.loads(body)["error"]["code"] == "model_not_found"
    finally:
        await proxy.close()
    assert len(engine.seen) == 3


async def test_failure_texts_name_no_replica_or_address_and_the_log_has_them(
        engine: Engine, proxy: Proxy, caplog: pytest.LogCaptureFixture) -> None:
    async def broken(request: web.Request) -> web.StreamResponse:
        return web.Response(status=503, text="backend 10.9.8.7:8000 is down")

    engine.handler = broken
    caplog.set_level(logging.WARNING, logger="nebula_router.proxy")
    sent = await call(proxy, [chat()], [(b"x-request-id", b"req-77")])
    status, _, body = answer(sent)
    message = body["error"]["message"]  # type: ignore[index]
    assert status == 502 and body["error"]["code"] == "upstream_failed"  # type: ignore[index]
    assert message == "all 2 attempts failed; last: a replica answered 503"
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "req-77" in logged and "m1/" in logged and "10.9.8.7:8000" in logged

    unreachable = make_proxy(max_retries=0)
    load(unreachable.table, Endpoint("m1", "m1", "0", "n1", "http://127.0.0.1:9", "sim"))
    await unreachable.start()
    try:
        status, _, body = answer(await call(unreachable, [chat()]))
    finally:
        await unreachable.close()
    assert status == 503 and body["error"]["code"] == "no_reachable_replica"  # type: ignore[index]
    assert "127.0.0.1" not in json.dumps(body) and ":9" not in json.dumps(body)
    assert "127.0.0.1:9" in caplog.text


@pytest.mark.parametrize("status", [400, 404, 422, 500, 501])
async def test_an_answer_refusing_the_request_passes_as_it_came(
        engine: Engine, proxy: Proxy, status: int) -> None:
    refusal = json.dumps({"error": {"message": "embeddings are not supported by this model",
                                    "type": "invalid_request_error", "param": None,
                                    "code": None}})

    async def refuse(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, text=refusal, content_type="application/json")

    engine.handler = refuse
    sent = await call(proxy, [chat()])
    assert sent[0]["status"] == status and body_of(sent) == refusal.encode()
    assert len(engine.seen) == 1  # not retried
    assert all(c.failures == 0 for c in proxy.table.replicas.values())


async def test_a_crash_500_is_retried_and_counted(engine: Engine, proxy: Proxy) -> None:
    async def crash(request: web.Request) -> web.StreamResponse:
        return web.Response(status=500, text="Internal Server Error")

    engine.handler = crash
    assert answer(await call(proxy, [chat()]))[0] == 502
    assert len(engine.seen) == 2
    assert all(c.failures == 1 for c in proxy.table.replicas.values())


def full_accept_queue() -> tuple[socket.socket, list[socket.socket]]:
    """A listening socket that never accepts, its queue full: a connect to it times out."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    held: list[socket.socket] = []
    for _ in range(16):  # the kernel queues backlog + 1; then SYNs go unanswered
        client = socket.socket()
        client.setblocking(False)
        held.append(client)
        client.connect_ex(("127.0.0.1", port))
        _, writable, _ = select.select([], [client], [], 0.2)
        if not writable:
            return server, held
    raise AssertionError("the accept queue never filled")


@pytest.mark.parametrize("answered_ago", [1.0, None])
async def test_a_connect_timeout_counts_against_a_replica_only_when_it_stopped_answering(
        answered_ago: float | None) -> None:
    server, held = full_accept_queue()
    url = f"http://127.0.0.1:{server.getsockname()[1]}"
    p = make_proxy(Pipeline.build("round_robin"), connect_timeout=0.3, max_retries=0)
    load(p.table, Endpoint("m1", "m1", "0", "n1", url, "sim"))
    await p.start()
    try:
        (cand,) = p.table.get("m1").candidates  # type: ignore[union-attr]
        if answered_ago is not None:  # a storm on a replica that answers others
            cand.answered_at = time.monotonic() - answered_ago
        sent = await call(p, [chat()])
        assert sent[0]["status"] == 503  # no replica reachable, whatever the count
        assert cand.failures == (0 if answered_ago is not None else 1)
    finally:
        await p.close()
        for s in (server, *held):
            s.close()


async def test_a_stream_read_whole_ends_in_the_same_message_as_its_last_bytes(
        engine: Engine, proxy: Proxy) -> None:
    whole = b'data: {"n": 1}\n\ndata: [DONE]\n\n'

    async def at_once(request: web.Request) -> web.StreamResponse:
        return web.Response(body=whole, headers={"content-type": "text/event-stream"})

    engine.handler = at_once
    sent = await call(proxy, [chat(stream=True)])
    assert sent[0]["status"] == 200
    # one body message that also ends the response: the server writes chunk and end at once
    assert [(m["body"], m["more_body"]) for m in sent[1:]] == [(whole, False)]
