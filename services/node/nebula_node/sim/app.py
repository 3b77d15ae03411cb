"""The sim's HTTP API (Quart): vLLM's OpenAI endpoints, /metrics, /health, /sim/*.

Each handler translates one endpoint between HTTP and :class:`SimEngine` methods;
:func:`create_app` registers them all.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope
from quart import Quart, Response, request

from . import pooling, tokenizer, tools
from .continuation import resume_point
from .engine import JSONObject, SimEngine, StreamCut, crlf_framed
from .metrics import METRICS_CONTENT_TYPE
from .protocol import (
    BadRequest,
    ChatFormat,
    CompletionFormat,
    Refusal,
    ResponsesFormat,
    TextFormat,
    chat_prompt,
    completion_prompt,
    int_param,
    responses_prompt,
)

log = logging.getLogger("nebula.sim")

JSON = "application/json"
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}

View = Callable[[], Awaitable[Response]]


class TextEndpoint(NamedTuple):
    """What differs between the text endpoints."""

    format: type[TextFormat]
    flatten: Callable[[JSONObject], str]  # the body's prompt as one string
    limit_names: tuple[str, ...]  # its max-token parameters, first present wins


TEXT_ENDPOINTS: dict[str, TextEndpoint] = {
    "/v1/chat/completions": TextEndpoint(ChatFormat, chat_prompt,
                                         ("max_completion_tokens", "max_tokens")),
    "/v1/completions": TextEndpoint(CompletionFormat, completion_prompt, ("max_tokens",)),
    "/v1/responses": TextEndpoint(ResponsesFormat, responses_prompt, ("max_output_tokens",)),
}
EMBEDDINGS = "/v1/embeddings"


def error_response(exc: Refusal) -> Response:
    return Response(exc.body(), status=exc.status, content_type=JSON)


def json_response(obj: object) -> Response:
    return Response(json.dumps(obj, separators=(",", ":")), content_type=JSON)


class Handler:
    """Handlers of some endpoints, over one engine."""

    def __init__(self, engine: SimEngine) -> None:
        self.engine = engine


class TextGeneration(Handler):
    """POST of one text endpoint (chat, completions, responses): an SSE stream or one body."""

    def __init__(self, engine: SimEngine, path: str, endpoint: TextEndpoint) -> None:
        super().__init__(engine)
        self.path = path
        self.format, self.flatten, self.limit_names = endpoint

    async def post(self) -> Response:
        engine = self.engine
        try:
            body = await engine.admit(self.path, request.headers, request.get_data)
            prompt, origin, done = resume_point(self.path, body, self.flatten(body))
            job = engine.plan(prompt, int_param(body, *self.limit_names), origin, done)
            # a request with tools may be answered with tool calls (:mod:`tools`)
            fmt, job = tools.answer(self.path, body, self.format(engine.served_name(body), body),
                                    job)
        except Refusal as exc:
            return error_response(exc)
        if body.get("stream"):
            frames = engine.stream(fmt, job)
            if engine.faults.crlf_frames:
                frames = crlf_framed(frames)
            return Response(frames, content_type="text/event-stream", headers=SSE_HEADERS)
        text, usage = await engine.complete(job)
        return json_response(fmt.full(text, job.reason, usage))


class Embeddings(Handler):
    """POST /v1/embeddings."""

    async def post(self) -> Response:
        try:
            body = await self.engine.admit(EMBEDDINGS, request.headers, request.get_data)
            return json_response(self.engine.embed(body))
        except Refusal as exc:
            return error_response(exc)


class Tokenization(Handler):
    """POST /tokenize and /detokenize, as vLLM's (:mod:`tokenizer`)."""

    async def tokenize(self) -> Response:
        try:
            body = await self.engine.admit("/tokenize", request.headers, request.get_data)
            return json_response(tokenizer.tokenize(body, self.engine.max_model_len))
        except Refusal as exc:
            return error_response(exc)

    async def detokenize(self) -> Response:
        try:
            body = await self.engine.admit("/detokenize", request.headers, request.get_data)
            return json_response(tokenizer.detokenize(body))
        except Refusal as exc:
            return error_response(exc)


class Pooling(Handler):
    """POST of a pooling endpoint (vLLM's /v1/rerank, /rerank, /v1/score)."""

    def __init__(self, engine: SimEngine, path: str,
                 answer: Callable[[str, JSONObject], JSONObject]) -> None:
        super().__init__(engine)
        self.path = path
        self.answer = answer

    async def post(self) -> Response:
        try:
            body = await self.engine.admit(self.path, request.headers, request.get_data)
            return json_response(self.engine.pool(body, self.answer))
        except Refusal as exc:
            return error_response(exc)


POOLING_ENDPOINTS: dict[str, Callable[[str, JSONObject], JSONObject]] = {
    "/v1/rerank": pooling.rerank, "/rerank": pooling.rerank, "/v2/rerank": pooling.rerank,
    "/v1/score": pooling.score, "/score": pooling.score,
}
"""vLLM's pooling paths (it serves each under these names)."""


class Probes(Handler):
    """What monitors poll: /health (/healthz), /readyz, /version, /metrics, /v1/models."""

    async def health(self) -> Response:
        await self.engine.health()
        return Response("ok", content_type="text/plain")

    async def ready(self) -> Response:
        return Response("ready", content_type="text/plain")

    async def version(self) -> Response:
        return json_response({"version": "nebula-sim"})

    async def metrics(self) -> Response:
        return Response(self.engine.metrics_text(), content_type=METRICS_CONTENT_TYPE)

    async def models(self) -> Response:
        return json_response(self.engine.models())


class Control(Handler):
    """The sim's test hooks: /sim/stats, /sim/faults (GET, POST) and /sim/reset."""

    async def stats(self) -> Response:
        return json_response(self.engine.stats())

    async def faults(self) -> Response:
        return json_response(self.engine.fault_settings())

    async def set_faults(self) -> Response:
        engine = self.engine
        try:
            engine.update_faults(json.loads(await request.get_data()))
        except ValueError as exc:
            return error_response(BadRequest(str(exc)))
        log.info("faults updated: %s", engine.faults.as_dict())
        return json_response(engine.fault_settings())

    async def reset(self) -> Response:
        """Clear counters and the prefix cache (benchmarks reuse one process per scenario)."""
        self.engine.reset()
        return json_response(self.engine.stats())


class SimApp(Quart):
    """Quart, plus the way out of a stream cut by the stream_cut_after fault."""

    async def asgi_app(self, scope: Scope, receive: ASGIReceiveCallable,
                       send: ASGISendCallable) -> None:
        # A cut stream ends the ASGI call without finishing the response: the server then
        # drops the connection (no terminating chunk), and nothing logs a traceback.
        try:
            await super().asgi_app(scope, receive, send)
        except StreamCut:
            log.info("stream cut by the stream_cut_after fault")


def create_app(engine: SimEngine) -> Quart:
    """The sim's Quart app, serving ``engine``."""
    app = SimApp("nebula-sim")
    # Quart cuts responses after 60 s by default; long paced streams must not be cut.
    app.config["RESPONSE_TIMEOUT"] = None
    probes, control, tokens = Probes(engine), Control(engine), Tokenization(engine)
    routes: list[tuple[str, str, View]] = [
        *(("POST", path, TextGeneration(engine, path, endpoint).post)
          for path, endpoint in TEXT_ENDPOINTS.items()),
        ("POST", EMBEDDINGS, Embeddings(engine).post),
        *(("POST", path, Pooling(engine, path, answer).post)
          for path, answer in POOLING_ENDPOINTS.items()),
        ("POST", "/tokenize", tokens.tokenize),
        ("POST", "/detokenize", tokens.detokenize),
        ("GET", "/v1/models", probes.models),
        ("GET", "/health", probes.health),
        ("GET", "/healthz", probes.health),
        ("GET", "/readyz", probes.ready),
        ("GET", "/version", probes.version),
        ("GET", "/metrics", probes.metrics),
        ("GET", "/sim/stats", control.stats),
        ("GET", "/sim/faults", control.faults),
        ("POST", "/sim/faults", control.set_faults),
        ("POST", "/sim/reset", control.reset),
    ]
    for method, path, view in routes:
        app.add_url_rule(path, f"{method} {path}", view, methods=[method])
    return app
