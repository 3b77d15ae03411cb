"""The gateway's ASGI application: the OpenAI POST paths on the raw hot path
(:mod:`gateway`), everything else (models, health, metrics, OpenAPI) on Quart."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any

from quart import Quart, Response, g, request
from werkzeug.exceptions import HTTPException

from nebula_common import openai_errors
from nebula_common.asgi import OPENAI_POST_PATHS, Receive, Scope, Send
from nebula_common.service import add_basic_routes
from nebula_common.tasks import TaskSet

from .auth import AuthError
from .config import GatewayConfig
from .gateway import Gateway
from .outcome import Outcome, request_id_from
from .reply import refusal
from .routers import RouterUnavailable
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
        else:
            quart: Any = self.quart  # (its types are Hypercorn's TypedDicts, ours the ASGI spec's)
            await quart(scope, receive, send)


def build_quart(gateway: Gateway) -> Quart:
    app = Quart("nebula_gateway")
    config = gateway.config
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    app.config["BODY_TIMEOUT"] = config.body_timeout
    pool, catalog = gateway.pool, gateway.catalog
    router_ready = {"ok": False}

    def ready() -> tuple[bool, str]:
        ok = router_ready["ok"] or time.monotonic() - pool.last_ok < 5
        return ok, "ready" if ok else "no router reachable"

    add_basic_routes(app, ready)
    tasks = app.extensions["nebula_tasks"] = TaskSet("gateway")

    async def probe_loop() -> None:
        while True:
            router_ready["ok"] = await pool.probe()
            await asyncio.sleep(2.0)

    @app.before_serving
    async def startup() -> None:
        tasks.supervise("router-probe", probe_loop)  # a crash restarts it after a backoff

    @app.after_serving
    async def shutdown() -> None:
        await tasks.close()
        await pool.close()

    @app.before_request
    async def assign_request_id() -> None:
        g.request_id = request_id_from(request.headers.get("x-request-id"))

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
        return error_response(500, "unreachable", code="internal_error")

    for path in sorted(OPENAI_POST_PATHS):
        app.add_url_rule(path, f"post:{path}", served_by_the_hot_path, methods=["POST"])

    @app.get("/openapi.json")
    async def openapi() -> Response:
        from .openapi import openapi_document
        return Response(json.dumps(openapi_document()), content_type="application/json")

    def begin(endpoint: str) -> tuple[Outcome, dict[str, str]]:
        headers = {k.lower(): v for k, v in request.headers.items()}
        outcome = gateway.begin(endpoint, request.method, headers)
        outcome.request_id = g.request_id
        g.outcome = outcome
        return outcome, headers

    def refused(outcome: Outcome, exc: Exception) -> Response:
        status, body, headers = refusal(outcome, exc)
        outcome.finish(status)
        resp = Response(body, status=status, content_type="application/json")
        for name, value in headers:
            resp.headers[name.decode()] = value.decode()
        return resp

    @app.get("/v1/models")
    async def list_models() -> Response:
        outcome, headers = begin("/v1/models")
        try:
            gateway.authenticate(outcome, headers)
            items = await catalog.items()
        except (AuthError, RouterUnavailable) as exc:
            return refused(outcome, exc)
        key = outcome.key
        if key is not None and key.models:
            items = [m for m in items if key.allows(m["id"])
                     or key.allows(m.get("nebula", {}).get("model_uid", ""))]
        outcome.finish(200)
        return Response(json.dumps({"object": "list", "data": items}),
                        content_type="application/json")

    @app.get("/v1/models/<path:model_id>")
    async def retrieve_model(model_id: str) -> Response:
        outcome, headers = begin("/v1/models/{model}")
        try:
            gateway.authenticate(outcome, headers)
            info = await catalog.lookup(model_id)
            key = outcome.key
            if info is None or (key is not None and not (key.allows(info.id)
                                                         or key.allows(info.model_uid))):
                raise ValidationError(404, f"The model `{model_id}` does not exist.", "model",
                                      "model_not_found")
        except (AuthError, RouterUnavailable, ValidationError) as exc:
            return refused(outcome, exc)
        outcome.model = info.id
        outcome.finish(200)
        return Response(json.dumps(info.item), content_type="application/json")

    return app


def create_app(config: GatewayConfig) -> GatewayApp:
    gateway = Gateway(config)
    return GatewayApp(build_quart(gateway), gateway)
