"""The sim's HTTP layer, in process through Quart's test client."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from quart import typing as quart_typing

from nebula_node.sim.app import create_app
from nebula_node.sim.engine import SimEngine
from nebula_node.sim.faults import Faults

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello sim"}]}


def client(**faults: Any) -> tuple[quart_typing.TestClientProtocol, SimEngine]:
    engine = SimEngine(model="m", served_names=["m", "alias"], max_model_len=2048,
                       output_tokens=6, faults=Faults(**faults), prefix_cache_blocks=256,
                       prefix_block_chars=64, kv_cache_tokens=10000, embedding_dim=16, seed=0)
    return create_app(engine).test_client(), engine


def sse_data(body: bytes) -> list[Any]:
    out = []
    for frame in body.decode().split("\n\n"):
        for line in frame.split("\n"):
            if line.startswith("data: "):
                value = line[6:]
                out.append(value if value == "[DONE]" else json.loads(value))
    return out


async def test_models_health_and_metrics_names() -> None:
    c, _ = client()
    assert (await c.get("/health")).status_code == 200
    models = await (await c.get("/v1/models")).get_json()
    assert [m["id"] for m in models["data"]] == ["m", "alias"]
    text = (await (await c.get("/metrics")).get_data()).decode()
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting",
                 "vllm:gpu_cache_usage_perc", "vllm:kv_cache_usage_perc",
                 "vllm:prompt_tokens_total", "vllm:generation_tokens_total",
                 "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total",
                 "vllm:time_to_first_token_seconds_bucket",
                 "vllm:e2e_request_latency_seconds_bucket"):
        assert name in text, name


async def test_stream_and_non_stream_agree_on_text_and_usage() -> None:
    c, engine = client()
    full = await (await c.post("/v1/chat/completions", json=CHAT)).get_json()
    resp = await c.post("/v1/chat/completions",
                        json={**CHAT, "stream": True, "stream_options": {"include_usage": True}})
    assert resp.headers["content-type"].startswith("text/event-stream")
    chunks = sse_data(await resp.get_data())
    assert chunks[-1] == "[DONE]"
    text = "".join(c["choices"][0]["delta"].get("content", "")
                   for c in chunks[:-1] if c["choices"])
    assert text == full["choices"][0]["message"]["content"]
    assert full["choices"][0]["finish_reason"] == "stop"
    assert full["usage"]["completion_tokens"] == 6
    usage = chunks[-2]["usage"]
    assert usage["prompt_tokens"] == full["usage"]["prompt_tokens"]
    assert usage["completion_tokens"] == full["usage"]["completion_tokens"]
    stats = engine.stats()
    assert stats["requests_total"] == 2 and stats["requests_success"] == 2
    assert stats["by_path"] == {"/v1/chat/completions": 2}
    assert (stats["running"], stats["waiting"]) == (0, 0)
    assert engine.running_tokens == 0


async def test_max_tokens_limits_are_honoured_per_endpoint() -> None:
    c, _ = client()
    chat = await (await c.post("/v1/chat/completions",
                               json={**CHAT, "max_completion_tokens": 3})).get_json()
    assert chat["usage"]["completion_tokens"] == 3
    assert chat["choices"][0]["finish_reason"] == "length"
    comp = await (await c.post("/v1/completions",
                               json={"model": "m", "prompt": "x", "max_tokens": 9})).get_json()
    assert comp["usage"]["completion_tokens"] == 9
    resp = await (await c.post("/v1/responses", json={"model": "alias", "input": "x",
                                                      "max_output_tokens": 2})).get_json()
    assert resp["usage"]["output_tokens"] == 2 and resp["model"] == "alias"


async def test_errors_are_openai_shaped() -> None:
    c, _ = client()
    r = await c.post("/v1/chat/completions", json={**CHAT, "model": "nope"})
    assert r.status_code == 404
    assert (await r.get_json())["error"]["code"] == "model_not_found"
    r = await c.post("/v1/chat/completions", data=b"{not json",
                     headers={"content-type": "application/json"})
    assert r.status_code == 400 and "error" in await r.get_json()
    r = await c.post("/v1/chat/completions", json={"model": "m", "messages": []})
    assert r.status_code == 400
    r = await c.post("/v1/chat/completions", json={**CHAT, "max_tokens": 0})
    assert r.status_code == 400


async def test_runtime_faults_fail_rate_and_validation() -> None:
    c, engine = client()
    r = await c.post("/sim/faults", json={"fail_rate": 1.0})
    assert r.status_code == 200 and (await r.get_json())["fail_rate"] == 1.0
    r = await c.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 500
    assert (await r.get_json())["error"]["type"] == "server_error"
    assert engine.stats()["requests_failed"] == 1
    assert (await c.post("/sim/faults", json={"fail_rate": 3})).status_code == 400
    assert (await c.post("/sim/faults", json={"bogus": 1})).status_code == 400
    await c.post("/sim/faults", json={"fail_rate": 0})
    assert (await c.post("/v1/chat/completions", json=CHAT)).status_code == 200
    faults = await (await c.get("/sim/faults")).get_json()
    assert faults["fail_rate"] == 0 and faults["hang"] is False


async def test_prefix_cache_hits_cut_time_to_first_token() -> None:
    c, _ = client(prefill_ms_per_token=1.0)
    prompt = "shared system prompt " * 200  # 4200 chars = 1050 tokens
    body = {"model": "m", "prompt": prompt, "max_tokens": 1}
    t0 = time.monotonic()
    await c.post("/v1/completions", json=body)
    cold = time.monotonic() - t0
    t0 = time.monotonic()
    warm_body = await (await c.post("/v1/completions", json=body)).get_json()
    warm = time.monotonic() - t0
    assert cold >= 1.0  # 1050 uncached tokens at 1 ms each
    assert warm < cold / 2
    cached = warm_body["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached == (len(prompt) // 64) * 16
    stats = await (await c.get("/sim/stats")).get_json()
    assert stats["prefix_cache"]["hits"] == cached
    assert stats["prefix_cache"]["queries"] == 2 * 1050
    text = (await (await c.get("/metrics")).get_data()).decode()
    assert f'vllm:prefix_cache_hits_total{{engine="0",model_name="m"}} {float(cached)}' in text


async def test_max_concurrency_queues_requests_as_waiting() -> None:
    c, engine = client(max_concurrency=1, ttft_ms=300)
    tasks = [asyncio.create_task(c.post("/v1/chat/completions", json=CHAT)) for _ in range(3)]
    deadline = time.monotonic() + 5
    while (engine.admission.running, engine.admission.waiting) != (1, 2):
        assert time.monotonic() < deadline, engine.stats()
        await asyncio.sleep(0.01)
    text = (await (await c.get("/metrics")).get_data()).decode()
    assert 'vllm:num_requests_waiting{engine="0",model_name="m"} 2.0' in text
    assert 'vllm:num_requests_running{engine="0",model_name="m"} 1.0' in text
    assert engine.kv_usage() > 0
    responses = await asyncio.gather(*tasks)
    assert all(r.status_code == 200 for r in responses)
    assert (engine.admission.running, engine.admission.waiting) == (0, 0)


async def test_embeddings_and_recorded_headers() -> None:
    c, engine = client()
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    r = await c.post("/v1/embeddings", json={"model": "m", "input": ["a", "b"],
                                             "dimensions": 5},
                     headers={"traceparent": tp, "x-request-id": "req-1"})
    body = await r.get_json()
    assert [len(d["embedding"]) for d in body["data"]] == [5, 5]
    assert engine.stats()["last_request_headers"] == {"traceparent": tp,
                                                      "x-request-id": "req-1"}



async def test_paced_stream_has_every_token_in_order() -> None:
    c, engine = client(itl_ms=1)
    full = await (await c.post("/v1/completions", json={"model": "m", "prompt": "p",
                                                        "max_tokens": 40})).get_json()
    resp = await c.post("/v1/completions", json={"model": "m", "prompt": "p",
                                                 "max_tokens": 40, "stream": True})
    chunks = sse_data(await resp.get_data())
    assert chunks[-1] == "[DONE]"
    assert "".join(ch["choices"][0]["text"] for ch in chunks[:-1]) == \
        full["choices"][0]["text"]
    assert engine.stats()["requests_success"] == 2


async def test_reset_over_http_clears_counters_and_cache() -> None:
    c, engine = client()
    await c.post("/v1/completions", json={"model": "m", "prompt": "z" * 128})
    assert len(engine.cache) == 2
    stats = await (await c.post("/sim/reset")).get_json()
    assert stats["requests_total"] == 0 and stats["by_path"] == {}
    assert stats["prefix_cache"]["queries"] == 0 and len(engine.cache) == 0
    assert (await c.post("/v1/completions", json={"model": "m", "prompt": "z" * 128,
                                                  "max_tokens": 1})).status_code == 200
    assert engine.stats()["prefix_cache"]["hits"] == 0  # the cache was emptied
