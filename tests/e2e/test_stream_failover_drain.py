"""Mid-stream failover, the other ways in (issue 13), on real processes.

- The gateway's translated Responses path (Responses over chat completions) rides on a chat
  stream: ``client.responses.stream`` sees a SIGKILL of the serving replica as nothing.
- A replica removed by a scale-down no longer waits for its long streams: marked draining,
  it hands them to the other replica at their next chunk, and its drain ends within 10 s
  while every stream completes with the undisturbed text.
"""

from __future__ import annotations

import http.client
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from devtools.cluster import Cluster, free_port, wait_for
from nebula_common.keys import Keys
from nebula_common.records import Assignment, Endpoint, NodeStatus, PlacementPlan
from nebula_common.store import EtcdStore
from tests.e2e.test_node_lifecycle import node_args, put_plan, require_binaries
from tests.e2e.test_router_support import debug_endpoints, metric_value
from tests.e2e.test_stream_failover import parse, serving_replica, stream

MODEL = "Org/Drain"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require_binaries("nebula-node", "nebula-sim", "nebula-router", "nebula-gateway")
    c = Cluster(Path(tmp_path_factory.mktemp("failover-drain")) / "run")
    c.start_etcd()
    try:
        yield c
    finally:
        c.stop_all(grace=5)


def register_llamacpp_like(cluster: Cluster, uid: str, rid: str, url: str) -> None:
    """A sim registered as a node registers llama.cpp replicas, plus ``continuation``:
    the gateway translates Responses to chat completions for it."""
    keys = Keys(cluster.prefix)
    ep = Endpoint(model_uid=uid, model_name=uid, replica_id=rid, node_id="test-node",
                  base_url=url, engine="llamacpp", status="ready", plan_version=1,
                  capabilities=["chat", "completions", "continuation"])

    async def write(store: EtcdStore) -> None:
        await store.put(keys.node("test-node"), NodeStatus("test-node", "127.0.0.1").to_json())
        await store.put(keys.endpoint(uid, rid), ep.to_json())

    cluster.with_store(write)


def test_translated_responses_stream_survives_a_kill(cluster: Cluster) -> None:
    uid = f"tr{uuid.uuid4().hex[:6]}"
    procs = {}
    for rid in ("r0", "r1"):
        proc, url = cluster.start_sim(f"sim-{uid}-{rid}", uid, [uid],
                                      ["--itl-ms", "20", "--output-tokens", "40"])
        procs[url] = proc
        register_llamacpp_like(cluster, uid, rid, url)
    _, router = cluster.start_router(name="router-translated")
    wait_for(lambda: sum(r["model_uid"] == uid for r in debug_endpoints(router)) == 2, 30,
             "router sees both")
    _, gateway = cluster.start_gateway([router], name="gateway-translated")
    c = openai.OpenAI(base_url=f"{gateway}/v1", api_key="x", max_retries=0, timeout=60)
    want = c.responses.create(model=uid, input="Tell me about failover")
    deltas = 0
    with c.responses.stream(model=uid, input="Tell me about failover") as s:
        for event in s:
            if event.type == "response.output_text.delta":
                deltas += 1
                if deltas == 3:
                    procs[serving_replica(router, uid)["base_url"]].kill9()
        final = s.get_final_response()
    assert final.status == "completed" and final.output_text == want.output_text
    assert final.usage is not None and want.usage is not None
    assert (final.usage.input_tokens, final.usage.output_tokens) == (
        want.usage.input_tokens, want.usage.output_tokens)
    text = cluster_metrics(router)
    assert metric_value(text, "nebula_router_stream_resumes_total", outcome="resumed") >= 1


def cluster_metrics(router: str) -> str:
    conn = http.client.HTTPConnection(router.removeprefix("http://"), timeout=10)
    try:
        conn.request("GET", "/metrics")
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def test_scale_down_hands_50_long_streams_over_and_drains_within_10s(cluster: Cluster) -> None:
    uid = f"dr{uuid.uuid4().hex[:6]}"
    args = ["--ttft-ms", "5", "--itl-ms", "25", "--max-concurrency", "0"]
    ports = [free_port(), free_port()]

    def plan(version: int, rids: list[int]) -> PlacementPlan:
        return PlacementPlan(model_uid=uid, model_name=MODEL, engine="sim", version=version,
                             assignments=[Assignment(replica_id=f"r{i}", node_id="nd",
                                                     port=ports[i], engine_args=args)
                                          for i in rids])

    cluster.start_node("nd", node_args(**{"--drain-timeout": "60"}))
    put_plan(cluster, plan(1, [0, 1]))
    cluster.wait_ready(uid, 2)
    _, router = cluster.start_router(name="router-drain")
    wait_for(lambda: sum(r["model_uid"] == uid and r["status"] == "ready"
                         for r in debug_endpoints(router)) == 2, 30, "router sees both")
    _, reference = cluster.start_sim("reference-drain", MODEL, [uid],
                                     ["--ttft-ms", "0", "--itl-ms", "0"])
    load = [("/v1/chat/completions", {
        "model": uid, "messages": [{"role": "user", "content": f"long story {i}"}],
        "max_tokens": 400, "stream": True, "stream_options": {"include_usage": True}})
        for i in range(50)]
    with ThreadPoolExecutor(10) as pool:
        expected = list(pool.map(lambda r: parse(stream(reference, *r)), load))
    with ThreadPoolExecutor(50) as pool:
        futures = [pool.submit(lambda r=r: parse(stream(router, *r))) for r in load]
        # every stream running (about 10 s each at 25 ms a token), then the scale-down
        wait_for(lambda: sum(r["in_flight"] for r in debug_endpoints(router)
                             if r["model_uid"] == uid) == 50, 30, "50 streams in flight")
        on_r0 = next(r["in_flight"] for r in debug_endpoints(router)
                     if r["model_uid"] == uid and r["replica"] == "r0")
        started = time.monotonic()
        put_plan(cluster, plan(2, [1]))
        wait_for(lambda: f"/endpoints/{uid}/r0" not in cluster.etcd_items(f"/endpoints/{uid}/"),
                 15, "the removed replica drained and deregistered", interval=0.1)
        drained = time.monotonic() - started
        got = [f.result(timeout=60) for f in futures]
    assert on_r0 >= 1
    assert drained < 10, f"drain took {drained:.1f}s with {on_r0} streams on the replica"
    for want, have in zip(expected, got, strict=True):
        assert have["text"] == want["text"] and have["usage"] == want["usage"]
        assert have["finish"] == "length" and len(have["ids"]) == 1
    print(f"drain with {on_r0} of 50 long streams on the replica: {drained:.1f}s")
