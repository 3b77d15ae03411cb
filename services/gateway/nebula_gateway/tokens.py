"""``/tokenize`` and ``/detokenize``: vLLM's endpoints, passed through to engines that have them.

A model whose engine cannot tokenize (declared capabilities, else the engine's name) is
refused with a 400 at the gateway instead of being forwarded to fail on a replica.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from nebula_common.capabilities import Capability

from .catalog import ModelInfo
from .outcome import Outcome
from .reply import Reply, buffered
from .validation import ValidationError

if TYPE_CHECKING:
    from .gateway import Gateway

TOKENIZE_ENGINES = frozenset({"vllm", "sim"})
"""Engines with /tokenize and /detokenize, for models whose replicas declared nothing."""


def can_tokenize(info: ModelInfo) -> bool:
    return info.serves(Capability.TOKENIZE, TOKENIZE_ENGINES)


async def handle(gateway: Gateway, path: str, headers: Mapping[str, str], raw: bytes,
                 outcome: Outcome) -> Reply:
    _body, info = await gateway.admit(path, raw, outcome)
    if not can_tokenize(info):
        raise ValidationError(400, f"model {info.id!r} does not support {path} (its engine "
                              f"is {info.engine or 'unknown'})", "model", "model_not_supported")
    upstream = await gateway.forward(outcome, headers, path, raw)
    status, data, out_headers = await buffered(outcome, upstream, gateway.response_headers)
    return Reply(status, out_headers, data)
