"""What the hot path sends back, and sending it: a router's answer passed on (whole or
streamed), or the OpenAI-shaped error of a refused request."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from nebula_common import openai_errors
from nebula_common.asgi import JSON_CONTENT_TYPE, RawHeaders, Send, send_json
from nebula_common.http_client import HttpClientError, Response

from . import metrics
from .auth import AuthError
from .outcome import Outcome
from .routers import RouterTimeout, RouterUnavailable
from .validation import ValidationError

log = logging.getLogger("nebula.gateway")


class Busy(Exception):
    """The gateway serves ``--max-in-flight`` requests already."""


REFUSALS = (ValidationError, AuthError, RouterUnavailable, RouterTimeout, Busy)
"""What a request can be refused with before its answer starts (see :func:`refusal`)."""

REPLICA_HEADER = "x-nebula-replica"


def response_header_names(expose_replica: bool) -> tuple[str, ...]:
    """Response headers from the router that reach the client; everything else is dropped
    (hop-by-hop, content-length which is recomputed, internal headers). Which replica
    answered is internal unless ``--expose-replica-header``."""
    names = ("content-type", "retry-after")
    return (*names, REPLICA_HEADER) if expose_replica else names


# What a client is told of a router's own 5xx: its text names replicas and their
# addresses, which stay in the gateway's log.
_ROUTER_5XX = {
    "upstream_failed": "the model's replicas failed to answer this request",
    "no_reachable_replica": "no replica of this model is reachable right now",
    "no_ready_replica": "no replica of this model is ready right now",
    "timeout": "no complete answer from the model in time",
}
_ADDRESS = re.compile(r"(?:\b[\w.-]+|\[[0-9a-fA-F:]+\]):\d{2,5}\b|\b(?:\d{1,3}\.){3}\d{1,3}\b")


@dataclass
class Reply:
    """What to send: a whole body, or a stream of chunks from an upstream answer."""

    status: int
    headers: RawHeaders
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None
    upstream: Response | None = None


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
    headers.append((b"retry-after", b"1"))
    if isinstance(exc, RouterUnavailable):  # which routers and why: for the log only
        log.warning("no router reachable", extra={"request_id": outcome.request_id,
                                                  "error": str(exc)})
        return 503, error_bytes(503, "no router reachable", code="router_unavailable"), headers
    if isinstance(exc, Busy):
        return 503, error_bytes(503, str(exc), code="server_busy"), headers
    raise exc


# -- from the router's answer ------------------------------------------------------------

def passthrough_headers(upstream: Response, names: tuple[str, ...]) -> RawHeaders:
    """The router's headers named in ``names`` (lowercase), as they came."""
    wanted = {name.encode() for name in names}
    return [(name, value) for name, value in upstream.headers if name in wanted]


async def buffered(outcome: Outcome, upstream: Response, names: tuple[str, ...]
                   ) -> tuple[int, bytes, RawHeaders]:
    """The router's whole answer (status, body, headers to pass); 502 when it broke."""
    try:
        async with upstream:
            data = await upstream.read()
    except (HttpClientError, TimeoutError) as exc:
        outcome.note = f"upstream failed: {type(exc).__name__}"
        return 502, error_bytes(502, f"upstream failed: {type(exc).__name__}",
                                code="upstream_error"), [JSON_CONTENT_TYPE]
    outcome.first_byte()
    if upstream.status >= 500:
        data = public_error(outcome, upstream.status, data)
    return upstream.status, data, passthrough_headers(upstream, names)


def public_error(outcome: Outcome, status: int, data: bytes) -> bytes:
    """A router's 5xx body with what names the inside (replicas, addresses) taken out;
    the original text goes to the log."""
    try:
        error = json.loads(data)["error"]
        message, code = error["message"], error.get("code")
    except (ValueError, KeyError, TypeError):
        return data  # not an OpenAI error: nothing of the router's own to clean
    if not isinstance(message, str):
        return data
    public = _ROUTER_5XX.get(code) if isinstance(code, str) else None
    if public is None:
        public = _ADDRESS.sub("[internal]", message)
    if public == message:
        return data
    log.warning("router error", extra={"request_id": outcome.request_id, "status": status,
                                       "code": code, "error": message})
    return error_bytes(status, public, param=error.get("param"), code=code,
                       type=error.get("type"))


def stream_reply(upstream: Response, frames: AsyncIterator[bytes],
                 names: tuple[str, ...]) -> Reply:
    headers = [h for h in passthrough_headers(upstream, names) if h[0] != b"content-type"]
    headers.append((b"content-type", upstream.header(b"content-type") or b"text/event-stream"))
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
    stream = reply.stream
    upstream = reply.upstream
    ended = upstream.at_eof if upstream is not None else bool
    rest: list[bytes] = []  # once the router's answer has ended: the rest, sent with the end
    try:
        async for chunk in stream:
            if chunk:
                outcome.first_byte()
                if ended():
                    rest.append(chunk)
                    break
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                break
        async for chunk in stream:  # the same stream on: its first byte is timed already
            if rest or (chunk and ended()):  # nothing left to wait for: sent with the end
                rest.append(chunk)
            elif chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except (HttpClientError, TimeoutError) as exc:
        outcome.status = 502
        outcome.note = f"upstream stream broke: {type(exc).__name__}"
        rest.append(openai_errors.sse_error_event(
            502, "the upstream stream broke before it ended", code="upstream_error"))
    await send({"type": "http.response.body", "body": b"".join(rest), "more_body": False})
