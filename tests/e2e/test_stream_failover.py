"""Mid-stream failover on real processes (issue 13): replicas SIGKILLed under streaming load.

Real etcd, a real node agent running three ``nebula-sim`` replicas (it restarts each one
killed), the router as a process. A bounded driver streams 200 chat completions and 100
completions at ``itl`` 20 ms while the replicas are killed one after another; every stream
must complete and equal, byte for byte in its text and in its usage, the same request on
an undisturbed sim; ids are constant per stream. Then the openai client's stream helper
sees a kill as nothing at all.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest

from devtools.cluster import Cluster, free_port, http_get, wait_for
from nebula_common.records import Assignment, PlacementPlan
from tests.e2e.test_node_lifecycle import node_args, pid_record, put_plan, require_binaries
from tests.e2e.test_router_support import debug_endpoints, metric_value
from tests.support.streams import read_stream

ITL = ["--ttft-ms", "5", "--itl-ms", "20", "--output-tokens", "30"]
REPLICAS = 3
CONCURRENCY = 24


def serving_replica(router: str, uid: str) -> dict[str, Any]:
    """The one replica of ``uid`` with a request in flight (the stream under test), as the
    router's /debug/endpoints lists it."""
    busy = [r for r in debug_endpoints(router) if r["model_uid"] == uid and r["in_flight"] > 0]
    assert len(busy) == 1, busy
    return busy[0]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    require_binaries("nebula-node", "nebula-sim", "nebula-router")
    cluster = Cluster(Path(tmp_path_factory.mktemp("failover")) / "run")
    cluster.start_etcd()
    try:
        uid = f"fo{uuid.uuid4().hex[:6]}"
        cluster.start_node("n1", node_args())
        put_plan(cluster, PlacementPlan(
            model_uid=uid, model_name="Org/Failover", engine="sim", version=1,
            assignments=[Assignment(replica_id=f"r{i}", node_id="n1", port=free_port(),
                                    engine_args=ITL) for i in range(REPLICAS)]))
        cluster.wait_ready(uid, REPLICAS)
        _, router = cluster.start_router()
        wait_for(lambda: sum(r["status"] == "ready" for r in debug_endpoints(router)
                             if r["model_uid"] == uid) == REPLICAS, 30, "router sees 3")
        # the undisturbed reference: the same engine, alone, never killed, no pacing
        _, reference = cluster.start_sim("reference", "Org/Failover", [uid],
                                         args=["--ttft-ms", "0", "--itl-ms", "0",
                                               "--output-tokens", "30"])
        yield {"cluster": cluster, "uid": uid, "router": router, "reference": reference}
    finally:
        cluster.stop_all(grace=5)


def stream(base: str, path: str, body: dict[str, Any]) -> bytes:
    conn = http.client.HTTPConnection(base.removeprefix("http://"), timeout=60)
    try:
        conn.request("POST", path, body=json.dumps(body).encode(),
                     headers={"content-type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        assert resp.status == 200, data[:300]
        return data
    finally:
        conn.close()


def parse(data: bytes) -> dict[str, Any]:
    """A stream's text, ids, finish reasons, usage and end markers, checked well-formed."""
    parts = read_stream(data)
    assert len(parts.usage) == 1 and len(parts.finishes) == 1, data[-800:]
    usage = parts.usage[0]
    return {"text": parts.text, "finish": parts.finishes[0], "roles": parts.roles,
            "ids": {(c["id"], c["created"], c["model"]) for c in parts.chunks},
            "usage": (usage["prompt_tokens"], usage["completion_tokens"])}


def requests(uid: str) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    opts = {"stream": True, "stream_options": {"include_usage": True}}
    for i in range(200):
        body: dict[str, Any] = {"model": uid, "messages": [
            {"role": "user", "content": f"question {i}: what does the router do?"}], **opts}
        if i % 3:
            body["max_tokens"] = 20 + i % 25
        out.append(("/v1/chat/completions", body))
    for i in range(100):
        body = {"model": uid, "prompt": f"story {i}:", **opts}
        if i % 2:
            body["max_tokens"] = 15 + i % 30
        out.append(("/v1/completions", body))
    return out


class Killer(threading.Thread):
    """SIGKILLs the replicas one after another, each time waiting for the node's restart."""

    def __init__(self, cluster: Cluster, uid: str):
        super().__init__(daemon=True)
        self.cluster, self.uid = cluster, uid
        self.stop = threading.Event()
        self.kills = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            i = 0
            while not self.stop.wait(0.4):
                rid = f"r{i % REPLICAS}"
                i += 1
                rec = pid_record(self.cluster, "n1", self.uid, rid)
                assert rec is not None
                os.kill(int(rec["pid"]), signal.SIGKILL)
                self.kills += 1
                wait_for(lambda r=rid, old=rec["pid"]: (
                    (new := pid_record(self.cluster, "n1", self.uid, r)) is not None
                    and new["pid"] != old), 30, "the node restarts the engine")
                self.cluster.wait_ready(self.uid, REPLICAS, timeout=30)
        except BaseException as exc:  # reported by the test
            self.error = exc


def router_metrics(router: str) -> str:
    return http_get(f"{router}/metrics")[1].decode()


def test_streams_survive_replicas_killed_one_after_another(env: dict[str, Any]) -> None:
    uid, router = env["uid"], env["router"]
    load = requests(uid)
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        expected = list(pool.map(lambda r: parse(stream(env["reference"], *r)), load))
    before = router_metrics(router)
    killer = Killer(env["cluster"], uid)
    started = time.monotonic()
    killer.start()
    try:
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            got = list(pool.map(lambda r: parse(stream(router, *r)), load))
    finally:
        killer.stop.set()
        killer.join(60)
    elapsed = time.monotonic() - started
    assert killer.error is None, killer.error
    after = router_metrics(router)

    def delta(name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    resumed = delta("nebula_router_stream_resumes_total", outcome="resumed")
    figure = (f"streams={len(load)} kills={killer.kills} resumed={resumed:.0f} "
              f"failed={delta('nebula_router_stream_errors_total'):.0f} in {elapsed:.1f}s")
    print(figure)
    for (path, body), want, have in zip(load, expected, got, strict=True):
        assert have["text"] == want["text"], (path, body, figure)
        assert have["finish"] == want["finish"] and have["usage"] == want["usage"], (body, have)
        assert len(have["ids"]) == 1 and have["roles"] <= 1, have["ids"]
    assert sum(h["usage"][1] for h in got) == sum(w["usage"][1] for w in expected)
    assert killer.kills >= 2 and resumed >= 1, figure
    assert delta("nebula_router_stream_errors_total") == 0, figure
    for outcome in ("failed", "refused", "exhausted"):
        assert delta("nebula_router_stream_resumes_total", outcome=outcome) == 0, figure


def test_openai_stream_helper_sees_a_kill_as_nothing(env: dict[str, Any]) -> None:
    uid, router = env["uid"], env["router"]
    messages = [{"role": "user", "content": "tell me about helpers"}]
    ref = openai.OpenAI(base_url=f"{env['reference']}/v1", api_key="x", max_retries=0)
    # no max_tokens: the helper raises on finish_reason "length"
    want = ref.chat.completions.create(model=uid, messages=messages)  # type: ignore[arg-type]
    c = openai.OpenAI(base_url=f"{router}/v1", api_key="x", max_retries=0, timeout=60)
    seen = 0
    with c.chat.completions.stream(model=uid, messages=messages,  # type: ignore[arg-type]
                                   stream_options={"include_usage": True}) as s:
        for event in s:
            if event.type == "content.delta":
                seen += 1
                if seen == 3:
                    rec = pid_record(env["cluster"], "n1", uid,
                                     serving_replica(router, uid)["replica"])
                    assert rec is not None
                    os.kill(int(rec["pid"]), signal.SIGKILL)
        final = s.get_final_completion()
    assert final.choices[0].message.content == want.choices[0].message.content
    assert final.choices[0].finish_reason == "stop" and seen >= 3
    assert final.usage is not None and want.usage is not None
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (
        want.usage.prompt_tokens, want.usage.completion_tokens)
    text = router_metrics(router)
    assert metric_value(text, "nebula_router_stream_resumes_total", outcome="resumed") >= 1
    env["cluster"].wait_ready(uid, REPLICAS, timeout=30)
