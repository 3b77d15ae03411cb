"""Which replicas can take a continuation, and the request each kind of replica is sent.

A replica's node declares how its engine continues (``nebula_common.capabilities``):
``continuation`` (vLLM, the sim: ``continue_final_message``, completions prompt + text)
or ``chatml-continuation`` (llama.cpp: completions natively, chat through
``/v1/completions`` on the ChatML template, :mod:`.chatml`). A replica that declared
nothing (an older node) is tried with the first kind. Built only once a stream broke.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from nebula_common.capabilities import Capability

from . import chatml
from .continuation import CHAT_PATH, COMPLETIONS_PATH, Continuation, NotResumable


@dataclass(frozen=True)
class Target:
    path: str
    """The path the continuation is posted to."""
    body: bytes
    from_completions: bool
    """Its chunks are completions chunks to rewrite into the client's chat chunks."""


def chatml_only(caps: frozenset[Capability] | None) -> bool:
    return caps is not None and Capability.CONTINUATION not in caps \
        and Capability.CHATML_CONTINUATION in caps


def can_continue(caps: frozenset[Capability] | None, path: str,
                 request: dict[str, Any]) -> bool:
    """A replica with ``caps`` can take the continuation of ``request`` on ``path``."""
    if caps is None or Capability.CONTINUATION in caps:
        return True
    if Capability.CHATML_CONTINUATION not in caps:
        return False
    return path != CHAT_PATH or not chatml.request_problem(request)


def refusal(caps: Iterable[frozenset[Capability] | None], path: str,
            request: dict[str, Any]) -> str:
    """Why no replica with one of ``caps`` can take the continuation of ``request``, when
    the request itself is the reason ("" when one can, or when none declares a way)."""
    declared = list(caps)
    if path != CHAT_PATH or any(can_continue(c, path, request) for c in declared):
        return ""
    if any(chatml_only(c) for c in declared):
        return chatml.request_problem(request)
    return ""


class Targets:
    """The continuation ``cont`` of ``request`` as each kind of replica takes it, each
    request built once, on first need."""

    def __init__(self, path: str, request: dict[str, Any], cont: Continuation) -> None:
        self.path, self.request, self.cont = path, request, cont
        self._native: Target | None = None
        self._chatml: Target | None = None

    def for_replica(self, caps: frozenset[Capability] | None) -> Target:
        """The request for a replica with ``caps``; raises NotResumable if it can take none."""
        if not can_continue(caps, self.path, self.request):
            raise NotResumable("the replica cannot continue this stream")
        if self.path == CHAT_PATH and chatml_only(caps):
            if self._chatml is None:
                body = chatml.completion_body(self.request, self.cont)
                self._chatml = Target(COMPLETIONS_PATH, _encode(body), True)
            return self._chatml
        if self._native is None:
            assert self.cont.body is not None
            self._native = Target(self.path, _encode(self.cont.body), False)
        return self._native


def _encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()
