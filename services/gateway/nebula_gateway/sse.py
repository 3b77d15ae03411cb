"""Server-sent events on the byte level: a stream re-cut on frame boundaries, undecoded.

Every streamed answer is re-cut by :class:`SseFrames` (through :func:`sse_blocks`, or
inline in :func:`~.passthrough.pass_frames`, the per-chunk hot loop); the handlers look
into a block's frames only when a cheap byte test says a frame there matters to them
(usage, a final event), so most bytes pass untouched.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any, Protocol

from nebula_common.http_client import HttpClientError, Response
from nebula_common.sse import frame_end, frame_end_of, split_frames

from .outcome import Outcome


class SseFrames:
    """Re-cuts a byte stream on SSE frame boundaries without decoding it.

    Frames end as :func:`nebula_common.sse.split_frames` says (any line-ending style), and
    at most its bound is held back: an engine that frames with ``\\r\\n\\r\\n`` is passed
    on frame by frame instead of being buffered until its end.
    """

    def __init__(self) -> None:
        self._pending = b""

    def push(self, chunk: bytes) -> bytes:
        data = self._pending + chunk if self._pending else chunk
        ready, self._pending = split_frames(data)
        return ready

    def rest(self) -> bytes:
        rest, self._pending = self._pending, b""
        return rest

    @property
    def holding(self) -> bool:
        """A frame's start is held back, waiting for its end."""
        return bool(self._pending)


async def sse_blocks(chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """The stream as blocks of whole frames; an unterminated tail, if any, comes last.

    A block holds every frame complete in what has arrived so far (at least one);
    the tail holds no frame end, so :func:`frames_of` finds no frame in it.
    """
    frames = SseFrames()
    async for chunk in chunks:
        block = frames.push(chunk)
        if block:
            yield block
    rest = frames.rest()
    if rest:
        yield rest


def frames_of(block: bytes) -> list[bytes]:
    """The whole frames of a block, each without its blank line (in the block's own style:
    an engine may frame with ``\\r\\n\\r\\n``)."""
    return block.split(frame_end_of(block))[:-1]


def tail_of(block: bytes) -> bytes:
    """What follows the last whole frame of a block (the stream's unterminated end)."""
    return block[frame_end(block):]


def frame_data(frame: bytes) -> bytes | None:
    """The ``data:`` payload of one SSE frame (joined when on several lines)."""
    lines = [line[5:].lstrip() for line in frame.splitlines() if line.startswith(b"data:")]
    return b"\n".join(lines) if lines else None


def decoded(data: bytes) -> Any:
    """A frame's JSON payload; None when it is not JSON."""
    try:
        return json.loads(data)
    except ValueError:
        return None


Event = dict[str, Any]


class ChatStreamTranslator(Protocol):
    """Chat completion chunks in, another API's stream events out (Responses, Messages)."""

    def start(self) -> list[Event]: ...
    def feed(self, chunk: Event) -> list[Event]: ...
    def finish(self) -> list[Event]: ...
    def fail(self, message: str, code: str | None = None) -> list[Event]: ...


class ChatStreamRelay:
    """A router's chat completions stream through a translator, one block at a time.

    ``ended`` says whether the upstream stream came to an end it said itself (``[DONE]``
    or an error event); otherwise the translator's error event closes the stream. Either
    way the upstream failed, the outcome books a 502 (and why, when reading it broke).
    """

    def __init__(self, translator: ChatStreamTranslator, encode: Callable[[Event], bytes]):
        self.translator = translator
        self.encode = encode
        self.ended = False
        self.failed = False

    def _encoded(self, events: list[Event]) -> bytes:
        return b"".join(self.encode(e) for e in events)

    def _events(self, block: bytes) -> list[Event]:
        out: list[Event] = []
        for frame in frames_of(block):
            data = frame_data(frame)
            if data is None:
                continue
            if data.strip() == b"[DONE]":
                self.ended = True
                out += self.translator.finish()
                continue
            parsed = decoded(data)
            if not isinstance(parsed, dict):
                continue
            if "error" in parsed:
                error = parsed["error"] if isinstance(parsed["error"], dict) else {}
                code = error.get("code")
                out += self.translator.fail(str(error.get("message") or "upstream error"),
                                            code if isinstance(code, str) else None)
                self.ended = self.failed = True
                continue
            out += self.translator.feed(parsed)
        return out

    async def frames(self, upstream: Response, outcome: Outcome
                     ) -> AsyncIterator[bytes]:
        yield self._encoded(self.translator.start())
        try:
            async for block in sse_blocks(upstream.iter_any()):
                out = self._events(block)
                if out:
                    yield self._encoded(out)
        except (HttpClientError, TimeoutError) as exc:
            outcome.note = f"upstream stream broke: {type(exc).__name__}"
        if not self.ended:
            self.failed = True
            yield self._encoded(self.translator.fail(
                "the upstream stream ended before it was complete", "upstream_error"))
        if self.failed:
            outcome.status = 502
