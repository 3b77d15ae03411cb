"""The proxy resuming a broken stream, against a scripted engine in this process.

Two replicas of ``m1`` on one loopback aiohttp engine: the first request breaks as
scripted (a reset, a clean EOF without ``[DONE]``, its replica turning draining), the
continuation gets the rest; the client must see one well-formed stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from aiohttp import web

from nebula_common.records import Endpoint, EndpointState
from nebula_router import metrics
from nebula_router.policy import Pipeline
from nebula_router.proxy import Proxy
from tests.unit.router.test_proxy_engine import Engine, body_of, engine, proxy  # noqa: F401
from tests.unit.router.test_proxy_parts import call, load, make_proxy

WORDS = [" the", " nebula", " routes", " every", " request", " to", " a", " ready"]
MESSAGES = [{"role": "user", "content": "q"}]


def chunk(cid: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    return b"data: " + json.dumps({
        "id": cid, "object": "chat.completion.chunk", "created": 1, "model": "m1",
        "choices": [{"index": 0, "delta": delta, "logprobs": None,
                     "finish_reason": finish}]}).encode() + b"\n\n"


def engine_frames(cid: str, words: list[str], usage: tuple[int, int]) -> list[bytes]:
    return [chunk(cid, {"role": "assistant", "content": ""}),
            *(chunk(cid, {"content": w}) for w in words), chunk(cid, {}, "length"),
            b"data: " + json.dumps({"id": cid, "object": "chat.completion.chunk", "created": 1,
                                    "model": "m1", "choices": [], "usage": {
                                        "prompt_tokens": usage[0],
                                        "completion_tokens": usage[1],
                                        "total_tokens": sum(usage)}}).encode() + b"\n\n",
            b"data: [DONE]\n\n"]


gate_hung_up = asyncio.Event()


def script(eng: Engine, how: str, cut: int = 3, gate: asyncio.Event | None = None
           ) -> list[dict[str, Any]]:
    """The engine breaks the first request ``how`` after ``cut`` frames, answers the rest."""
    bodies: list[dict[str, Any]] = []
    hung_up = gate_hung_up

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        bodies.append(body)
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        if len(bodies) == 1:
            for f in engine_frames("A", WORDS, (5, len(WORDS)))[:cut]:
                await resp.write(f)
            if how == "draining":
                assert gate is not None
                await gate.wait()
                # the next token: the router forwards it, then sees the replica draining
                await resp.write(chunk("A", {"content": WORDS[cut - 1]}))
                for _ in range(500):  # until the router hangs up
                    if request.transport is None or request.transport.is_closing():
                        hung_up.set()
                        break
                    await asyncio.sleep(0.01)
                return resp
            assert request.transport is not None
            if how == "reset":
                request.transport.close()
            else:  # "eof": a clean end without [DONE]
                await resp.write_eof()
            return resp
        done = len(body["messages"][-1]["content"].split(" ")) - 1
        for f in engine_frames("B", WORDS[done:], (5 + done, len(WORDS) - done)):
            await resp.write(f)
        await resp.write_eof()
        return resp

    eng.handler = handler
    return bodies


def parse(data: bytes) -> tuple[str, list[dict[str, Any]], list[str]]:
    events = [f.removeprefix(b"data: ").decode() for f in data.split(b"\n\n") if f]
    chunks = [json.loads(e) for e in events if e != "[DONE]"]
    text = "".join(c["delta"].get("content") or "" for ch in chunks for c in ch.get("choices", []))
    return text, chunks, events


def request(**extra: Any) -> bytes:
    return json.dumps({"model": "m1", "messages": MESSAGES, "stream": True, "max_tokens": 8,
                       "stream_options": {"include_usage": True}, **extra}).encode()


@pytest.mark.parametrize("how", ["reset", "eof"])
async def test_a_broken_stream_is_resumed_as_one_stream(engine: Engine, proxy: Proxy,  # noqa: F811
                                                        how: str,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "nebula.router.access")
    bodies = script(engine, how)
    before = metrics.STREAM_RESUMES.labels("resumed")._value.get()
    sent = await call(proxy, [request()])
    assert sent[0]["status"] == 200
    text, chunks, events = parse(body_of(sent))
    assert text == "".join(WORDS)
    assert {c["id"] for c in chunks} == {"A"} and events.count("[DONE]") == 1
    assert [c["finish_reason"] for ch in chunks for c in ch["choices"]
            if c["finish_reason"]] == ["length"]
    assert sum("role" in c["delta"] for ch in chunks for c in ch["choices"]) == 1
    assert [ch["usage"] for ch in chunks if ch.get("usage")] == [
        {"prompt_tokens": 5, "completion_tokens": 8, "total_tokens": 13}]
    cont = bodies[1]
    assert cont["messages"] == [*MESSAGES, {"role": "assistant", "content": " the nebula"}]
    assert cont["continue_final_message"] is True and cont["add_generation_prompt"] is False
    assert cont["max_tokens"] == 6
    assert metrics.STREAM_RESUMES.labels("resumed")._value.get() == before + 1
    (line,) = [r for r in caplog.records if r.name == "nebula.router.access"]
    assert sorted(line.replicas) == ["m1/0", "m1/1"] and line.resumes == 1  # type: ignore[attr-defined]


async def test_a_draining_replica_hands_its_stream_over(engine: Engine, proxy: Proxy  # noqa: F811
                                                        ) -> None:
    gate = asyncio.Event()
    bodies = script(engine, "draining", cut=4, gate=gate)
    task = asyncio.create_task(call(proxy, [request()]))
    async with asyncio.timeout(5):
        while not any(c.in_flight for c in proxy.table.replicas.values()):
            await asyncio.sleep(0.01)
    busy = next(c for c in proxy.table.replicas.values() if c.in_flight)
    busy.status = EndpointState.DRAINING
    gate.set()  # the next chunk shows the router the replica is draining
    sent = await asyncio.wait_for(task, 5)
    text, _chunks, _ = parse(body_of(sent))
    assert text == "".join(WORDS)
    assert len(bodies) == 2
    assert bodies[1]["messages"][-1]["content"] == " the nebula routes every"
    async with asyncio.timeout(5):  # the draining replica's stream was cut at once
        await gate_hung_up.wait()


async def test_a_stream_that_cannot_be_resumed_ends_with_the_error_event(
        engine: Engine, proxy: Proxy) -> None:  # noqa: F811
    bodies = script(engine, "reset")
    before = metrics.STREAM_RESUMES.labels("refused")._value.get()
    sent = await call(proxy, [request(logprobs=True)])
    _, _, events = parse(body_of(sent))
    assert json.loads(events[-1])["error"]["code"] == "upstream_stream_error"
    assert len(bodies) == 1
    assert metrics.STREAM_RESUMES.labels("refused")._value.get() == before + 1


async def test_failover_off_keeps_the_error_event(engine: Engine) -> None:  # noqa: F811
    p = make_proxy(Pipeline.build("round_robin"), stream_failover_max=0)
    load(p.table, *(Endpoint("m1", "m1", str(i), "n1", engine.url, "sim") for i in range(2)))
    await p.start()
    try:
        bodies = script(engine, "reset")
        sent = await call(p, [request()])
    finally:
        await p.close()
    _, _, events = parse(body_of(sent))
    assert json.loads(events[-1])["error"]["code"] == "upstream_stream_error"
    assert len(bodies) == 1


async def test_the_resume_is_an_event_on_the_requests_span(engine: Engine) -> None:  # noqa: F811
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    p = Proxy(make_proxy().table, Pipeline.build("round_robin"),
              make_proxy().config, tracer=provider.get_tracer("test"))
    load(p.table, *(Endpoint("m1", "m1", str(i), "n1", engine.url, "sim") for i in range(2)))
    await p.start()
    try:
        script(engine, "reset")
        await call(p, [request()])
    finally:
        await p.close()
    (root,) = [s for s in exporter.get_finished_spans() if s.name == "router.request"]
    (event,) = [e for e in root.events if e.name == "nebula.stream.resume"]
    assert event.attributes is not None
    assert event.attributes["nebula.outcome"] == "resumed"
    assert event.attributes["nebula.replica"] != event.attributes["nebula.replica.failed"]
    assert root.attributes is not None and root.attributes["nebula.stream_resumes"] == 1
    assert len([s for s in exporter.get_finished_spans() if s.name == "router.upstream"]) == 2
