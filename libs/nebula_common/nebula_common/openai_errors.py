"""OpenAI-shaped error bodies, so SDKs surface Nebula's errors like OpenAI's."""

from __future__ import annotations

import json
from typing import Any

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    408: "timeout_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    499: "client_closed_request",
    500: "server_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


def error_body(
    status: int,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
    type: str | None = None,
) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}`` as OpenAI returns it."""
    return {
        "error": {
            "message": message,
            "type": type or _TYPES.get(status, "server_error" if status >= 500 else
                                       "invalid_request_error"),
            "param": param,
            "code": code,
        }
    }


def error_json(status: int, message: str, **kwargs: Any) -> bytes:
    return json.dumps(error_body(status, message, **kwargs)).encode()


def sse_error_event(status: int, message: str, **kwargs: Any) -> bytes:
    """An SSE ``data:`` frame carrying an error: how a broken stream says so.

    The OpenAI SDK raises ``APIError`` when a chunk has an ``error`` member, so
    a stream cut by a dying replica fails loudly instead of ending early.
    """
    return b"data: " + error_json(status, message, **kwargs) + b"\n\n"
