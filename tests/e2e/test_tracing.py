"""One trace per request across gateway -> router -> engine, exported over real OTLP/HTTP."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator

import pytest
import requests

from devtools.cluster import Cluster, free_port, http_get, wait_for
from tests.support.otlp import OtlpReceiver, ReceivedSpan

MODEL = "trace-model"


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    with OtlpReceiver() as receiver:
        cluster = Cluster(tmp_path_factory.mktemp("tracing") / "run", env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        })
        try:
            cluster.start_etcd()
            cluster.start_node("trace-node")
            _, router = cluster.start_router()
            _, gateway = cluster.start_gateway([router])
            cluster.start_scheduler(args=[
                "--model-uid", "tm", "--model-name", MODEL, "--node-id", "trace-node",
                "--engine", "sim", "--port", str(free_port()),
                "--engine-args", "--itl-ms 25 --output-tokens 12"])
            (endpoint,) = cluster.wait_ready("tm", 1)
            wait_for(lambda: http_get(f"{gateway}/v1/models")[1].count(MODEL.encode()), 20,
                     "model visible through the gateway")
            yield dict(receiver=receiver, gateway=gateway, engine=endpoint["base_url"])
        finally:
            cluster.stop_all(grace=5)


def _traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def _spans(receiver: OtlpReceiver, trace_id: str) -> list[ReceivedSpan]:
    def complete() -> list[ReceivedSpan] | None:
        spans = receiver.trace(trace_id)
        services = {s.service for s in spans}
        has_gateway = any("gateway" in s for s in services)
        has_router = any("router" in s for s in services)
        return spans if has_gateway and has_router else None
    return wait_for(complete, 15, f"spans of trace {trace_id}", 0.1)


def _check_chain(spans: list[ReceivedSpan], caller_span: str) -> dict[str, ReceivedSpan]:
    by_id = {s.span_id: s for s in spans}
    gateway_root = [s for s in spans if "gateway" in s.service and s.parent_span_id == caller_span]
    assert len(gateway_root) == 1, f"one gateway span continues the caller's trace: {spans}"
    router = [s for s in spans if "router" in s.service and s.kind == 2]  # SERVER
    assert len(router) == 1, "one router server span per request"
    parent = by_id.get(router[0].parent_span_id)
    assert parent is not None and "gateway" in parent.service, "router span is the gateway's child"
    upstream = [s for s in spans if "router" in s.service and s.kind == 3]  # CLIENT
    assert upstream, "the router's upstream call is a client span"
    assert by_id[upstream[0].parent_span_id] is router[0]
    return {"gateway": gateway_root[0], "router": router[0], "upstream": upstream[0]}


def test_non_streamed_request_is_one_trace(traced: dict) -> None:
    header, trace_id, caller = _traceparent()
    reply = requests.post(f"{traced['gateway']}/v1/chat/completions", timeout=30,
                       headers={"traceparent": header},
                       json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status_code == 200
    chain = _check_chain(_spans(traced["receiver"], trace_id), caller)
    gw, router = chain["gateway"].attributes, chain["router"].attributes
    assert gw.get("gen_ai.request.model") == MODEL
    assert gw.get("gen_ai.usage.output_tokens") == reply.json()["usage"]["completion_tokens"]
    assert router.get("nebula.replica", "").startswith("tm/")
    assert router.get("nebula.policy") and router.get("nebula.policy.reason")
    # the engine received the same trace in its traceparent header
    stats = json.loads(http_get(f"{traced['engine']}/sim/stats")[1])
    assert trace_id in json.dumps(stats.get("last_request_headers", {}))


def test_streaming_span_covers_the_stream(traced: dict) -> None:
    header, trace_id, caller = _traceparent()
    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    started = time.monotonic()
    chunks = 0
    with requests.post(f"{traced['gateway']}/v1/chat/completions", json=body, stream=True,
                       headers={"traceparent": header}, timeout=30) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            chunks += line.startswith(b"data:")
    elapsed = time.monotonic() - started
    assert chunks > 5
    chain = _check_chain(_spans(traced["receiver"], trace_id), caller)
    # 12 tokens 25 ms apart: the stream lasts ~300 ms; a span ended at headers would be ~0
    assert chain["gateway"].duration_s >= 0.8 * elapsed - 0.05
    assert chain["router"].duration_s >= 0.8 * elapsed - 0.1
    assert chain["router"].attributes.get("nebula.ttft_ms") is not None
