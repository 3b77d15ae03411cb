"""The hot path: POSTs on the OpenAI paths, served as raw ASGI (no framework objects).

Order of checks on every request: API key (401) -> body size, JSON and fields
(400/413/408) -> model placed (404) -> model allowed for the key (403) -> rate
and concurrency (429) -> forward to a router. Nothing reaches a router unless
every check passed. Pass-through answers stream the router's bytes untouched
(re-cut only on SSE frame boundaries); only frames that carry usage are decoded.
Each request is finished exactly once (metrics, access log, span, key slot),
when its last byte was sent or its client went away.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from nebula_common import openai_errors
from nebula_common.asgi import DisconnectWatcher
from nebula_common.tracing import setup_tracing, tracing_enabled

from . import metrics
from .auth import ApiKey, Authenticator, AuthError
from .proxy import ModelCatalog, ModelInfo, RouterPool, RouterTimeout, RouterUnavailable
from .responses_translate import (
    ResponseStore,
    StoredResponse,
    StreamTranslator,
    chat_to_response,
    expand_previous,
    responses_to_chat,
    sse_event,
)
from .validation import ValidationError, validate

access_log = logging.getLogger("nebula.gateway.access")
log = logging.getLogger("nebula.gateway")

POST_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings",
                        "/v1/responses"})
NATIVE_RESPONSES_ENGINES = frozenset({"vllm", "sim"})
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
# Response headers from the router that reach the client; everything else is dropped
# (hop-by-hop, content-length which is recomputed, internal headers).
_PASS_RESPONSE_HEADERS = ("content-type", "retry-after", "x-nebula-replica")
# Request headers forwarded to the router besides the ones the gateway sets itself.
_PASS_REQUEST_HEADERS = ("x-session-id", "x-nebula-session", "user-agent")
_JSON = (b"content-type", b"application/json")
_DECODER = json.JSONDecoder()


@dataclass
class GatewayConfig:
    router_urls: list[str]
    max_body_bytes: int = 4 * 1024 * 1024
    request_timeout: float = 600.0
    body_timeout: float = 30.0
    models_cache_seconds: float = 2.0
    store_responses: int = 1024
    default_rpm: int = 0
    default_concurrency: int = 0
    keys: dict[str, ApiKey] = field(default_factory=dict)
    access_log: bool = True


def request_id_from(headers: Mapping[str, str]) -> str:
    """The caller's ``x-request-id`` when it is sane, else a fresh one."""
    incoming = headers.get("x-request-id")
    if incoming and _REQUEST_ID.match(incoming):
        return incoming
    return uuid.uuid4().hex


def error_bytes(status: int, message: str, **kwargs: Any) -> bytes:
    return openai_errors.error_json(status, message, **kwargs)


class ClientGone(Exception):
    """The client disconnected before its request body was complete."""


class Outcome:
    """One request's bookkeeping: metrics, access log, span, limits; finished once."""

    def __init__(self, gateway: Gateway, endpoint: str, method: str, request_id: str,
                 span: trace.Span, caller_trace_id: str | None):
        self.gateway = gateway
        self.endpoint = endpoint
        self.method = method
        self.request_id = request_id
        self.span = span
        self.caller_trace_id = caller_trace_id
        self.start = time.perf_counter()
        self.status = 500
        self.model = "unknown"
        self.key: ApiKey | None = None
        self.holds_slot = False
        self.ttft: float | None = None
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.note: str | None = None
        self.finished = False
        metrics.IN_FLIGHT.inc()

    @property
    def key_label(self) -> str:
        return self.key.label if self.key is not None else "anonymous"

    def first_byte(self) -> None:
        if self.ttft is None:
            self.ttft = time.perf_counter() - self.start

    def usage(self, usage: Any) -> bool:
        """Count the engine's usage (chat or Responses naming); False when there is none."""
        if not isinstance(usage, dict):
            return False
        try:
            if "input_tokens" in usage:
                self.prompt_tokens = int(usage.get("input_tokens") or 0)
                self.completion_tokens = int(usage.get("output_tokens") or 0)
            else:
                self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                self.completion_tokens = int(usage.get("completion_tokens") or 0)
        except (TypeError, ValueError):
            return False
        return True

    def finish(self, status: int | None = None) -> None:
        if self.finished:
            return
        self.finished = True
        if status is not None:
            self.status = status
        status = self.status
        elapsed = time.perf_counter() - self.start
        if self.holds_slot:
            self.gateway.auth.release(self.key)
        metrics.IN_FLIGHT.dec()
        metrics.REQUESTS.labels(self.endpoint, self.model, str(status)).inc()
        metrics.DURATION.labels(self.endpoint, self.model).observe(elapsed)
        if self.ttft is not None:
            metrics.TTFT.labels(self.endpoint, self.model).observe(self.ttft)
        if self.prompt_tokens is not None:
            metrics.PROMPT_TOKENS.labels(self.model, self.key_label).inc(self.prompt_tokens)
            metrics.COMPLETION_TOKENS.labels(self.model, self.key_label).inc(
                self.completion_tokens or 0)
        span = self.span
        ctx = span.get_span_context()
        if span.is_recording():
            span.set_attribute("http.response.status_code", status)
            span.set_attribute("gen_ai.request.model", self.model)
            if self.prompt_tokens is not None:
                span.set_attribute("gen_ai.usage.input_tokens", self.prompt_tokens)
                span.set_attribute("gen_ai.usage.output_tokens", self.completion_tokens or 0)
            if self.ttft is not None:
                span.set_attribute("nebula.ttft_ms", round(self.ttft * 1000, 1))
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            span.end()
        if self.gateway.config.access_log and access_log.isEnabledFor(logging.INFO):
            access_log.info("request", extra={
                "request_id": self.request_id,
                "trace_id": format(ctx.trace_id, "032x") if ctx.is_valid
                else self.caller_trace_id,
                "method": self.method, "path": self.endpoint, "model": self.model,
                "key": self.key_label, "status": status,
                "latency_ms": round(elapsed * 1000, 1),
                "ttft_ms": round(self.ttft * 1000, 1) if self.ttft is not None else None,
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                **({"note": self.note} if self.note else {}),
            })


@dataclass
class Reply:
    """What to send: a whole body, or a stream of chunks from an upstream answer."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None
    upstream: aiohttp.ClientResponse | None = None


class SseFrames:
    """Re-cuts a byte stream on SSE frame boundaries (``\\n\\n``) without decoding it."""

    def __init__(self) -> None:
        self._pending = b""

    def push(self, chunk: bytes) -> bytes:
        data = self._pending + chunk if self._pending else chunk
        cut = data.rfind(b"\n\n")
        if cut < 0:
            self._pending = data
            return b""
        self._pending = data[cut + 2:]
        return data[:cut + 2]

    def rest(self) -> bytes:
        rest, self._pending = self._pending, b""
        return rest


def frame_data(frame: bytes) -> bytes | None:
    """The ``data:`` payload of one SSE frame (joined when on several lines)."""
    lines = [line[5:].lstrip() for line in frame.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(lines) if lines else None


def usage_of(data: bytes) -> dict[str, Any] | None:
    """The top-level ``usage`` object of a JSON answer without decoding all of it.

    Engines put ``usage`` last, after the (possibly large: embeddings) payload, so the
    object is cut out from the last ``"usage"`` and decoded alone; anything odd falls
    back to decoding the whole body.
    """
    at = data.rfind(b'"usage"')
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
    try:
        parsed = json.loads(data)
    except ValueError:
        return None
    usage = parsed.get("usage") if isinstance(parsed, dict) else None
    return usage if isinstance(usage, dict) else None


class Gateway:
    """Shared state (routers, model catalog, keys, stored responses) and the hot path."""

    def __init__(self, config: GatewayConfig):
        self.config = config
        self.pool = RouterPool(config.router_urls, request_timeout=config.request_timeout)
        self.catalog = ModelCatalog(self.pool, config.models_cache_seconds)
        self.auth = Authenticator(config.keys, config.default_rpm, config.default_concurrency)
        self.store = ResponseStore(config.store_responses)
        self.tracer = setup_tracing("gateway")
        self.tracing = tracing_enabled()

    # -- bookkeeping ---------------------------------------------------------------------
    def begin(self, endpoint: str, method: str, headers: Mapping[str, str]) -> Outcome:
        request_id = request_id_from(headers)
        parent = headers.get("traceparent", "")
        caller_trace = parent.split("-")[1][:32] if parent.count("-") == 3 else None
        if self.tracing:
            span = self.tracer.start_span(
                "gateway.request", context=propagate.extract(dict(headers)),
                kind=SpanKind.SERVER, attributes={"http.request.method": method,
                                                  "url.path": endpoint,
                                                  "nebula.request_id": request_id})
        else:
            span = trace.INVALID_SPAN
        return Outcome(self, endpoint, method, request_id, span, caller_trace)

    def authenticate(self, outcome: Outcome, headers: Mapping[str, str]) -> None:
        try:
            outcome.key = self.auth.authenticate(headers.get("authorization"))
        except AuthError as exc:
            metrics.AUTH_FAILURES.labels(exc.code).inc()
            raise

    def error_reply(self, outcome: Outcome, exc: Exception) -> Reply:
        """The OpenAI-shaped answer to a refused request."""
        headers = [_JSON]
        if isinstance(exc, ValidationError):
            body = error_bytes(exc.status, exc.message, param=exc.param, code=exc.code)
            status = exc.status
        elif isinstance(exc, AuthError):
            if exc.status == 429:
                metrics.RATE_LIMITED.labels(outcome.key_label, exc.code).inc()
            body = error_bytes(exc.status, exc.message, code=exc.code, type=exc.type)
            status = exc.status
            if exc.retry_after is not None:
                headers.append((b"retry-after", str(exc.retry_after).encode()))
        elif isinstance(exc, RouterTimeout):
            status = 504
            body = error_bytes(504, str(exc), code="timeout")
        elif isinstance(exc, RouterUnavailable):
            status = 503
            body = error_bytes(503, f"no router reachable: {exc}", code="router_unavailable")
            headers.append((b"retry-after", b"1"))
        else:
            raise exc
        return Reply(status, headers, body)

    def upstream_headers(self, outcome: Outcome, headers: Mapping[str, str]) -> dict[str, str]:
        out = {"content-type": "application/json", "x-request-id": outcome.request_id}
        for name in _PASS_REQUEST_HEADERS:
            value = headers.get(name)
            if value:
                out[name] = value
        if outcome.span.get_span_context().is_valid:
            propagate.inject(out, context=trace.set_span_in_context(outcome.span))
        else:  # tracing off here: still hand the caller's trace on to the router
            for name in ("traceparent", "tracestate"):
                value = headers.get(name)
                if value:
                    out[name] = value
        return out

    # -- ASGI ----------------------------------------------------------------------------
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            headers[name.decode("latin-1")] = value.decode("latin-1")
        path = scope["path"]
        outcome = self.begin(path, "POST", headers)
        watcher: DisconnectWatcher | None = None
        reply: Reply | None = None
        started = [False]
        try:
            try:
                try:
                    self.authenticate(outcome, headers)
                    raw = await self.read_body(receive, headers)
                    watcher = DisconnectWatcher(receive)
                    reply = await self.handle(path, headers, raw, outcome)
                except (ValidationError, AuthError, RouterUnavailable, RouterTimeout) as exc:
                    reply = self.error_reply(outcome, exc)
                await self.send_reply(send, reply, outcome, started)
            except ClientGone:
                outcome.note = "client disconnected while sending the body"
                outcome.status = 499
            except asyncio.CancelledError:
                if watcher is None or not watcher.absorb():
                    raise
                outcome.note = "client disconnected"
                outcome.status = 499
            except Exception:  # never a traceback to the client
                log.exception("unhandled error", extra={"request_id": outcome.request_id})
                outcome.status = 500
                if not started[0]:
                    await self.send_whole(send, 500, [_JSON], error_bytes(
                        500, "internal error in the gateway", code="internal_error"),
                        outcome)
        finally:
            if watcher is not None:
                watcher.stop()
            if reply is not None and reply.upstream is not None:
                if outcome.status == 200 and not (watcher and watcher.disconnected):
                    reply.upstream.release()
                else:
                    reply.upstream.close()  # drop the connection: the router cancels upstream
            outcome.finish()

    async def read_body(self, receive: Any, headers: Mapping[str, str]) -> bytes:
        limit = self.config.max_body_bytes
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise ValidationError(413, f"request body is {length} bytes; the limit is {limit}",
                                  None, "request_too_large")
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.config.body_timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise ClientGone
                    chunk = message.get("body", b"")
                    if chunk:
                        size += len(chunk)
                        if size > limit:
                            raise ValidationError(413, f"request body exceeds {limit} bytes",
                                                  None, "request_too_large")
                        chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            raise ValidationError(408, f"request body not received within "
                                  f"{self.config.body_timeout:g}s", None,
                                  "body_timeout") from None
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def send_whole(self, send: Any, status: int, headers: list[tuple[bytes, bytes]],
                         body: bytes, outcome: Outcome) -> None:
        outcome.status = status
        extra = [(b"x-request-id", outcome.request_id.encode())]
        if not any(name == b"content-length" for name, _ in headers):
            # A sized body goes out in one write instead of chunked plus a terminator write.
            extra.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status,
                    "headers": [*headers, *extra]})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def send_reply(self, send: Any, reply: Reply, outcome: Outcome,
                         started: list[bool]) -> None:
        if reply.stream is None:
            started[0] = True
            await self.send_whole(send, reply.status, reply.headers, reply.body, outcome)
            return
        outcome.status = reply.status
        started[0] = True
        await send({"type": "http.response.start", "status": reply.status,
                    "headers": [*reply.headers,
                                (b"x-request-id", outcome.request_id.encode())]})
        try:
            async for chunk in reply.stream:
                if chunk:
                    outcome.first_byte()
                    await send({"type": "http.response.body", "body": chunk,
                                "more_body": True})
        except (aiohttp.ClientError, TimeoutError) as exc:
            outcome.status = 502
            outcome.note = f"upstream stream broke: {type(exc).__name__}"
            await send({"type": "http.response.body", "more_body": True,
                        "body": openai_errors.sse_error_event(
                            502, "the upstream stream broke before it ended",
                            code="upstream_error")})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    # -- request handling ----------------------------------------------------------------
    async def admit(self, endpoint: str, raw: bytes, outcome: Outcome
                    ) -> tuple[dict[str, Any], ModelInfo]:
        body = validate(endpoint, raw, self.config.max_body_bytes)
        info = await self.catalog.lookup(body["model"])
        if info is None:
            raise ValidationError(404, f"The model `{body['model']}` does not exist or is not "
                                  "placed on any node.", "model", "model_not_found")
        outcome.model = info.id
        key = outcome.key
        if key is not None and not (key.allows(info.id) or key.allows(info.model_uid)):
            self.auth.check_model(key, info.id)  # raises the 403
        self.auth.acquire(key)
        outcome.holds_slot = True
        return body, info

    async def forward(self, outcome: Outcome, headers: Mapping[str, str], path: str,
                      data: bytes) -> aiohttp.ClientResponse:
        return await self.pool.request("POST", path, data=data,
                                       headers=self.upstream_headers(outcome, headers))

    @staticmethod
    def passthrough_headers(upstream: aiohttp.ClientResponse) -> list[tuple[bytes, bytes]]:
        return [(name.encode(), upstream.headers[name].encode("latin-1"))
                for name in _PASS_RESPONSE_HEADERS if name in upstream.headers]

    async def buffered(self, outcome: Outcome, upstream: aiohttp.ClientResponse
                       ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        try:
            async with upstream:
                data = await upstream.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            outcome.note = f"upstream failed: {type(exc).__name__}"
            return 502, error_bytes(502, f"upstream failed: {type(exc).__name__}",
                                    code="upstream_error"), [_JSON]
        outcome.first_byte()
        return upstream.status, data, self.passthrough_headers(upstream)

    def stream_reply(self, upstream: aiohttp.ClientResponse,
                     frames: AsyncIterator[bytes]) -> Reply:
        headers = self.passthrough_headers(upstream)
        headers = [h for h in headers if h[0] != b"content-type"]
        headers.append((b"content-type", upstream.headers.get(
            "content-type", "text/event-stream").encode("latin-1")))
        headers.append((b"cache-control", b"no-cache"))
        return Reply(upstream.status, headers, stream=frames, upstream=upstream)

    async def handle(self, path: str, headers: Mapping[str, str], raw: bytes,
                     outcome: Outcome) -> Reply:
        if path == "/v1/responses":
            return await self.responses(headers, raw, outcome)
        return await self.chat_like(path, headers, raw, outcome)

    async def chat_like(self, path: str, headers: Mapping[str, str], raw: bytes,
                        outcome: Outcome) -> Reply:
        body, _info = await self.admit(path, raw, outcome)
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
        upstream = await self.forward(outcome, headers, path, raw)
        if stream and upstream.status == 200 and \
                upstream.content_type == "text/event-stream":
            return self.stream_reply(upstream, self.pass_frames(outcome, upstream, drop_usage,
                                                                want_usage))
        status, data, out_headers = await self.buffered(outcome, upstream)
        if status == 200:
            outcome.usage(usage_of(data))
        return Reply(status, out_headers, data)

    async def pass_frames(self, outcome: Outcome, upstream: aiohttp.ClientResponse,
                          drop_usage: bool, want_usage: bool) -> AsyncIterator[bytes]:
        """Chat/completions SSE: bytes through; usage chunks read, dropped if not asked."""
        frames = SseFrames()
        saw_usage = False
        async for chunk in upstream.content.iter_any():
            block = frames.push(chunk)
            if not block:
                continue
            if b'"usage"' not in block:
                yield block
                continue
            kept: list[bytes] = []
            for frame in block.split(b"\n\n")[:-1]:
                data = frame_data(frame)
                if data and b'"usage"' in data:
                    try:
                        parsed = json.loads(data)
                    except ValueError:
                        parsed = None
                    if isinstance(parsed, dict) and outcome.usage(parsed.get("usage")):
                        saw_usage = True
                        if drop_usage and not parsed.get("choices"):
                            continue
                kept.append(frame + b"\n\n")
            if kept:
                yield b"".join(kept)
        rest = frames.rest()
        if rest:
            yield rest
        if want_usage and not saw_usage:
            outcome.note = "engine sent no usage chunk"

    # -- /v1/responses -------------------------------------------------------------------
    def remember(self, body: dict[str, Any], items: list[dict[str, Any]],
                 response: dict[str, Any]) -> None:
        if body.get("store") is False or not isinstance(response.get("id"), str):
            return
        self.store.put(response["id"],
                       StoredResponse(items, list(response.get("output") or [])))

    async def responses(self, headers: Mapping[str, str], raw: bytes,
                        outcome: Outcome) -> Reply:
        body, info = await self.admit("/v1/responses", raw, outcome)
        items = expand_previous(body, self.store)
        native = info.engine in NATIVE_RESPONSES_ENGINES
        if outcome.span.is_recording():
            outcome.span.set_attribute("nebula.responses.translated", not native)
        if native:
            if body.get("previous_response_id"):
                # a replica may not have the previous turn: send the whole conversation
                forwarded = {**body, "input": items}
                forwarded.pop("previous_response_id")
                raw = json.dumps(forwarded).encode()
            upstream = await self.forward(outcome, headers, "/v1/responses", raw)
        else:
            chat = responses_to_chat(body, items)
            upstream = await self.forward(outcome, headers, "/v1/chat/completions",
                                          json.dumps(chat).encode())
        if body.get("stream") is True and upstream.status == 200 and \
                upstream.content_type == "text/event-stream":
            frames = (self.native_frames(outcome, upstream, body, items) if native
                      else self.translated_frames(outcome, upstream, body, items))
            reply = self.stream_reply(upstream, frames)
            return reply
        status, data, out_headers = await self.buffered(outcome, upstream)
        if status != 200:
            return Reply(status, out_headers, data)
        try:
            parsed = json.loads(data)
        except ValueError:
            return Reply(502, [_JSON], error_bytes(502, "the engine answered with invalid "
                                                   "JSON", code="upstream_error"))
        if native:
            response = parsed
            if body.get("previous_response_id") and isinstance(response, dict):
                response["previous_response_id"] = body["previous_response_id"]
                data = json.dumps(response).encode()
        else:
            response = chat_to_response(parsed, body)
            data = json.dumps(response).encode()
        if isinstance(response, dict):
            outcome.usage(response.get("usage"))
            self.remember(body, items, response)
        return Reply(200, [h for h in out_headers if h[0] != b"content-type"] + [_JSON], data)

    async def native_frames(self, outcome: Outcome, upstream: aiohttp.ClientResponse,
                            body: dict[str, Any], items: list[dict[str, Any]]
                            ) -> AsyncIterator[bytes]:
        """Native Responses SSE: bytes through; the final event is read for store + usage."""
        frames = SseFrames()
        async for chunk in upstream.content.iter_any():
            block = frames.push(chunk)
            if not block:
                continue
            if b"response.completed" in block or b"response.incomplete" in block:
                for frame in block.split(b"\n\n")[:-1]:
                    data = frame_data(frame)
                    if not data or (b"response.completed" not in data
                                    and b"response.incomplete" not in data):
                        continue
                    try:
                        event = json.loads(data)
                    except ValueError:
                        continue
                    response = event.get("response") if isinstance(event, dict) else None
                    if isinstance(response, dict) and event.get("type") in (
                            "response.completed", "response.incomplete"):
                        outcome.usage(response.get("usage"))
                        self.remember(body, items, response)
            yield block
        rest = frames.rest()
        if rest:
            yield rest

    async def translated_frames(self, outcome: Outcome, upstream: aiohttp.ClientResponse,
                                body: dict[str, Any], items: list[dict[str, Any]]
                                ) -> AsyncIterator[bytes]:
        """Chat completion chunks in, the Responses event sequence out."""
        translator = StreamTranslator(body)
        yield b"".join(sse_event(e) for e in translator.start())
        frames = SseFrames()
        done = False
        async for chunk in upstream.content.iter_any():
            block = frames.push(chunk)
            if not block:
                continue
            out: list[dict[str, Any]] = []
            for frame in block.split(b"\n\n")[:-1]:
                data = frame_data(frame)
                if data is None:
                    continue
                if data.strip() == b"[DONE]":
                    done = True
                    out += translator.finish()
                    continue
                try:
                    parsed = json.loads(data)
                except ValueError:
                    continue
                if isinstance(parsed, dict) and "error" in parsed:
                    error = parsed["error"] if isinstance(parsed["error"], dict) else {}
                    out += translator.fail(str(error.get("message") or "upstream error"),
                                           error.get("code"))
                    outcome.status = 502
                    done = True
                    continue
                if isinstance(parsed, dict):
                    out += translator.feed(parsed)
            if out:
                yield b"".join(sse_event(e) for e in out)
        if not done:
            outcome.status = 502
            yield b"".join(sse_event(e) for e in translator.fail(
                "the upstream stream ended before it was complete", "upstream_error"))
            return
        response = translator.response
        if not outcome.usage(response.get("usage")):
            outcome.note = "engine sent no usage"
        self.remember(body, items, response)
