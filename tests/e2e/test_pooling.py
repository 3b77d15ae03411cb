"""vLLM's /v1/rerank (/rerank) and /v1/score through gateway and router, on sim engines.

Three sims registered as a node would: one declaring what the node's sim adapter
declares (it serves both), one declaring what a generating vLLM model does and one what
llama.cpp does (neither serves them: the gateway answers 400 before any replica sees it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from devtools.cluster import Cluster, http_get, wait_for
from nebula_node.engines import llamacpp, sim, vllm
from tests.e2e.test_gateway import post, sim_served, start_sim, wait_router_ready

POOL = "pool/model"  # engine sim: serves both
GENERATE = "vllm/generate"  # a vLLM model that generates: no pooling endpoints
LLAMA = "llama/model"
DOCS = ["the cat sat on the mat", "stock prices fell today", "a cat and a dog played"]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    cluster = Cluster(tmp_path_factory.mktemp("pooling") / "run")
    try:
        cluster.start_etcd()
        sims = {POOL: start_sim(cluster, "pool-sim", POOL, "sim",
                                capabilities=sorted(sim.CAPABILITIES)),
                GENERATE: start_sim(cluster, "generate-sim", GENERATE, "vllm",
                                    capabilities=sorted(vllm.GENERATE)),
                LLAMA: start_sim(cluster, "llama-sim", LLAMA, "llamacpp",
                                 capabilities=sorted(llamacpp.GENERATE))}
        wait_router_ready()
        _, router = cluster.start_router()
        wait_for(lambda: len(json.loads(http_get(f"{router}/v1/models")[1])["data"])
                 == len(sims), 30, "router sees every model")
        _, gateway = cluster.start_gateway([router], name="pooling-gateway")
        yield {"gateway": gateway, "router": router, "sims": sims}
    finally:
        cluster.stop_all(grace=5)


def test_rerank_orders_documents_through_gateway_and_router(env: dict[str, Any]) -> None:
    for path in ("/v1/rerank", "/rerank"):
        got = post(f"{env['gateway']}{path}", json_body={
            "model": POOL, "query": "where did the cat sit", "documents": DOCS, "top_n": 2})
        assert got.status_code == 200, got.text
        out = got.json()
        assert [r["index"] for r in out["results"]] == [0, 2]
        assert out["results"][0]["document"] == {"text": DOCS[0]}
        assert out["results"][0]["relevance_score"] > out["results"][1]["relevance_score"]
        assert out["model"] == POOL and out["usage"]["total_tokens"] > 0
    direct = post(f"{env['router']}/v1/rerank",
                  json_body={"model": POOL, "query": "cat", "documents": DOCS})
    assert direct.status_code == 200 and len(direct.json()["results"]) == 3


def test_score_pairs_through_gateway(env: dict[str, Any]) -> None:
    got = post(f"{env['gateway']}/v1/score", json_body={
        "model": POOL, "text_1": "a cat", "text_2": ["a cat", "a dog", "stocks"]})
    assert got.status_code == 200, got.text
    out = got.json()
    assert [(d["index"], d["object"]) for d in out["data"]] == [
        (0, "score"), (1, "score"), (2, "score")]
    scores = [d["score"] for d in out["data"]]
    assert scores[0] == 1.0 > scores[1] > scores[2] == 0.0
    bad = post(f"{env['gateway']}/v1/score",
               json_body={"model": POOL, "text_1": ["a", "b"], "text_2": ["a"]})
    assert bad.status_code == 400 and "same length" in bad.json()["error"]["message"]


@pytest.mark.parametrize(("model", "engine"), [(GENERATE, "vllm"), (LLAMA, "llamacpp")])
def test_an_engine_without_them_is_a_400_before_any_replica(
        env: dict[str, Any], model: str, engine: str) -> None:
    served = sim_served(env, model)
    for path, body, what in (
            ("/v1/rerank", {"query": "q", "documents": ["d"]}, "reranking"),
            ("/rerank", {"query": "q", "documents": ["d"]}, "reranking"),
            ("/v1/score", {"text_1": "a", "text_2": "b"}, "scoring")):
        got = post(f"{env['gateway']}{path}", json_body={"model": model, **body})
        assert got.status_code == 400, got.text
        error = got.json()["error"]
        assert error["code"] == "model_not_supported" and error["param"] == "model"
        assert f"does not support {what}" in error["message"] and engine in error["message"]
    assert sim_served(env, model) == served


def test_bad_fields_are_one_line_400s(env: dict[str, Any]) -> None:
    got = post(f"{env['gateway']}/v1/rerank",
               json_body={"model": POOL, "query": "q", "documents": ["a", 1]})
    assert got.status_code == 400
    assert got.json()["error"]["param"] == "documents[1]"
    assert "\n" not in got.json()["error"]["message"]
