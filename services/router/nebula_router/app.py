"""The router's ASGI application: the raw proxy for the OpenAI POST paths, Quart for the rest.

Requests on the hot path (POST /v1/chat/completions, ...) go straight to
:class:`Proxy` without building framework request/response objects; health,
metrics, /v1/models, /debug/endpoints and /debug/policy are ordinary Quart routes.
"""

from __future__ import annotations

import time
from typing import Any

from quart import Quart, Response

from nebula_common.asgi import OPENAI_POST_PATHS, Receive, Scope, Send
from nebula_common.openai_errors import error_json
from nebula_common.service import add_basic_routes
from nebula_common.store import WATCH_STALL_S

from . import metrics
from .proxy import Proxy
from .table import EndpointTable, ModelEntry, debug_rows, dumps


def model_item(entry: ModelEntry) -> dict[str, Any]:
    nebula: dict[str, Any] = {"model_uid": entry.model_uid, "engine": entry.engine,
                              "ready_replicas": entry.ready_replicas}
    caps = entry.capabilities
    if caps is not None:
        nebula["capabilities"] = sorted(caps)
    return {"id": entry.model_name, "object": "model", "created": entry.created,
            "owned_by": "nebula", "nebula": nebula}


def readiness(table: EndpointTable, stale_after: float = WATCH_STALL_S,
              now: float | None = None) -> tuple[bool, str]:
    """``/readyz``: the table's own verdict, and not ready while it may be stale.

    Stale: etcd has not answered one of its watches (no event, no progress
    notification) for ``stale_after`` seconds, as when etcd is frozen or the
    connection is black-holed; the router keeps serving the last table meanwhile.
    """
    if table.loaded:
        now = time.monotonic() if now is None else now
        silent, name = max((m.silent_for(now), m.name) for m in table.mirrors)
        if silent > stale_after:
            return False, (f"endpoint table may be stale: etcd has not answered the {name} "
                           f"watch for {silent:.1f}s (bound {stale_after:.0f}s); serving the "
                           "last known table")
    return table.readiness()


def build_quart(table: EndpointTable, proxy: Proxy, stale_after: float = WATCH_STALL_S) -> Quart:
    app = Quart("nebula_router")
    add_basic_routes(app, lambda: readiness(table, stale_after))
    outlier = proxy.pipeline.outlier

    def json_response(obj: object, status: int = 200) -> Response:
        return Response(dumps(obj), status=status, content_type="application/json")

    @app.get("/v1/models")
    async def list_models() -> Response:
        return json_response({"object": "list",
                              "data": [model_item(e) for e in table.models()]})

    @app.get("/v1/models/<path:model>")
    async def get_model(model: str) -> Response:
        entry = table.get(model)
        if entry is None:
            return Response(error_json(404, f"The model '{model}' does not exist",
                                       param="model", code="model_not_found"),
                            status=404, content_type="application/json")
        return json_response(model_item(entry))

    @app.get("/debug/endpoints")
    async def debug_endpoints() -> Response:
        return json_response({
            "policy": proxy.pipeline.name, "synced": table.synced,
            "etcd_connected": table.connected, "endpoints": debug_rows(
                table, time.monotonic(), outlier.state)})

    @app.get("/debug/policy")
    async def debug_policy() -> Response:
        return json_response(proxy.pipeline.describe())

    @app.get("/debug/queue")
    async def debug_queue() -> Response:
        admission = proxy.admission
        return json_response(admission.describe() if admission is not None
                             else {"queue": "off", "models": {}})

    metrics.install_collector(lambda: (list(table.replicas.values()), table.connected,
                                       outlier.state))
    return app


class RouterApp:
    """ASGI entry: POSTs on the proxied paths go to the proxy, the rest to Quart."""

    def __init__(self, quart: Quart, proxy: Proxy):
        self.quart = quart
        self.proxy = proxy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and scope["method"] == "POST"
                and scope["path"] in OPENAI_POST_PATHS):
            await self.proxy(scope, receive, send)
        else:
            # Quart types its scope as hypercorn's TypedDicts; ASGI gives us the plain mapping.
            await self.quart(scope, receive, send)  # type: ignore[arg-type]
