"""vLLM's pooling endpoints for the sim: ``/v1/rerank`` (``/rerank``) and ``/v1/score``.

A pair's score is the word overlap of its two texts (Jaccard of their lower-cased word
sets): deterministic, in [0, 1], and higher for a document sharing more of the query's
words, so tests can check an ordering. The shapes are vLLM's: rerank answers
``results[{index, document: {text}, relevance_score}]`` best first (Jina's and
Cohere's), score answers ``data[{index, object: "score", score}]`` in pair order.
"""

from __future__ import annotations

import re
import time
from typing import Any

from .protocol import BadRequest, new_id
from .tokens import count_tokens

_WORD = re.compile(r"\w+")


def overlap(a: str, b: str) -> float:
    """The share of words the two texts have in common (0 when either has none)."""
    left = set(_WORD.findall(a.lower()))
    right = set(_WORD.findall(b.lower()))
    if not left or not right:
        return 0.0
    return len(left & right) / len(left | right)


def _texts(body: dict[str, Any], name: str) -> list[str]:
    value = body.get(name)
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(t, str) for t in value):
        return list(value)
    raise BadRequest(f"'{name}' must be a string or a non-empty list of strings", name)


def _top_n(body: dict[str, Any]) -> int:
    value = body.get("top_n")
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequest("'top_n' must be a non-negative integer", "top_n")
    return value


def rerank(model: str, body: dict[str, Any]) -> dict[str, Any]:
    """The ``/v1/rerank`` answer: documents by relevance to the query, best first."""
    query = body.get("query")
    if not isinstance(query, str):
        raise BadRequest("'query' must be a string", "query")
    documents = _texts(body, "documents")
    top_n = _top_n(body)
    ranked = sorted(((overlap(query, doc), i) for i, doc in enumerate(documents)),
                    key=lambda pair: (-pair[0], pair[1]))  # ties: input order, as stable
    if top_n:
        ranked = ranked[:top_n]
    tokens = sum(count_tokens(query) + count_tokens(doc) for doc in documents)
    return {"id": new_id("rerank-"), "model": model, "usage": {"prompt_tokens": tokens,
                                                          "total_tokens": tokens},
            "results": [{"index": i, "document": {"text": documents[i]},
                         "relevance_score": score} for score, i in ranked]}


def pairs(body: dict[str, Any]) -> list[tuple[str, str]]:
    """The ``/v1/score`` pairs: one ``text_1`` against each ``text_2``, or element-wise."""
    first, second = _texts(body, "text_1"), _texts(body, "text_2")
    if len(first) == 1:
        return [(first[0], t) for t in second]
    if len(first) != len(second):
        raise BadRequest("text_1 and text_2 must have the same length (or text_1 one "
                         f"text), got {len(first)} and {len(second)}", "text_2")
    return list(zip(first, second, strict=True))


def score(model: str, body: dict[str, Any]) -> dict[str, Any]:
    """The ``/v1/score`` answer: one score per pair, in pair order."""
    scored = pairs(body)
    tokens = sum(count_tokens(a) + count_tokens(b) for a, b in scored)
    return {"id": new_id("score-"), "object": "list", "created": int(time.time()),
            "model": model,
            "data": [{"index": i, "object": "score", "score": overlap(a, b)}
                     for i, (a, b) in enumerate(scored)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens,
                      "completion_tokens": 0}}
