"""What the hot path sends back, and sending it: a router's answer passed on (whole or
streamed), or the OpenAI-shaped error of a refused request."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp

from nebula_common import openai_errors
from nebula_common.asgi import JSON_CONTENT_TYPE, RawHeaders, Send, send_json

from . import metrics
from .auth import AuthError
from .outcome import Outcome
from .routers import RouterTimeout, RouterUnavailable
from .validation import ValidationError

REFUSALS = (ValidationError, AuthError, RouterUnavailable, RouterTimeout)
"""What a request can be refused with before its answer starts (see :func:`refusal`)."""
# Response headers from the router that reach the client; everything else is dropped
# (hop-by-hop, content-length which is recomputed, internal headers).
_PASS_RESPONSE_HEADERS = ("content-type", "retry-after", "x-nebula-replica")


@dataclass
class Reply:
    """What to send: a whole body, or a stream of chunks from an upstream answer."""

    status: int
    headers: RawHeaders
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None
    upstream: aiohttp.ClientResponse | None = None


def error_bytes(status: int, message: str, **kwargs: Any) -> bytes:
    return openai_errors.error_json(status, message, **kwargs)


def refusal(outcome: Outcome, exc: Exception) -> tuple[int, bytes, RawHeaders]:
    """A refused request's status, OpenAI error body and headers (beside its JSON type)."""
    headers: RawHeaders = []
    if isinstance(exc, ValidationError):
        return exc.status, error_bytes(exc.status, exc.message, param=exc.param,
                                       code=exc.code), headers
    if isinstance(exc, AuthError):
        if exc.status == 429:
            metrics.RATE_LIMITED.labels(outcome.key_label, exc.code).inc()
        if exc.retry_after is not None:
            headers.append((b"retry-after", str(exc.retry_after).encode()))
        return exc.status, error_bytes(exc.status, exc.message, code=exc.code,
                                       type=exc.type), headers
    if isinstance(exc, RouterTimeout):
        return 504, error_bytes(504, str(exc), code="timeout"), headers
    if isinstance(exc, RouterUnavailable):
        headers.append((b"retry-after", b"1"))
        return 503, error_bytes(503, f"no router reachable: {exc}",
                                code="router_unavailable"), headers
    raise exc


# -- from the router's answer ------------------------------------------------------------

def passthrough_headers(upstream: aiohttp.ClientResponse) -> RawHeaders:
    return [(name.encode(), upstream.headers[name].encode("latin-1"))
            for name in _PASS_RESPONSE_HEADERS if name in upstream.headers]


async def buffered(outcome: Outcome, upstream: aiohttp.ClientResponse
                   ) -> tuple[int, bytes, RawHeaders]:
    """The router's whole answer (status, body, headers to pass); 502 when it broke."""
    try:
        async with upstream:
            data = await upstream.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        outcome.note = f"upstream failed: {type(exc).__name__}"
        return 502, error_bytes(502, f"upstream failed: {type(exc).__name__}",
                                code="upstream_error"), [JSON_CONTENT_TYPE]
    outcome.first_byte()
    return upstream.status, data, passthrough_headers(upstream)


def stream_reply(upstream: aiohttp.ClientResponse, frames: AsyncIterator[bytes]) -> Reply:
    headers = [h for h in passthrough_headers(upstream) if h[0] != b"content-type"]
    headers.append((b"content-type", upstream.headers.get(
        "content-type", "text/event-stream").encode("latin-1")))
    headers.append((b"cache-control", b"no-cache"))
    return Reply(upstream.status, headers, stream=frames, upstream=upstream)


# -- sending -----------------------------------------------------------------------------

async def send_error(send: Send, outcome: Outcome, status: int, body: bytes,
                     headers: RawHeaders) -> None:
    outcome.status = status
    await send_json(send, status, body, [*headers, (b"x-request-id",
                                                    outcome.request_id.encode())])


async def send_reply(send: Send, reply: Reply, outcome: Outcome) -> None:
    outcome.status = reply.status
    request_id = (b"x-request-id", outcome.request_id.encode())
    if reply.stream is None:
        headers = [*reply.headers, request_id]
        if not any(name == b"content-length" for name, _ in reply.headers):
            # A sized body goes out in one write instead of chunked plus a terminator write.
            headers.append((b"content-length", str(len(reply.body)).encode()))
        await send({"type": "http.response.start", "status": reply.status,
                    "headers": headers})
        await send({"type": "http.response.body", "body": reply.body, "more_body": False})
        return
    await send({"type": "http.response.start", "status": reply.status,
                "headers": [*reply.headers, request_id]})
    try:
        async for chunk in reply.stream:
            if chunk:
                outcome.first_byte()
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except (aiohttp.ClientError, TimeoutError) as exc:
        outcome.status = 502
        outcome.note = f"upstream stream broke: {type(exc).__name__}"
        await send({"type": "http.response.body", "more_body": True,
                    "body": openai_errors.sse_error_event(
                        502, "the upstream stream broke before it ended",
                        code="upstream_error")})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
