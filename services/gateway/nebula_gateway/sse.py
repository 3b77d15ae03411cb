"""Server-sent events on the byte level: a stream re-cut on frame boundaries, undecoded.

Every streamed answer goes through :func:`sse_blocks` (the one frame iterator);
the handlers look into a block's frames only when a cheap byte test says a frame
there matters to them (usage, a final event), so most bytes pass untouched.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from nebula_common.sse import split_frames

FRAME_END = b"\n\n"


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
    """The whole frames of a block, each without its ``\\n\\n``."""
    return block.split(FRAME_END)[:-1]


def tail_of(block: bytes) -> bytes:
    """What follows the last whole frame of a block (the stream's unterminated end)."""
    return block[block.rfind(FRAME_END) + 2:] if FRAME_END in block else block


def frame_data(frame: bytes) -> bytes | None:
    """The ``data:`` payload of one SSE frame (joined when on several lines)."""
    lines = [line[5:].lstrip() for line in frame.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(lines) if lines else None


def decoded(data: bytes) -> Any:
    """A frame's JSON payload; None when it is not JSON."""
    try:
        return json.loads(data)
    except ValueError:
        return None
