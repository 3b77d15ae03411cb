"""The sim engine's request path as methods: admit, plan, queue, complete, stream, reset."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, NoReturn

import pytest
from werkzeug.datastructures import Headers

from nebula_common.openai_errors import error_json
from nebula_node.sim.engine import Job, SimEngine, StreamCut
from nebula_node.sim.faults import Faults
from nebula_node.sim.protocol import BadRequest, ChatFormat, Refusal
from nebula_node.sim.tokens import generate_tokens

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}


class Crashed(Exception):
    """Stands in for the process exit of the crash_after fault."""


def make_engine(crashes: list[int] | None = None, **faults: Any) -> SimEngine:
    def crash(request_number: int) -> NoReturn:
        if crashes is not None:
            crashes.append(request_number)
        raise Crashed(request_number)

    return SimEngine(model="m", served_names=["m", "alias"], max_model_len=100,
                     output_tokens=4, faults=Faults(**faults), prefix_cache_blocks=16,
                     prefix_block_chars=64, kv_cache_tokens=1000, embedding_dim=8, seed=0,
                     crash=crash)


def body_reader(body: object) -> tuple[Callable[[], Any], list[int]]:
    """``read_body`` for admit, and a list that grows by one per read."""
    reads: list[int] = []

    async def read() -> bytes:
        reads.append(1)
        return body if isinstance(body, bytes) else json.dumps(body).encode()

    return read, reads


async def admit(engine: SimEngine, body: object = CHAT, path: str = "/v1/chat/completions",
                headers: Headers | None = None) -> dict[str, Any]:
    read, _ = body_reader(body)
    return await engine.admit(path, headers or Headers(), read)


async def until(cond: Callable[[], bool], timeout: float = 2.0) -> None:
    """Poll ``cond`` on the loop until it holds (bounded)."""
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.001)


async def test_admit_counts_records_headers_and_returns_the_body() -> None:
    engine = make_engine()
    headers = Headers({"TraceParent": "00-ab-cd-01", "X-Request-Id": "r1", "X-Other": "no"})
    assert await admit(engine, headers=headers) == CHAT
    await admit(engine, {"model": "alias", "input": "x"}, "/v1/embeddings")
    stats = engine.stats()
    assert stats["requests_total"] == 2
    assert stats["by_path"] == {"/v1/chat/completions": 1, "/v1/embeddings": 1}
    # The last request's headers only (it had none), and only the recorded names.
    assert stats["last_request_headers"] == {}
    await admit(engine, headers=headers)
    assert engine.stats()["last_request_headers"] == {"traceparent": "00-ab-cd-01",
                                                      "x-request-id": "r1"}


@pytest.mark.parametrize("body, status, code, param", [
    (b"{not json", 400, None, None),
    ([1, 2], 400, None, None),
    ({"model": "other", "messages": []}, 404, "model_not_found", "model"),
])
async def test_admit_refuses_bad_bodies_and_unknown_models(
        body: object, status: int, code: str | None, param: str | None) -> None:
    engine = make_engine()
    with pytest.raises(Refusal) as info:
        await admit(engine, body)
    assert (info.value.status, info.value.code, info.value.param) == (status, code, param)
    # A refused request still arrived: it is counted, but is no failure of the engine.
    assert engine.requests_total == 1 and engine.requests_failed == 0


async def test_fail_rate_fault_refuses_with_500_and_counts_a_failure() -> None:
    engine = make_engine(fail_rate=1.0)
    with pytest.raises(Refusal) as info:
        await admit(engine)
    assert (info.value.status, info.value.code) == (500, "sim_fault")
    assert json.loads(info.value.body())["error"]["type"] == "server_error"
    assert engine.requests_failed == 1
    engine.update_faults({"fail_rate": 0})
    assert await admit(engine) == CHAT


async def test_crash_after_fires_when_that_request_arrives_and_counts_from_now() -> None:
    crashes: list[int] = []
    engine = make_engine(crashes, crash_after=2)
    await admit(engine)
    with pytest.raises(Crashed):
        await admit(engine)
    assert crashes == [2]
    engine.update_faults({"crash_after": 2})  # at run time: two more requests from now
    assert engine.fault_settings()["crash_at_request"] == 4
    await admit(engine)
    with pytest.raises(Crashed):
        await admit(engine)
    assert crashes == [2, 4]
    engine.update_faults({"crash_after": 0})
    for _ in range(3):
        await admit(engine)
    assert crashes == [2, 4]


async def test_hang_fault_holds_admission_until_the_client_gives_up() -> None:
    engine = make_engine(hang=True)
    read, reads = body_reader(CHAT)
    task = asyncio.create_task(engine.admit("/v1/completions", Headers(), read))
    await until(lambda: engine.requests_total == 1)
    for _ in range(20):
        await asyncio.sleep(0)
    assert not task.done() and reads == []  # hung before reading the body
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.requests_cancelled == 1
    assert ('vllm:request_success_total{engine="0",finished_reason="abort",model_name="m"} 1.0'
            in engine.metrics_text().decode())


async def test_health_hangs_only_with_hang_and_hang_health() -> None:
    engine = make_engine(hang=True)
    await asyncio.wait_for(engine.health(), 1)
    engine.update_faults({"hang_health": True})
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(engine.health(), 0.05)
    engine.update_faults({"hang": False})
    await asyncio.wait_for(engine.health(), 1)


def test_plan_honours_limits_and_refuses_a_prompt_that_fills_the_context() -> None:
    engine = make_engine()
    assert engine.plan("abcd" * 10, None) == Job("abcd" * 10, 10, 4, "stop")
    assert engine.plan("abcd", 7) == Job("abcd", 1, 7, "length")
    assert engine.plan("abcd" * 95, 50).tokens == 5  # capped by the context window
    with pytest.raises(Refusal) as info:
        engine.plan("abcd" * 100, None)
    assert info.value.status == 400 and "maximum context length is 100" in str(info.value)


async def test_complete_generates_the_prompts_text_and_frees_everything() -> None:
    engine = make_engine()
    prompt = "x" * 128  # two full prefix-cache blocks
    text, usage = await engine.complete(engine.plan(prompt, 3))
    assert text == "".join(generate_tokens(prompt, 3))
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) == (32, 3, 0)
    _, again = await engine.complete(engine.plan(prompt, 3))
    assert again.cached_tokens == 32
    stats = engine.stats()
    assert stats["requests_success"] == 2 and (stats["running"], stats["waiting"]) == (0, 0)
    assert engine.running_tokens == 0
    text_metrics = engine.metrics_text().decode()
    assert ('vllm:request_success_total{engine="0",finished_reason="length",model_name="m"} 2.0'
            in text_metrics)
    assert 'vllm:generation_tokens_total{engine="0",model_name="m"} 6.0' in text_metrics


async def test_max_concurrency_queues_and_a_cancelled_waiter_holds_nothing() -> None:
    engine = make_engine(max_concurrency=1, ttft_ms=200)
    first_job, second_job = engine.plan("a" * 40, 2), engine.plan("b" * 40, 2)
    first = asyncio.create_task(engine.complete(first_job))
    second = asyncio.create_task(engine.complete(second_job))
    await until(lambda: (engine.admission.running, engine.admission.waiting) == (1, 1))
    # Only the running request holds KV tokens; the queued one waits outside.
    assert engine.running_tokens == first_job.prompt_tokens + first_job.tokens
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    assert engine.admission.waiting == 0 and engine.requests_cancelled == 1
    await first
    assert (engine.admission.running, engine.running_tokens) == (0, 0)
    assert engine.requests_success == 1


async def test_a_cancel_during_prefill_gives_back_the_slot_and_kv_tokens() -> None:
    engine = make_engine(ttft_ms=5000)
    task = asyncio.create_task(engine.complete(engine.plan("q" * 80, 3)))
    await until(lambda: engine.running_tokens == 23)
    assert engine.admission.running == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (engine.admission.running, engine.running_tokens) == (0, 0)
    assert (engine.requests_cancelled, engine.requests_success) == (1, 0)


async def test_raising_max_concurrency_at_run_time_lets_waiters_in() -> None:
    engine = make_engine(max_concurrency=1, ttft_ms=300)
    tasks = [asyncio.create_task(engine.complete(engine.plan("p", 1))) for _ in range(3)]
    await until(lambda: engine.admission.waiting == 2)
    engine.update_faults({"max_concurrency": 0})
    assert (engine.admission.running, engine.admission.waiting) == (3, 0)
    await asyncio.gather(*tasks)
    assert engine.requests_success == 3


def chat_stream(engine: SimEngine, prompt: str, tokens: int) -> Any:
    return engine.stream(ChatFormat("m", {}), engine.plan(prompt, tokens))


async def test_a_stream_closed_by_the_client_counts_as_cancelled_and_frees_its_slot() -> None:
    engine = make_engine(itl_ms=50)
    stream = chat_stream(engine, "p", 20)
    first = await anext(stream)
    assert first.startswith(b"data: {") and engine.admission.running == 1
    await stream.aclose()
    assert (engine.requests_cancelled, engine.requests_success) == (1, 0)
    assert (engine.admission.running, engine.running_tokens) == (0, 0)


@pytest.mark.parametrize("itl_ms", [0, 1])  # one write, or paced writes
async def test_stream_cut_after_sends_that_many_frames_then_cuts(itl_ms: int) -> None:
    engine = make_engine(stream_cut_after=3, itl_ms=itl_ms)
    sent = b""
    with pytest.raises(StreamCut):
        async for chunk in chat_stream(engine, "p", 10):
            sent += chunk
    assert sent.count(b"\n\n") == 3
    assert (engine.requests_failed, engine.requests_success) == (1, 0)
    assert (engine.admission.running, engine.running_tokens) == (0, 0)


async def test_reset_zeroes_counters_and_empties_the_cache_but_keeps_faults() -> None:
    engine = make_engine(ttft_ms=1)
    prompt = "y" * 64
    await admit(engine)
    await engine.complete(engine.plan(prompt, 1))
    engine.reset()
    stats = engine.stats()
    assert [stats[k] for k in ("requests_total", "requests_success", "requests_failed",
                               "requests_cancelled")] == [0, 0, 0, 0]
    assert stats["by_path"] == {}
    assert stats["prefix_cache"]["queries"] == stats["prefix_cache"]["hits"] == 0
    assert stats["prefix_cache"]["blocks"] == 0
    assert engine.fault_settings()["ttft_ms"] == 1
    _, usage = await engine.complete(engine.plan(prompt, 1))
    assert usage.cached_tokens == 0  # the block cached before the reset is gone


def test_a_bad_fault_patch_changes_nothing() -> None:
    engine = make_engine()
    with pytest.raises(ValueError):
        engine.update_faults({"ttft_ms": 5, "bogus": 1})
    with pytest.raises(ValueError):
        engine.update_faults({"max_concurrency": 2, "fail_rate": 2})
    settings = engine.fault_settings()
    assert settings["ttft_ms"] == 0 and settings["max_concurrency"] == 0
    assert engine.admission.limit == 0


def test_embed_checks_dimensions_and_encoding_and_counts_a_success() -> None:
    engine = make_engine()
    out = engine.embed({"model": "alias", "input": ["abcd", "ab"], "dimensions": 3})
    assert out["model"] == "alias" and [len(d["embedding"]) for d in out["data"]] == [3, 3]
    assert out["usage"]["prompt_tokens"] == 2 and engine.requests_success == 1
    for body, param in (({"input": "a", "dimensions": 9}, "dimensions"),
                        ({"input": "a", "encoding_format": "hex"}, "encoding_format")):
        with pytest.raises(BadRequest) as info:
            engine.embed(body)
        assert info.value.param == param
    assert engine.requests_success == 1


def test_refusal_body_is_the_openai_error_json() -> None:
    refusal = Refusal(404, "no such model", code="model_not_found", param="model")
    assert refusal.body() == error_json(404, "no such model", code="model_not_found",
                                        param="model")
    assert BadRequest("bad", "x").body() == error_json(400, "bad", param="x")
    assert isinstance(BadRequest("bad"), ValueError)
