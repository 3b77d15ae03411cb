"""The gateway's ASGI application: the OpenAI POST paths on the raw hot path
(:mod:`gateway`), everything else (models, stored responses, health, metrics,
OpenAPI) on Quart.

With keys configured, ``/metrics`` and ``/openapi.json`` need one too (any valid
key; Prometheus sends it as a bearer token): only ``/healthz`` and ``/readyz``
answer a caller without a key.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from quart import Quart, Response, g, request
from werkzeug.exceptions import HTTPException

from nebula_common import openai_errors
from nebula_common.asgi import OPENAI_POST_PATHS, Receive, Scope, Send, send_json
from nebula_common.keys import Keys
from nebula_common.service import add_basic_routes
from nebula_common.tasks import TaskSet

from . import batches, conversations, files, metrics
from .auth import AuthError
from .batches_runner import BatchRunner
from .config import MIB, GatewayConfig
from .conversations import Conversations, is_conversation_id
from .gateway import Gateway
from .key_watch import KeyWatch
from .outcome import Outcome, request_id_from
from .reply import refusal
from .response_store import StoredResponse
from .responses_translate import items_page
from .routers import RouterUnavailable
from .state import StateError
from .validation import ValidationError

__all__ = ["GatewayApp", "GatewayConfig", "create_app"]

log = logging.getLogger("nebula.gateway")


def error_response(status: int, message: str, *, code: str | None = None,
                   param: str | None = None, type: str | None = None,
                   retry_after: int | None = None) -> Response:
    resp = Response(openai_errors.error_json(status, message, code=code, param=param,
                                             type=type),
                    status=status, content_type="application/json")
    if retry_after is not None:
        resp.headers["Retry-After"] = str(retry_after)
    return resp


class GatewayApp:
    """ASGI entry: POSTs on the OpenAI paths go to the hot path, the rest to Quart."""

    def __init__(self, quart: Quart, gateway: Gateway):
        self.quart = quart
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and scope["method"] == "POST"
                and scope["path"] in OPENAI_POST_PATHS):
            await self.gateway(scope, receive, send)
        elif scope["type"] == "http" and "//" in scope["path"]:
            # werkzeug would route "//v1/chat/completions" as the single-slash path (a POST
            # the hot path never saw) or redirect "/v1//models": both are no route
            await send_json(send, 404, openai_errors.error_json(
                404, f"no route {scope['path']}", code="not_found"),
                [(b"x-request-id", uuid.uuid4().hex.encode())])
        else:
            quart: Any = self.quart  # (its types are Hypercorn's TypedDicts, ours the ASGI spec's)
            await quart(scope, receive, send)


KEYED_PATHS = frozenset({"/metrics", "/openapi.json"})
"""Not for anyone who can reach the port: they tell models, keys' names and traffic."""


def build_quart(gateway: Gateway) -> Quart:
    app = Quart("nebula_gateway")
    config = gateway.config
    # uploads to /v1/files may be larger than a request (checked in assign_request_id)
    app.config["MAX_CONTENT_LENGTH"] = max(config.max_body_bytes, config.max_file_bytes + MIB)
    app.config["BODY_TIMEOUT"] = config.body_timeout
    pool, catalog = gateway.pool, gateway.catalog
    router_ready = {"ok": False}

    tasks = TaskSet("gateway")
    key_watch: KeyWatch | None = None
    if config.watch_keys is not None:
        key_watch = KeyWatch(gateway.auth, config.watch_keys, Keys(config.etcd_prefix), tasks)
    metrics.KEYS_LOADED.labels("static").set(len(config.keys))

    def ready() -> tuple[bool, str]:
        if key_watch is not None and not key_watch.synced:
            return False, "API keys not yet read from etcd"
        ok = router_ready["ok"] or time.monotonic() - pool.last_ok < 5
        return ok, "ready" if ok else "no router reachable"

    add_basic_routes(app, ready)
    app.extensions["nebula_tasks"] = tasks

    async def probe_loop() -> None:
        while True:
            router_ready["ok"] = await pool.probe()
            await asyncio.sleep(2.0)

    @app.before_serving
    async def startup() -> None:
        tasks.supervise("router-probe", probe_loop)  # a crash restarts it after a backoff
        tasks.supervise("usage-flush", gateway.tenancy.flush_loop)
        if gateway.state.shared:  # Redis: find it again after an outage, reconcile
            tasks.supervise("state-probe", gateway.tenancy.probe_loop)
        if key_watch is not None:
            key_watch.start()
        tasks.supervise("batches", batch_runner.loop)

    @app.after_serving
    async def shutdown() -> None:
        if key_watch is not None:
            await key_watch.stop()
        await tasks.close()
        await batch_runner.close()  # (its leases given back: another gateway goes on)
        await gateway.tenancy.close()  # the last usage counted is written
        await pool.close()

    @app.before_request
    async def assign_request_id() -> Response | None:
        g.request_id = request_id_from(request.headers.get("x-request-id"))
        if (request.content_length or 0) > config.max_body_bytes and not (
                request.method == "POST" and request.path == "/v1/files"):
            return error_response(413, f"request body exceeds {config.max_body_bytes} bytes",
                                  code="request_too_large")
        if request.path in KEYED_PATHS and gateway.auth.enabled:
            try:
                gateway.auth.authenticate(request.headers.get("authorization"))
            except AuthError as exc:
                metrics.AUTH_FAILURES.labels(exc.code).inc()
                return error_response(exc.status, exc.message, code=exc.code, type=exc.type)
        return None

    @app.after_request
    async def echo_request_id(response: Response) -> Response:
        response.headers["x-request-id"] = getattr(g, "request_id", None) or uuid.uuid4().hex
        return response

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        if status == 404:
            return error_response(404, f"no route {request.path}", code="not_found")
        if status == 405:
            resp = error_response(405, f"method {request.method} not allowed on "
                                  f"{request.path}", code="method_not_allowed")
            allowed = getattr(exc, "valid_methods", None) or []
            resp.headers["Allow"] = ", ".join(sorted(allowed))
            return resp
        if status == 413:
            return error_response(413, f"request body exceeds {config.max_body_bytes} bytes",
                                  code="request_too_large")
        return error_response(status, exc.description or exc.name)

    @app.errorhandler(Exception)
    async def unexpected(exc: Exception) -> Response:
        log.exception("unhandled error", extra={"request_id": getattr(g, "request_id", None)})
        outcome = getattr(g, "outcome", None)
        if outcome is not None:
            outcome.finish(500)
        return error_response(500, "internal error in the gateway", code="internal_error")

    async def served_by_the_hot_path() -> Response:
        # POSTs on these paths never reach Quart (GatewayApp sends them to the hot path);
        # the routes exist so that other methods get 405 with Allow, not 404
        return error_response(404, f"no route {request.path}", code="not_found")

    for path in sorted(OPENAI_POST_PATHS):
        app.add_url_rule(path, f"post:{path}", served_by_the_hot_path, methods=["POST"])

    @app.get("/openapi.json")
    async def openapi() -> Response:
        from .openapi import openapi_document
        return Response(json.dumps(openapi_document()), content_type="application/json")

    def refused(outcome: Outcome, exc: Exception) -> Response:
        status, body, headers = refusal(outcome, exc)
        outcome.finish(status)
        resp = Response(body, status=status, content_type="application/json")
        for name, value in headers:
            resp.headers[name.decode()] = value.decode()
        return resp

    async def answer(endpoint: str, build: Callable[[Outcome], Awaitable[bytes]]) -> Response:
        """One GET/DELETE of the API: the caller's key, then ``build``'s JSON or a refusal."""
        headers = {k.lower(): v for k, v in request.headers.items()}
        outcome = gateway.begin(endpoint, request.method, headers)
        outcome.request_id = g.request_id
        g.outcome = outcome
        try:
            gateway.authenticate(outcome, headers)
            data = await build(outcome)
        except (AuthError, RouterUnavailable, ValidationError) as exc:
            return refused(outcome, exc)
        outcome.finish(200)
        return Response(data, content_type="application/json")

    @app.get("/v1/models")
    async def list_models() -> Response:
        async def build(outcome: Outcome) -> bytes:
            items = await catalog.items()
            key = outcome.key
            if key is not None and key.models:
                items = [m for m in items if key.allows(m["id"])
                         or key.allows(m.get("nebula", {}).get("model_uid", ""))]
            return json.dumps({"object": "list", "data": items}).encode()
        return await answer("/v1/models", build)

    @app.get("/v1/models/<path:model_id>")
    async def retrieve_model(model_id: str) -> Response:
        async def build(outcome: Outcome) -> bytes:
            info = await catalog.lookup(model_id)
            key = outcome.key
            if info is None or (key is not None and not (key.allows(info.id)
                                                         or key.allows(info.model_uid))):
                raise ValidationError(404, f"The model `{model_id}` does not exist.", "model",
                                      "model_not_found")
            outcome.model = info.id
            return json.dumps(info.item).encode()
        return await answer("/v1/models/{model}", build)

    async def stored(outcome: Outcome, response_id: str) -> StoredResponse:
        try:
            entry = None if is_conversation_id(response_id) else \
                await gateway.state.get_response(response_id, outcome.owner, time.time())
        except StateError:
            raise AuthError(503, "the gateway cannot reach its state store; retry shortly",
                            "state_unavailable", "server_error", retry_after=1) from None
        if entry is None:  # (another key's response does not exist for this one)
            raise ValidationError(404, f"No response found with id '{response_id}'.", None,
                                  "response_not_found")
        return entry

    @app.get("/v1/responses/<response_id>")
    async def retrieve_response(response_id: str) -> Response:
        async def build(outcome: Outcome) -> bytes:
            if request.args.get("stream", "false").lower() not in ("false", "0"):
                raise ValidationError(400, "stream is not supported when retrieving a "
                                      "response", "stream", "unsupported_parameter")
            return (await stored(outcome, response_id)).response
        return await answer("/v1/responses/{id}", build)

    @app.delete("/v1/responses/<response_id>")
    async def delete_response(response_id: str) -> Response:
        async def build(outcome: Outcome) -> bytes:
            await stored(outcome, response_id)
            try:
                await gateway.state.delete_response(response_id, outcome.owner)
            except StateError:
                raise AuthError(503, "the gateway cannot reach its state store; retry "
                                "shortly", "state_unavailable", "server_error",
                                retry_after=1) from None
            return json.dumps({"id": response_id, "object": "response",
                               "deleted": True}).encode()
        return await answer("/v1/responses/{id}", build)

    @app.get("/v1/responses/<response_id>/input_items")
    async def list_input_items(response_id: str) -> Response:
        async def build(outcome: Outcome) -> bytes:
            limit, order, after = page_args(request.args)
            page = items_page(response_id, (await stored(outcome, response_id)).input_items(),
                              limit=limit, order=order, after=after)
            return json.dumps(page).encode()
        return await answer("/v1/responses/{id}/input_items", build)

    conversations.add_routes(app, Conversations(gateway.state), answer, page_args)
    file_store = files.Files(gateway.state)
    batch_runner = BatchRunner(gateway, file_store, config.batch_concurrency,
                               window_s=config.batch_window)
    files.add_routes(app, file_store, answer, page_args, config.max_file_bytes)
    batches.add_routes(app, file_store, batch_runner, answer, page_args)
    return app


def page_args(args: Mapping[str, str]) -> tuple[int, str, str | None]:
    """``limit`` (1-100, default 20), ``order`` (asc/desc, default desc), ``after``."""
    raw = args.get("limit", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= 100:
        raise ValidationError(400, "limit must be an integer between 1 and 100", "limit",
                              "invalid_request")
    order = args.get("order", "desc")
    if order not in ("asc", "desc"):
        raise ValidationError(400, "order must be 'asc' or 'desc'", "order", "invalid_request")
    return int(raw), order, args.get("after") or None


def create_app(config: GatewayConfig) -> GatewayApp:
    gateway = Gateway(config)
    return GatewayApp(build_quart(gateway), gateway)
