"""The gateway's ASGI application: the OpenAI POST paths on the raw hot path
(:mod:`edge`), everything else (models, health, metrics, OpenAPI) on Quart."""

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
from nebula_common.service import add_basic_routes

from .auth import AuthError
from .edge import POST_PATHS, Gateway, GatewayConfig, Outcome, request_id_from
from .proxy import RouterUnavailable
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

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if (scope["type"] == "http" and scope["method"] == "POST"
                and scope["path"] in POST_PATHS):
            await self.gateway(scope, receive, send)
        else:
            await self.quart(scope, receive, send)


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

    async def probe_loop() -> None:
        while True:
            router_ready["ok"] = await pool.probe()
            await asyncio.sleep(2.0)

    @app.before_serving
    async def startup() -> None:
        app.extensions["nebula_probe"] = asyncio.get_running_loop().create_task(probe_loop())

    @app.after_serving
    async def shutdown() -> None:
        task = app.extensions.get("nebula_probe")
        if task is not None:
            task.cancel()
        await pool.close()

    @app.before_request
    async def assign_request_id() -> None:
        g.request_id = request_id_from(request.headers)

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

    for path in POST_PATHS:
        app.add_url_rule(path, f"post:{path}", served_by_the_hot_path, methods=["POST"])

    @app.get("/openapi.json")
    async def openapi() -> Response:
        from .openapi import openapi_document
        return Response(json.dumps(openapi_document()), content_type="application/json")

    def begin(endpoint: str) -> Outcome:
        headers = {k.lower(): v for k, v in request.headers.items()}
        outcome = gateway.begin(endpoint, request.method, headers)
        outcome.request_id = g.request_id
        g.outcome = outcome
        return outcome

    def refused(outcome: Outcome, exc: Exception) -> Response:
        reply = gateway.error_reply(outcome, exc)
        outcome.finish(reply.status)
        resp = Response(reply.body, status=reply.status, content_type="application/json")
        for name, value in reply.headers:
            if name != b"content-type":
                resp.headers[name.decode()] = value.decode()
        return resp

    @app.get("/v1/models")
    async def list_models() -> Response:
        outcome = begin("/v1/models")
        try:
            gateway.authenticate(outcome, request.headers)
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
        outcome = begin("/v1/models/{model}")
        try:
            gateway.authenticate(outcome, request.headers)
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
