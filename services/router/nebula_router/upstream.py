"""What the proxy reads in an upstream's error answer: does it refuse the request itself?

A pure function (no IO), so the rule is unit-tested on its own (SSE frame ends, which the
proxy also needs, are :mod:`nebula_common.sse`, shared with the gateway).

- :func:`refuses_request`: a 5xx answer that says the *request* cannot be served
  (llama.cpp's server asked for embeddings it was not started for, a feature the
  engine does not implement). Another replica of the same model would say the same,
  so the proxy passes such an answer through and neither retries it nor counts it
  against the replica.
"""

from __future__ import annotations

import json
import re

ERROR_HEAD_BYTES = 64 * 1024
"""How much of an upstream error answer is read to judge it (the rest is passed on)."""

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
