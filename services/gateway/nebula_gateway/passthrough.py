"""Chat completions, completions and embeddings: the router's answer passed through.

The body goes to the router as the client sent it (except that a stream is always
asked for usage, for accounting); the answer comes back byte for byte, streams
re-cut only on SSE frame boundaries. Only frames and bodies that carry usage are
decoded, to count the engine's tokens.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

import aiohttp

from .outcome import Outcome
from .reply import Reply, buffered, stream_reply
from .sse import FRAME_END, decoded, frame_data, frames_of, sse_blocks, tail_of

if TYPE_CHECKING:
    from .gateway import Gateway

_DECODER = json.JSONDecoder()
_USAGE = b'"usage"'


async def handle(gateway: Gateway, path: str, headers: Mapping[str, str], raw: bytes,
                 outcome: Outcome) -> Reply:
    body, _info = await gateway.admit(path, raw, outcome)
    stream = body.get("stream") is True
    drop_usage = want_usage = False
    if stream:
        options = body.get("stream_options") or {}
        want_usage = bool(options.get("include_usage"))
        if not want_usage:
            # ask the engine for usage anyway (accounting), drop it on the way out
            body["stream_options"] = {**options, "include_usage": True}
            raw = json.dumps(body).encode()
            drop_usage = True
    upstream = await gateway.forward(outcome, headers, path, raw)
    if stream and upstream.status == 200 and upstream.content_type == "text/event-stream":
        return stream_reply(upstream, pass_frames(outcome, upstream, drop_usage, want_usage),
                            gateway.response_headers)
    status, data, out_headers = await buffered(outcome, upstream, gateway.response_headers)
    if status == 200:
        outcome.usage(usage_of(data))
    return Reply(status, out_headers, data)


async def pass_frames(outcome: Outcome, upstream: aiohttp.ClientResponse, drop_usage: bool,
                      want_usage: bool) -> AsyncIterator[bytes]:
    """SSE bytes through; usage chunks read, and dropped when the client did not ask."""
    saw_usage = False
    async for block in sse_blocks(upstream.content.iter_any()):
        if _USAGE not in block:
            yield block
            continue
        kept: list[bytes] = []
        for frame in frames_of(block):
            data = frame_data(frame)
            if data and _USAGE in data:
                parsed = decoded(data)
                if isinstance(parsed, dict) and outcome.usage(parsed.get("usage")):
                    saw_usage = True
                    if drop_usage and not parsed.get("choices"):
                        continue
            kept.append(frame + FRAME_END)
        kept.append(tail_of(block))
        out = b"".join(kept)
        if out:
            yield out
    if want_usage and not saw_usage:
        outcome.note = "engine sent no usage chunk"


def usage_of(data: bytes) -> dict[str, Any] | None:
    """The top-level ``usage`` object of a JSON answer without decoding all of it.

    Engines put ``usage`` last, after the (possibly large: embeddings) payload, so the
    object is cut out from the last ``"usage"`` and decoded alone; anything odd falls
    back to decoding the whole body.
    """
    at = data.rfind(_USAGE)
    if at < 0:
        return None
    start = data.find(b"{", at)
    if start > 0 and not data[at + 7:start].strip(b": \t\r\n"):
        try:
            usage, _ = _DECODER.raw_decode(data[start:].decode("utf-8"))
        except ValueError:
            pass
        else:
            return usage if isinstance(usage, dict) else None
    parsed = decoded(data)
    usage = parsed.get("usage") if isinstance(parsed, dict) else None
    return usage if isinstance(usage, dict) else None
