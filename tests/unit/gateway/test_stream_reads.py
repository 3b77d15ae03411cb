"""The streamed pass-through's per-chunk shortcuts keep their contract, against scripted
routers on loopback ports: the read timeout (kept per stream, not per chunk), and the usage
request spliced into the body (not re-encoded)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from aiohttp import web

from nebula_common.asgi import Message
from nebula_gateway.config import GatewayConfig
from nebula_gateway.gateway import Gateway
from nebula_gateway.passthrough import pass_frames, usage_asked
from tests.unit.gateway.asgi import Answer, FakeRouter, body, chat, post, scope
from tests.unit.gateway.test_streams import outcome, upstream

TIMEOUT = 0.4
"""The gateway's ``--request-timeout`` here: the longest silence a router may keep."""

USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def frame(payload: Any) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def token(text: str) -> bytes:
    return frame({"choices": [{"index": 0, "delta": {"content": text}}]})


END = frame({"choices": [], "usage": USAGE}) + b"data: [DONE]\n\n"


Step = bytes | float | asyncio.Event


def scripted(*steps: Step) -> Any:
    """A router answer streaming ``steps``: bytes are written, numbers are pauses (s), an
    event is a silence until the test sets it (so the router's shutdown need not wait)."""
    async def answer(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for step in steps:
            if isinstance(step, bytes):
                await response.write(step)
            elif isinstance(step, asyncio.Event):
                await step.wait()
            else:
                await asyncio.sleep(step)
        await response.write_eof()
        return response
    return answer


def streamed(**extra: Any) -> dict[str, Any]:
    return {**chat(), "stream": True, **extra}


async def through(router: FakeRouter, payload: Any = None) -> tuple[Answer, float]:
    """One streamed request through a gateway with the short read timeout, and its time."""
    gateway = Gateway(GatewayConfig([router.url], request_timeout=TIMEOUT))
    began = time.monotonic()
    try:
        async with asyncio.timeout(10):
            answer = await post(gateway, "/v1/chat/completions", payload or streamed())
    finally:
        await gateway.pool.close()
    return answer, time.monotonic() - began


async def test_a_router_silent_mid_stream_is_cut_after_the_read_timeout() -> None:
    silence = asyncio.Event()
    async with FakeRouter(answer=scripted(token("a"), silence, END)).running() as router:
        answer, took = await through(router)
        silence.set()
    assert answer.status == 200  # the stream had started: the failure is an SSE error event
    assert answer.body.startswith(token("a"))
    assert b'"upstream_error"' in answer.body and b"[DONE]" not in answer.body
    assert TIMEOUT <= took < 5


async def test_a_slow_steady_stream_outlives_the_read_timeout() -> None:
    steps: list[Step] = []
    for i in range(6):  # 1.5 s in all, never TIMEOUT silent
        steps += [token(f"t{i}"), TIMEOUT / 2]
    async with FakeRouter(answer=scripted(*steps, END)).running() as router:
        answer, took = await through(router)
    assert answer.status == 200
    assert b"upstream_error" not in answer.body and answer.body.endswith(b"data: [DONE]\n\n")
    assert answer.body.count(b'"delta"') == 6 and b'"usage"' not in answer.body  # not asked
    assert took > 2 * TIMEOUT


async def test_time_spent_on_a_slow_client_is_not_router_silence() -> None:
    """The client takes 3x the read timeout over its first chunk while the router's rest
    waits in the buffer: no timeout (aiohttp's own timer stops while nobody reads, too)."""
    async with FakeRouter(answer=scripted(token("a"), TIMEOUT / 4, token("b"), END)
                          ).running() as router:
        gateway = Gateway(GatewayConfig([router.url], request_timeout=TIMEOUT))
        messages = body(json.dumps(streamed()).encode())
        sent: list[Message] = []

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop()
            await asyncio.sleep(3600)  # the client stays connected
            raise AssertionError("unreachable")

        async def send(message: Message) -> None:
            sent.append(message)
            if len(sent) == 2:
                await asyncio.sleep(3 * TIMEOUT)

        try:
            async with asyncio.timeout(10):
                await gateway(scope("POST", "/v1/chat/completions", {}), receive, send)
        finally:
            await gateway.pool.close()
    out = b"".join(m.get("body", b"") for m in sent[1:])
    assert sent[0]["status"] == 200
    assert out == token("a") + token("b") + b"data: [DONE]\n\n", out


async def test_a_pooled_connection_gets_its_read_timeout_back_after_a_stream() -> None:
    """The stream turned aiohttp's per-packet timer off on its connection; the next request
    on that connection (a router silent before its answer) still times out: 504."""
    peers: list[Any] = []
    silence = asyncio.Event()

    async def answer(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        peers.append(request.transport.get_extra_info("peername"))
        if len(peers) == 2:
            await silence.wait()
        result: web.StreamResponse = await scripted(token("a"), END)(request)
        return result

    async with FakeRouter(answer=answer).running() as router:
        gateway = Gateway(GatewayConfig([router.url], request_timeout=TIMEOUT))
        try:
            async with asyncio.timeout(10):
                first = await post(gateway, "/v1/chat/completions", streamed())
                second = await post(gateway, "/v1/chat/completions", streamed())
        finally:
            silence.set()
            await gateway.pool.close()
    assert first.status == 200 and first.body.endswith(b"[DONE]\n\n")
    assert len(peers) == 2 and peers[0] == peers[1]  # the same connection served both
    assert second.status == 504 and second.error["code"] == "timeout"


async def test_the_router_is_asked_for_usage_and_the_client_does_not_see_it() -> None:
    async with FakeRouter(answer=scripted(token("a"), END)).running() as router:
        answer, _ = await through(router, streamed(temperature=0.5))
    sent = json.loads(router.bodies[-1])
    assert sent == {**streamed(temperature=0.5), "stream_options": {"include_usage": True}}
    assert b'"usage"' not in answer.body


@pytest.mark.parametrize("options", [
    {"include_usage": False, "continuous_usage_stats": True},  # the client's others stay
    None,  # an explicit null: re-encoded, not a second key
])
def test_client_stream_options_are_kept_beside_the_usage_request(options: Any) -> None:
    payload = streamed(stream_options=options)
    raw = json.dumps(payload).encode()
    sent = json.loads(usage_asked(raw, dict(payload)))
    assert sent == {**payload, "stream_options": {**(options or {}), "include_usage": True}}


def test_a_body_without_stream_options_gets_them_spliced_in() -> None:
    payload = streamed(messages=[{"role": "user", "content": "}\"stream_options"}])
    raw = json.dumps(payload).encode() + b"\n "
    for body_bytes in (raw, json.dumps(streamed()).encode()):
        parsed = json.loads(body_bytes)
        assert json.loads(usage_asked(body_bytes, dict(parsed))) == {
            **parsed, "stream_options": {"include_usage": True}}


@pytest.mark.parametrize("separators", [(",", ":"), (", ", ": ")])
async def test_null_usage_in_every_chunk_passes_and_the_real_one_still_counts(
        separators: tuple[str, str]) -> None:
    """OpenAI-style engines send ``"usage": null`` in each chunk once usage is asked for:
    those pass untouched (and undecoded); the usage chunk is counted, and dropped."""
    def dumped(payload: Any) -> bytes:
        return b"data: " + json.dumps(payload, separators=separators).encode() + b"\n\n"
    chunks = b"".join(dumped({"choices": [{"index": 0, "delta": {"content": w}}],
                              "usage": None}) for w in ("a", "b"))
    stream = chunks + dumped({"choices": [], "usage": USAGE}) + b"data: [DONE]\n\n"
    for size in (7, len(stream)):
        record = outcome()
        out = b"".join([b async for b in pass_frames(record, upstream(stream, size),
                                                      True, False)])
        assert out == chunks + b"data: [DONE]\n\n"
        assert (record.prompt_tokens, record.completion_tokens) == (3, 2)


async def test_with_a_body_writer_whole_frames_bypass_the_loop_and_usage_still_counts() -> None:
    """Where the server offers a body writer, reads of whole frames with no usage (or a null
    one) are written from the read callback; the first block still comes out of the loop
    (its first byte is timed there), and so do split frames, the usage chunk and the end."""
    def dumped(payload: Any) -> bytes:
        return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"
    words = [dumped({"choices": [{"index": 0, "delta": {"content": w}}], "usage": None})
             for w in ("a", "b", "c", "d")]
    stream = b"".join(words) + dumped({"choices": [], "usage": USAGE}) + b"data: [DONE]\n\n"
    for size, refuse in ((len(words[0]), False), (7, False), (len(words[0]), True)):
        record = outcome()
        wire: list[tuple[str, bytes]] = []  # what reached the client, and by which way

        def write(part: bytes, refuse: bool = refuse,
                  wire: list[tuple[str, bytes]] = wire) -> bool:
            if not refuse:
                wire.append(("written", part))
            return not refuse

        record.write_more = write
        async for block in pass_frames(record, upstream(stream, size), True, False):
            wire.append(("sent", block))
        assert b"".join(b for _, b in wire) == b"".join(words) + b"data: [DONE]\n\n"
        assert (record.prompt_tokens, record.completion_tokens) == (3, 2)
        assert wire[0][0] == "sent"
        written = [b for way, b in wire if way == "written"]
        if refuse:
            assert written == []
        elif size == len(words[0]):
            assert written == words[1:]  # each whole frame after the first
        else:  # cut mid-frame: a read ending a frame with nothing held back, if any
            assert all(part.endswith(b"\n\n") for part in written)
