"""What an engine can serve, declared by its adapter and published with each endpoint.

The node's engine adapter says, per replica, which request kinds its engine serves
(``EngineAdapter.capabilities``); the endpoint record carries the list; the router lists
the capabilities every ready replica of a model shares in ``GET /v1/models``; the gateway
answers 400 for a request kind the model's engine cannot serve, instead of forwarding it
to fail on a replica (and count as that replica's fault).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class Capability(StrEnum):
    CHAT = "chat"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"
    RESPONSES = "responses"
    """A native ``/v1/responses`` (else the gateway translates to chat completions)."""
    TOKENIZE = "tokenize"
    RERANK = "rerank"
    SCORE = "score"
    TOOLS = "tools"
    CONTINUATION = "continuation"
    """Resumes a partial answer (``continue_final_message`` / completions continuation)."""
    CHATML_CONTINUATION = "chatml-continuation"
    """Resumes completions natively, and chat through ``/v1/completions`` on the ChatML
    template the router renders (llama.cpp's server, which cannot continue a chat turn)."""


PATH_NEEDS: dict[str, Capability] = {
    "/v1/chat/completions": Capability.CHAT,
    "/v1/completions": Capability.COMPLETIONS,
    "/v1/embeddings": Capability.EMBEDDINGS,
    # Anthropic Messages is served by translation to chat completions
    "/v1/messages": Capability.CHAT,
    "/v1/messages/count_tokens": Capability.CHAT,
    "/v1/rerank": Capability.RERANK,
    "/rerank": Capability.RERANK,
    "/v1/score": Capability.SCORE,
}
"""The capability a request path needs (paths served for every model are absent)."""

WHAT: dict[Capability, str] = {
    Capability.CHAT: "chat completions",
    Capability.COMPLETIONS: "completions",
    Capability.EMBEDDINGS: "embeddings",
    Capability.RESPONSES: "the Responses API",
    Capability.TOKENIZE: "tokenization",
    Capability.RERANK: "reranking",
    Capability.SCORE: "scoring",
    Capability.TOOLS: "tool calls",
    Capability.CONTINUATION: "continuation",
    Capability.CHATML_CONTINUATION: "continuation through the ChatML template",
}


def parse_capabilities(names: Iterable[object]) -> frozenset[Capability]:
    """The known capabilities among ``names`` (a newer node's unknown ones are ignored)."""
    known = {c.value for c in Capability}
    return frozenset(Capability(n) for n in names if isinstance(n, str) and n in known)


def shared_capabilities(declared: Iterable[frozenset[Capability] | None]
                        ) -> frozenset[Capability] | None:
    """What every replica that declared its capabilities can serve; None when none did.

    A replica of an older node declares nothing: it neither adds nor removes anything.
    """
    common: frozenset[Capability] | None = None
    for caps in declared:
        if caps is None:
            continue
        common = caps if common is None else common & caps
    return common


def refusal(model: str, path: str, caps: frozenset[Capability] | None) -> str | None:
    """Why ``model`` cannot serve ``path``, or None (also when nothing was declared)."""
    need = PATH_NEEDS.get(path)
    if need is None or caps is None or need in caps:
        return None
    return f"model {model!r} does not support {WHAT[need]}"
