"""Chat completions, completions and embeddings: the router's answer passed through.

The body goes to the router as the client sent it (except that a stream is always
asked for usage, for accounting); the answer comes back byte for byte, streams
re-cut only on SSE frame boundaries. Only frames and bodies that carry a usage
object are decoded, to count the engine's tokens (``"usage":null`` is not).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from nebula_common.http_client import Response, Take
from nebula_common.sse import FRAME_ENDS, frame_end_of

from .outcome import Outcome
from .reply import Reply, buffered, stream_reply
from .sse import SseFrames, decoded, frame_data

if TYPE_CHECKING:
    from .gateway import Gateway

_DECODER = json.JSONDecoder()
_USAGE = b'"usage"'
_NULL_USAGE = b'"usage":null'
_NULL_USAGE_SPACED = b'"usage": null'  # json.dumps' default separators


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
            raw = usage_asked(raw, body)
            drop_usage = True
    upstream = await gateway.forward(outcome, headers, path, raw)
    if stream and upstream.status == 200 and upstream.content_type == "text/event-stream":
        return stream_reply(upstream, pass_frames(outcome, upstream, drop_usage, want_usage),
                            gateway.response_headers)
    status, data, out_headers = await buffered(outcome, upstream, gateway.response_headers)
    if status == 200:
        outcome.usage(usage_of(data))
    return Reply(status, out_headers, data)


async def pass_frames(outcome: Outcome, upstream: Response, drop_usage: bool,
                      want_usage: bool) -> AsyncIterator[bytes]:
    """SSE bytes through; usage chunks read, and dropped when the client did not ask.

    This runs once per forwarded chunk, so it is one flat loop on the response's reader
    (no iterator layers between a chunk and its send); the read timeout is the client's
    one timer per response. Once the first block is out (the caller times it), a read of
    whole frames that names no usage (or only null ones) is written from the read callback
    where the server offers a writer (``Response.readany``'s ``take``): no task wakes.
    """
    saw_usage = False
    frames = SseFrames()
    read = upstream.readany
    write = outcome.write_more
    take: Take | None = None

    def sent(chunk: bytes) -> bool:
        # What the loop would pass unchanged: whole frames, no usage but null ones.
        if not chunk.endswith(FRAME_ENDS):
            return False
        at = chunk.rfind(_USAGE)
        if at >= 0 and not (_is_null_at(chunk, at + len(_USAGE))
                            and _only_null_usage(chunk, len(chunk))):
            return False
        return write(chunk)  # type: ignore[misc]  # (only taken with a writer)

    while chunk := await read(None if frames.holding else take):
        block = frames.push(chunk)
        if not block:
            continue
        last = block.rfind(_USAGE)  # (from the end: where the usage chunk is)
        if last >= 0:
            block, counted = without_usage(outcome, block, drop_usage, last)
            saw_usage = saw_usage or counted
            if not block:
                continue
        yield block
        if write is not None:
            take = sent
    rest = frames.rest()  # an unterminated tail holds no frame: passed as it is
    if rest:
        yield rest
    if want_usage and not saw_usage:
        outcome.note = "engine sent no usage chunk"


def _is_null_at(block: bytes, value: int) -> bool:
    """Whether the JSON value starting near ``value`` (after ``"usage"``) is ``null``."""
    return block[value:value + 8].lstrip(b": \t").startswith(b"null")


def _only_null_usage(block: bytes, stop: int) -> bool:
    """Whether every ``"usage"`` in ``block[:stop]`` is null (three scans in C)."""
    return block.count(_USAGE, 0, stop) == (block.count(_NULL_USAGE, 0, stop)
                                            + block.count(_NULL_USAGE_SPACED, 0, stop))


def without_usage(outcome: Outcome, block: bytes, drop_usage: bool,
                  last: int | None = None) -> tuple[bytes, bool]:
    """A block with its usage counted (True when it had some), its usage-only chunk taken
    out when the client did not ask for usage. ``last``: where its last ``"usage"`` is.

    Only the frames that name a non-null ``"usage"`` are decoded; every other byte passes
    as it came. The walk goes from the block's end, where engines put the usage chunk, so a
    block that holds a whole answer is scanned once, not once per test: at the first null
    usage (engines that follow OpenAI put ``"usage":null`` in every chunk) three counts in
    C say whether all before it are null too, and the walk stops there.
    """
    at = block.rfind(_USAGE) if last is None else last
    if at < 0:
        return block, False
    nulls_looked = block.startswith(_NULL_USAGE, at) or _is_null_at(block, at + len(_USAGE))
    if nulls_looked and _only_null_usage(block, len(block)):
        return block, False  # a chunk's null (or a block of them): nothing to walk
    sep = frame_end_of(block)
    found: list[tuple[int, int, dict[str, Any]]] = []  # (start, end, chunk), last first
    while at >= 0:
        before = block.rfind(sep, 0, at)
        start = 0 if before < 0 else before + len(sep)
        end = block.find(sep, at)
        if end < 0:
            pass  # in the unterminated tail: passed as it is
        elif not _is_null_at(block, at + len(_USAGE)):
            data = frame_data(block[start:end])
            parsed = decoded(data) if data and _USAGE in data else None
            if isinstance(parsed, dict):
                found.append((start, end + len(sep), parsed))
        elif not nulls_looked:
            nulls_looked = True
            if _only_null_usage(block, end):
                break
        at = block.rfind(_USAGE, 0, start)
    counted = False
    kept: list[bytes] = []
    done = 0  # block[:done] is decided: copied into kept, or dropped
    for start, end, parsed in reversed(found):  # in stream order: the last usage counts
        if outcome.usage(parsed.get("usage")):
            counted = True
            if drop_usage and not parsed.get("choices"):
                kept.append(block[done:start])
                done = end
    if not kept:
        return block, counted
    kept.append(block[done:])
    return b"".join(kept), counted


def usage_asked(raw: bytes, body: dict[str, Any]) -> bytes:
    """The request with ``stream_options.include_usage`` on (in ``body`` too), as bytes.

    Spliced in before the closing brace when the client sent no ``stream_options`` (the
    common case: no re-encoding of a possibly long prompt); else the body re-encoded.
    """
    options = body.get("stream_options") or {}
    spliceable = "stream_options" not in body
    body["stream_options"] = {**options, "include_usage": True}
    end = raw.rstrip()
    if spliceable and end.endswith(b"}"):  # an object with a "model" at least: add a member
        return end[:-1] + b',"stream_options":{"include_usage":true}}'
    return json.dumps(body).encode()


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
