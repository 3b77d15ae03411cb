"""The sim's /v1/rerank and /v1/score: vLLM's shapes, word-overlap scores, 400s on bad fields."""

from __future__ import annotations

import json

import pytest

from nebula_node.sim import pooling
from nebula_node.sim.protocol import BadRequest
from tests.unit.sim.test_sim_app import client

DOCS = ["the cat sat on the mat", "stock prices fell today", "a cat and a dog"]


def test_overlap_is_the_share_of_words_in_common() -> None:
    assert pooling.overlap("The Cat", "cat the") == 1.0
    assert pooling.overlap("cat dog", "cat fish") == pytest.approx(1 / 3)
    assert pooling.overlap("cat", "") == 0.0 and pooling.overlap("a", "b") == 0.0


def test_rerank_orders_by_relevance_and_keeps_top_n() -> None:
    out = pooling.rerank("m", {"query": "where is the cat", "documents": DOCS})
    assert [r["index"] for r in out["results"]] == [0, 2, 1]
    scores = [r["relevance_score"] for r in out["results"]]
    assert scores == sorted(scores, reverse=True) and scores[-1] == 0.0
    assert out["results"][0]["document"] == {"text": DOCS[0]}
    assert out["usage"]["total_tokens"] > 0 and out["model"] == "m"
    best = pooling.rerank("m", {"query": "where is the cat", "documents": DOCS, "top_n": 1})
    assert [r["index"] for r in best["results"]] == [0]


def test_score_pairs_one_against_many_or_element_wise() -> None:
    one = pooling.score("m", {"text_1": "cat dog", "text_2": ["cat dog", "fish"]})
    assert [d["score"] for d in one["data"]] == [1.0, 0.0]
    assert {d["object"] for d in one["data"]} == {"score"} and one["object"] == "list"
    wise = pooling.score("m", {"text_1": ["a b", "c"], "text_2": ["a", "c"]})
    assert [(d["index"], d["score"]) for d in wise["data"]] == [(0, 0.5), (1, 1.0)]
    assert wise["usage"]["prompt_tokens"] == wise["usage"]["total_tokens"] > 0
    with pytest.raises(BadRequest, match="same length"):
        pooling.score("m", {"text_1": ["a", "b"], "text_2": ["a", "b", "c"]})
    with pytest.raises(BadRequest, match="text_2"):
        pooling.score("m", {"text_1": "a"})


async def test_the_routes_answer_as_vllm_and_count_requests() -> None:
    c, engine = client()
    for path in ("/v1/rerank", "/rerank"):
        r = await c.post(path, json={"model": "m", "query": "cat", "documents": DOCS})
        assert r.status_code == 200
        assert [x["index"] for x in json.loads(await r.get_data())["results"]] == [2, 0, 1]
    r = await c.post("/v1/score", json={"model": "m", "text_1": "cat", "text_2": DOCS})
    assert r.status_code == 200 and len(json.loads(await r.get_data())["data"]) == 3
    bad = await c.post("/v1/rerank", json={"model": "m", "query": "cat", "documents": DOCS,
                                           "top_n": -1})
    assert bad.status_code == 400
    assert json.loads(await bad.get_data())["error"]["param"] == "top_n"
    unknown = await c.post("/v1/score", json={"model": "nope", "text_1": "a", "text_2": "b"})
    assert unknown.status_code == 404
    assert engine.stats()["requests_success"] == 3
