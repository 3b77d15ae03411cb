"""What the proxy reads in an upstream's bytes: refusals of the request, and SSE frame ends.

Pure functions (no IO), so the rules are unit-tested on their own:

- :func:`refuses_request`: a 5xx answer that says the *request* cannot be served
  (llama.cpp's server asked for embeddings it was not started for, a feature the
  engine does not implement). Another replica of the same model would say the same,
  so the proxy passes such an answer through and neither retries it nor counts it
  against the replica.
- :func:`split_frames`: the bytes of an SSE stream up to the last complete frame,
  with any of the frame ends a client splits on (``\\n\\n``, ``\\r\\n\\r\\n``, ``\\r\\r``),
  so a frame cut mid-way never reaches the client ahead of an error event.
"""

from __future__ import annotations

import json
import re

ERROR_HEAD_BYTES = 64 * 1024
"""How much of an upstream error answer is read to judge it (the rest is passed on)."""

FRAME_ENDS = (b"\n\n", b"\r\n\r\n", b"\r\r")
"""The blank line that ends an SSE event, in each line-ending style (as the OpenAI SDK splits)."""

MAX_PARTIAL_FRAME = 1024 * 1024
"""A frame not complete after this many bytes is passed on as it comes (bounded buffering)."""

REQUEST_ERROR_TYPES = frozenset({
    "invalid_request_error", "not_supported_error",  # OpenAI, llama.cpp's server
    "BadRequestError", "NotFoundError", "NotImplementedError",  # vLLM's ErrorResponse types
})
REQUEST_ERROR_CODES = frozenset({400, 404, 422, 501, "400", "404", "422", "501"})
NOT_SUPPORTED = re.compile(
    r"not supported|does not support|not implemented|must be created with embedding=true",
    re.IGNORECASE)
"""Engine messages that refuse a feature, e.g. llama-cpp-python's embeddings without
``--embedding``: "Llama model must be created with embedding=True to call this method"."""


def refuses_request(status: int, body: bytes) -> bool:
    """True when a 5xx answer says the request itself cannot be served.

    501 always does. A 500 does when its body is an OpenAI- or vLLM-shaped error whose
    type or code is a client error, or whose message refuses a feature. Anything else
    (another 5xx, a traceback, an empty body) is the replica's fault.
    """
    if status == 501:
        return True
    if status != 500 or not body:
        return False
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return False
    if not isinstance(data, dict):
        return False
    error = data.get("error", data)  # vLLM's older ErrorResponse has no "error" wrapper
    if isinstance(error, str):
        return NOT_SUPPORTED.search(error) is not None
    if not isinstance(error, dict):
        return False
    if error.get("type") in REQUEST_ERROR_TYPES:
        return True
    code = error.get("code")
    if isinstance(code, int | str) and code in REQUEST_ERROR_CODES:
        return True
    message = error.get("message")
    return isinstance(message, str) and NOT_SUPPORTED.search(message) is not None


def frame_end(data: bytes) -> int:
    """The offset just past the last complete SSE frame in ``data`` (0 when there is none)."""
    end = 0
    for sep in FRAME_ENDS:
        at = data.rfind(sep)
        if at >= 0:
            end = max(end, at + len(sep))
    return end


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
