"""The hot path: POSTs on the OpenAI paths, served as raw ASGI (no framework objects).

Order of checks on every request, cheapest first: requests in flight on this
gateway (503) -> API key (401) -> the key's rate and concurrency (429) -> body
size and time (413/408) -> JSON and fields (400) -> media URLs (400) -> model
placed (404) -> model allowed for the key (403) -> the key's tokens per minute and
budget, reserved (429; settled on the engine's usage once the request ended, :mod:`tenancy`)
-> forward to a router, with the
model uid the key was allowed, the key's name as the tenant and its priority.
Nothing reaches a router unless every check passed, and nothing is read or
parsed for a caller over its limits. The answer is the endpoint's handler's: chat, completions
and embeddings pass through (:mod:`passthrough`), Responses are served natively
or translated (:mod:`responses`). Each request is finished exactly once
(:class:`~.outcome.Outcome`), when its last byte was sent or its client went away.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from opentelemetry import propagate, trace

from nebula_common.asgi import (
    BodyTooLarge,
    ClientGone,
    DisconnectWatcher,
    Receive,
    Scope,
    Send,
    body_writer,
    declared_length,
    read_body,
)
from nebula_common.capabilities import refusal as capability_refusal
from nebula_common.deadline import Deadline
from nebula_common.http_client import Response
from nebula_common.tracing import setup_tracing, tracing_enabled

from . import messages, metrics, passthrough, responses, tokens
from .auth import Authenticator, AuthError
from .catalog import ModelCatalog, ModelInfo
from .config import GatewayConfig
from .media import MARKER, media_problem
from .outcome import Outcome
from .reply import (
    REFUSALS,
    Busy,
    Reply,
    error_bytes,
    refusal,
    response_header_names,
    send_error,
    send_reply,
)
from .routers import RouterPool
from .state import open_state
from .tenancy import Tenancy
from .validation import ValidationError, validate

log = logging.getLogger("nebula.gateway")

# Request headers forwarded to the router besides the ones the gateway sets itself.
_PASS_REQUEST_HEADERS = ("x-session-id", "x-nebula-session", "user-agent")
MODEL_UID_HEADER = "x-nebula-model-uid"
TENANT_HEADER = "x-nebula-tenant"
PRIORITY_HEADER = "x-nebula-priority"

Handler = Callable[["Gateway", str, Mapping[str, str], bytes, Outcome], Awaitable[Reply]]
HANDLERS: dict[str, Handler] = {
    "/v1/chat/completions": passthrough.handle,
    "/v1/completions": passthrough.handle,
    "/v1/embeddings": passthrough.handle,
    "/v1/responses": responses.handle,
    "/v1/messages": messages.handle,
    "/v1/messages/count_tokens": messages.count_tokens,
    "/tokenize": tokens.handle,
    "/detokenize": tokens.handle,
    "/v1/rerank": passthrough.handle,  # (refused by PATH_NEEDS where not declared)
    "/rerank": passthrough.handle,
    "/v1/score": passthrough.handle,
}
"""Who answers each OpenAI POST path once the request is admitted."""


class Gateway:
    """Shared state (routers, model catalog, keys, stored responses) and the ASGI entry."""

    def __init__(self, config: GatewayConfig):
        self.config = config
        self.pool = RouterPool(config.router_urls, request_timeout=config.request_timeout)
        self.catalog = ModelCatalog(self.pool, config.models_cache_seconds,
                                    config.models_stale_seconds)
        self.auth = Authenticator(config.keys, config.default_rpm, config.default_concurrency,
                                  anonymous_rpm=config.anonymous_rpm,
                                  anonymous_concurrency=config.anonymous_concurrency,
                                  require_keys=config.watch_keys is not None)
        # token holds, usage and stored responses (SQLite, or Redis shared by gateways)
        self.state = open_state(config.state_url, config.state_dir, config.response_limits,
                                fail_open=config.state_fail_open)
        self.tenancy = Tenancy(self.state, request_timeout=config.request_timeout,
                               default_max_tokens=config.default_max_tokens)
        self.response_headers = response_header_names(config.expose_replica_header)
        self.max_in_flight = config.max_in_flight or sys.maxsize
        self.in_flight = 0
        self.tracer = setup_tracing("gateway")
        self.tracing = tracing_enabled()

    # -- bookkeeping ---------------------------------------------------------------------
    def begin(self, endpoint: str, method: str, headers: Mapping[str, str]) -> Outcome:
        return Outcome.begin(endpoint, method, headers, auth=self.auth,
                             log_access=self.config.access_log,
                             tracer=self.tracer if self.tracing else None)

    def authenticate(self, outcome: Outcome, headers: Mapping[str, str]) -> None:
        try:
            outcome.key = self.auth.authenticate(headers.get("authorization"),
                                                 headers.get("x-api-key"))
        except AuthError as exc:
            metrics.AUTH_FAILURES.labels(exc.code).inc()
            raise

    # -- ASGI ----------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            headers[name.decode("latin-1")] = value.decode("latin-1")
        path: str = scope["path"]
        outcome = self.begin(path, "POST", headers)
        outcome.write_more = body_writer(scope)
        watcher: DisconnectWatcher | None = None
        reply: Reply | None = None
        started = False
        self.in_flight += 1
        try:
            try:
                try:
                    if self.in_flight > self.max_in_flight:
                        raise Busy(f"this gateway is serving {self.max_in_flight} requests "
                                   "already; retry shortly")
                    self.authenticate(outcome, headers)
                    self.auth.acquire(outcome.key)  # before the body is read: 429 is cheap
                    outcome.holds_slot = True
                    raw = await self.read_body(receive, headers)
                    watcher = DisconnectWatcher(receive)
                    reply = await HANDLERS[path](self, path, headers, raw, outcome)
                except REFUSALS as exc:
                    started = True
                    status, body, extra = refusal(outcome, exc)
                    await send_error(send, outcome, status, messages.anthropic_error(
                        path, status, body, outcome.request_id), extra)
                else:
                    started = True
                    await send_reply(send, reply, outcome)
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
                if not started:
                    await send_error(send, outcome, 500, messages.anthropic_error(
                        path, 500, error_bytes(500, "internal error in the gateway",
                                               code="internal_error"), outcome.request_id),
                        [])
        finally:
            self.in_flight -= 1
            if watcher is not None:
                watcher.stop()
            if reply is not None and reply.upstream is not None:
                if outcome.status == 200 and not (watcher and watcher.disconnected):
                    reply.upstream.release()
                else:
                    reply.upstream.close()  # drop the connection: the router cancels upstream
            outcome.finish()
            await self.tenancy.finish(outcome)  # settles its token hold, counts its usage

    async def read_body(self, receive: Receive, headers: Mapping[str, str]) -> bytes:
        """The whole body within the size and time limits (413, 408), or ClientGone."""
        limit, seconds = self.config.max_body_bytes, self.config.body_timeout
        try:
            async with Deadline(asyncio.get_running_loop(), seconds):
                return await read_body(receive, limit,
                                       declared_length(headers.get("content-length")))
        except BodyTooLarge as exc:
            message = (f"request body is {exc.declared} bytes; the limit is {limit}"
                       if exc.declared is not None else f"request body exceeds {limit} bytes")
            raise ValidationError(413, message, None, "request_too_large") from None
        except TimeoutError:
            raise ValidationError(408, f"request body not received within {seconds:g}s",
                                  None, "body_timeout") from None

    # -- for the handlers ----------------------------------------------------------------
    async def admit(self, endpoint: str, raw: bytes, outcome: Outcome
                    ) -> tuple[dict[str, Any], ModelInfo]:
        """The validated body and its placed model, once every check passed."""
        body = validate(endpoint, raw, self.config.max_body_bytes)
        if MARKER in raw:
            problem = media_problem(endpoint, body, self.config.media)
            if problem is not None:
                raise ValidationError(400, problem[1], problem[0], "media_url_not_allowed")
        info = await self.catalog.lookup(body["model"])
        if info is None:
            raise ValidationError(404, f"The model `{body['model']}` does not exist or is not "
                                  "placed on any node.", "model", "model_not_found")
        outcome.model = info.id
        outcome.model_uid = info.model_uid
        key = outcome.key
        if key is not None and not (key.allows(info.id) or key.allows(info.model_uid)):
            self.auth.check_model(key, info.id)  # raises the 403
        unsupported = capability_refusal(info.id, endpoint, info.capabilities)
        if unsupported is not None:  # refused here: on a replica it would fail and count
            raise ValidationError(400, f"{unsupported} (its engine is {info.engine})", "model",
                                  "model_not_supported")
        await self.tenancy.reserve(outcome, endpoint, raw, body)  # tokens: 429 over a limit
        return body, info

    async def forward(self, outcome: Outcome, headers: Mapping[str, str], path: str,
                      data: bytes) -> Response:
        return await self.pool.request("POST", path, data=data,
                                       headers=self.upstream_headers(outcome, headers))

    def upstream_headers(self, outcome: Outcome, headers: Mapping[str, str]) -> dict[str, str]:
        """What the router gets: the few caller headers it uses, and what the gateway
        decided (the model uid it authorised, the tenant and its priority) for the
        router to route on. A caller's x-nebula-* headers never pass, but for its session."""
        out = {"content-type": "application/json", "x-request-id": outcome.request_id,
               MODEL_UID_HEADER: outcome.model_uid, TENANT_HEADER: outcome.key_label}
        key = outcome.key
        if outcome.priority:  # (a batch's line: the lowest class, whatever the key's)
            out[PRIORITY_HEADER] = outcome.priority
        elif key is not None and key.priority:
            out[PRIORITY_HEADER] = key.priority
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
