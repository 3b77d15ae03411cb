"""SSE frame ends on the byte level, shared by the router and the gateway.

An SSE event ends with a blank line, in any of the line-ending styles a client splits on
(``\\n\\n``, ``\\r\\n\\r\\n``, ``\\r\\r``). :func:`split_frames` cuts a stream after its
last complete frame, so a frame cut mid-way never reaches a client ahead of an error event,
and holds back at most :data:`MAX_PARTIAL_FRAME` bytes, so a stream framed in a style it
did not expect can never buffer without bound. Pure functions, no IO.
"""

from __future__ import annotations

import json
from typing import Any

FRAME_ENDS = (b"\n\n", b"\r\n\r\n", b"\r\r")
"""The blank line that ends an SSE event, in each line-ending style (as the OpenAI SDK splits)."""

MAX_PARTIAL_FRAME = 1024 * 1024
"""A frame not complete after this many bytes is passed on as it comes (bounded buffering)."""


def frame_end(data: bytes) -> int:
    """The offset just past the last complete SSE frame in ``data`` (0 when there is none)."""
    end = 0
    for sep in FRAME_ENDS:
        at = data.rfind(sep)
        if at >= 0:
            end = max(end, at + len(sep))
    return end


def frame_end_of(block: bytes) -> bytes:
    """The blank line ``block`` ends with (``\\n\\n`` when it ends on none): a block cut by
    :func:`split_frames` ends on a frame end, in the style its stream frames with."""
    for sep in FRAME_ENDS:
        if block.endswith(sep):
            return sep
    return FRAME_ENDS[0]


def split_frames(data: bytes) -> tuple[bytes, bytes]:
    """``data`` -> (the complete frames, to send now; the start of the next, to hold back).

    A partial frame over :data:`MAX_PARTIAL_FRAME` is not held: it is sent as it is.
    """
    if data.endswith(FRAME_ENDS):
        return data, b""
    end = frame_end(data)
    if len(data) - end > MAX_PARTIAL_FRAME:
        return data, b""
    return data[:end], data[end:]


def ends_a_frame(sent: bytes) -> bool:
    """True when the client, having got ``sent`` last, is between frames (or got nothing)."""
    return not sent or sent.endswith(FRAME_ENDS)


def sse_event(event: dict[str, Any]) -> bytes:
    """One named SSE frame (``event: <type>`` then its compact JSON), as the Responses and
    the Anthropic Messages streams frame their events."""
    kind: str = event["type"]
    return (b"event: " + kind.encode() + b"\ndata: "
            + json.dumps(event, separators=(",", ":")).encode() + b"\n\n")
