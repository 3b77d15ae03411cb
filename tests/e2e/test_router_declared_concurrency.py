"""The admission queue sized by what engines declare: no ``--max-running-per-replica``.

A node agent runs 2 ``nebula-sim`` replicas deployed with ``--max-concurrency 8``; the node
publishes that as each endpoint's ``max_concurrency``, and a router started without the flag
gives each replica 8 slots. 17 concurrent long requests: 16 run (8 on each engine, none
waiting inside an engine) and the 17th waits in the router's queue until a slot frees;
all 17 are served.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

from devtools.cluster import Cluster, http_get, http_post_json, wait_for
from tests.e2e.test_node_lifecycle import require_binaries
from tests.e2e.test_router_support import metric_value, wait_router_sees

UID = "declared"
MODEL = "nebula/declared"
CAPACITY = 8
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}


def queue_model(router: str) -> dict[str, Any]:
    status, body = http_get(f"{router}/debug/queue")
    assert status == 200, body
    return json.loads(body)["models"].get(UID) or {}


def engine_load(base_url: str) -> tuple[int, int]:
    status, body = http_get(f"{base_url}/sim/stats")
    assert status == 200, body
    stats = json.loads(body)
    return stats["running"], stats["waiting"]


def test_declared_concurrency_holds_the_excess_in_the_router(cluster: Cluster) -> None:
    require_binaries("nebula-node", "nebula-sim", "nebula-scheduler", "nebula-router", "nebula")
    cluster.start_node("n1")
    cluster.start_scheduler()
    _, router = cluster.start_router()  # no --max-running-per-replica: the engines declare
    done = cluster.nebula(
        "deploy", UID, "--model", MODEL, "--engine", "sim", "--replicas", "2",
        "--port", str(22000 + os.getpid() % 20000), "--engine-args",
        f"--max-concurrency {CAPACITY} --ttft-ms 5 --itl-ms 250 --output-tokens 20",
        timeout=60)
    assert done.returncode == 0, done.stderr
    endpoints = cluster.wait_ready(UID, 2)
    assert [ep["max_concurrency"] for ep in endpoints] == [CAPACITY, CAPACITY]
    wait_router_sees(router, UID, 2)

    results: list[int] = []

    def one() -> None:
        status, _ = http_post_json(f"{router}/v1/chat/completions", CHAT, timeout=60)
        results.append(status)

    threads = [threading.Thread(target=one) for _ in range(2 * CAPACITY + 1)]
    for t in threads:
        t.start()
    # Each request runs ~5 s: the 17th is seen waiting in the router while 16 run.
    def one_waits() -> bool:
        model = queue_model(router)
        return model.get("admitted") == 2 * CAPACITY and sum(model["waiting"].values()) == 1

    wait_for(one_waits, 10, "16 admitted and 1 waiting in the router's queue")
    assert queue_model(router)["slots"] == {ep["replica_id"]: CAPACITY for ep in endpoints}
    # ...and not inside an engine: each runs its 8 and queues nothing (polled: an admitted
    # request may still be on its way to its engine).
    wait_for(lambda: [engine_load(ep["base_url"]) for ep in endpoints] == [(CAPACITY, 0)] * 2,
             3, "8 running and none waiting on each engine")
    assert sum(queue_model(router)["waiting"].values()) == 1
    for t in threads:
        t.join(60)
    assert results == [200] * (2 * CAPACITY + 1)
    metrics = http_get(f"{router}/metrics")[1].decode()
    assert metric_value(metrics, "nebula_router_queue_dispatched_total", model=UID) == 17
    # The one that waited did so until a running request ended (each runs ~5 s).
    assert metric_value(metrics, "nebula_router_queue_wait_seconds_count", model=UID) == 17
    assert metric_value(metrics, "nebula_router_queue_wait_seconds_sum", model=UID) > 2.0
