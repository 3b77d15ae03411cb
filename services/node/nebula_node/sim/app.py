"""The sim's HTTP API (Quart): vLLM's OpenAI endpoints, /metrics, /sim/faults, /sim/stats."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Quart, Response, request

from nebula_common.openai_errors import error_json

from .engine import SimEngine
from .protocol import (
    BadRequest,
    ChatFormat,
    CompletionFormat,
    ResponsesFormat,
    TextFormat,
    Usage,
    chat_prompt,
    completion_prompt,
    embedding_inputs,
    embeddings_response,
    int_param,
    models_list,
    responses_prompt,
)
from .tokens import count_tokens, generate_tokens, plan_output

log = logging.getLogger("nebula.sim")

JSON = "application/json"
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
RECORDED_HEADERS = ("traceparent", "tracestate", "x-request-id", "x-session-id")

# path -> (format class, prompt flattener, max-token parameter names)
TEXT_ENDPOINTS: dict[str, tuple[type[TextFormat], Any, tuple[str, ...]]] = {
    "/v1/chat/completions": (ChatFormat, chat_prompt, ("max_completion_tokens", "max_tokens")),
    "/v1/completions": (CompletionFormat, completion_prompt, ("max_tokens",)),
    "/v1/responses": (ResponsesFormat, responses_prompt, ("max_output_tokens",)),
}


class StreamCut(Exception):
    """Raised inside a stream to drop the connection mid-response (stream_cut_after)."""


def error_response(status: int, message: str, **kwargs: Any) -> Response:
    return Response(error_json(status, message, **kwargs), status=status, content_type=JSON)


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(json.dumps(obj, separators=(",", ":")), status=status, content_type=JSON)


async def hang_forever() -> None:
    """Never return: the 'hang' fault (a client timeout or disconnect cancels it)."""
    await asyncio.Event().wait()


def create_app(engine: SimEngine) -> Quart:
    """The sim's Quart app, serving ``engine``."""
    app = Quart("nebula-sim")
    # Quart cuts responses after 60 s by default; long paced streams must not be cut.
    app.config["RESPONSE_TIMEOUT"] = None
    faults = engine.faults
    metrics = engine.metrics

    # -- admission of every inference request: counting, headers, crash/hang/fail faults --
    async def admit(path: str) -> tuple[dict[str, Any] | None, Response | None]:
        engine.requests_total += 1
        engine.by_path[path] = engine.by_path.get(path, 0) + 1
        headers = request.headers
        engine.last_request_headers = {h: headers[h] for h in RECORDED_HEADERS if h in headers}
        if engine.crash_at and engine.requests_total >= engine.crash_at:
            sys.stderr.write(f"nebula-sim: crash_after fault: exiting at request "
                             f"{engine.requests_total}\n")
            sys.stderr.flush()
            os._exit(1)
        if faults.hang:
            try:
                await hang_forever()
            except asyncio.CancelledError:
                engine.requests_cancelled += 1
                metrics.aborted()
                raise
        try:
            body = json.loads(await request.get_data())
        except ValueError:
            return None, error_response(400, "request body is not valid JSON")
        if not isinstance(body, dict):
            return None, error_response(400, "request body must be a JSON object")
        if not engine.serves(body.get("model")):
            return None, error_response(404, f"The model `{body.get('model')}` does not exist.",
                                        code="model_not_found", param="model")
        if engine.should_fail():
            engine.requests_failed += 1
            return None, error_response(500, "simulated engine failure (fail_rate fault)",
                                        code="sim_fault")
        return body, None

    def served_name(body: dict[str, Any]) -> str:
        name = body.get("model")
        return name if isinstance(name, str) else engine.served_names[0]

    def cancelled() -> None:
        engine.requests_cancelled += 1
        metrics.aborted()

    async def prefill(prompt: str, prompt_tokens: int, n: int) -> int:
        """Model prefill (prefix-cache lookup, TTFT wait); returns the cached tokens."""
        result = engine.cache.lookup_and_insert(prompt)
        metrics.prefix_queries.inc(result.query_tokens)
        if result.hit_tokens:
            metrics.prefix_hits.inc(result.hit_tokens)
        metrics.prompt_tokens.inc(prompt_tokens)
        engine.running_tokens += prompt_tokens + n
        delay = faults.ttft_ms + faults.prefill_ms_per_token * result.uncached_tokens
        if delay > 0:
            await asyncio.sleep(delay / 1000)
        return result.hit_tokens

    def finish(reason: str, n: int, started: float) -> None:
        engine.requests_success += 1
        metrics.success(reason)
        metrics.generation_tokens.inc(n)
        metrics.e2e.observe(time.monotonic() - started)

    async def text_endpoint() -> Response:
        path = request.path
        fmt_cls, flatten, limit_names = TEXT_ENDPOINTS[path]
        body, err = await admit(path)
        if err is not None:
            return err
        assert body is not None
        try:
            prompt = flatten(body)
            requested = int_param(body, *limit_names)
        except BadRequest as exc:
            return error_response(400, str(exc), param=exc.param)
        prompt_tokens = count_tokens(prompt)
        if prompt_tokens >= engine.max_model_len:
            return error_response(400, f"prompt is {prompt_tokens} tokens; the maximum "
                                  f"context length is {engine.max_model_len}")
        n, reason = plan_output(requested, engine.output_tokens, prompt_tokens,
                                engine.max_model_len)
        fmt = fmt_cls(served_name(body), body)
        if body.get("stream"):
            return Response(stream(fmt, prompt, prompt_tokens, n, reason),
                            content_type="text/event-stream", headers=SSE_HEADERS)
        started = time.monotonic()
        admission = engine.admission
        cost = 0
        try:
            await admission.acquire()
            try:
                cost = prompt_tokens + n
                cached = await prefill(prompt, prompt_tokens, n)
                metrics.ttft.observe(time.monotonic() - started)
                if faults.itl_ms > 0 and n > 1:
                    await asyncio.sleep(faults.itl_ms * (n - 1) / 1000)
            finally:
                admission.release()
                engine.running_tokens -= cost
        except asyncio.CancelledError:
            cancelled()
            raise
        text = "".join(generate_tokens(prompt, n))
        finish(reason, n, started)
        return json_response(fmt.full(text, reason, Usage(prompt_tokens, n, cached)))

    async def stream(fmt: TextFormat, prompt: str, prompt_tokens: int, n: int,
                     reason: str) -> AsyncIterator[bytes]:
        started = time.monotonic()
        admission = engine.admission
        acquired = done = False
        cost = 0
        try:
            await admission.acquire()
            acquired = True
            cost = prompt_tokens + n
            cached = await prefill(prompt, prompt_tokens, n)
            metrics.ttft.observe(time.monotonic() - started)
            tokens = generate_tokens(prompt, n)
            usage = Usage(prompt_tokens, n, cached)
            cut = faults.stream_cut_after
            itl = faults.itl_ms / 1000
            if itl <= 0 or n <= 1:
                # No pacing: the whole stream in one write.
                frames = fmt.all_frames(tokens, reason, usage)
                if cut and len(frames) > cut:
                    yield b"".join(frames[:cut])
                    raise StreamCut
                done = True
                finish(reason, n, started)
                yield b"".join(frames)
                return
            sent = 0
            first = fmt.head()
            first.append(fmt.token_frame(tokens[0], 0))
            if cut and len(first) >= cut:
                yield b"".join(first[:cut])
                raise StreamCut
            sent = len(first)
            yield b"".join(first)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            i = 1
            while i < n:
                # Absolute deadlines: pacing does not drift with scheduling delays.
                now = loop.time()
                due = t0 + i * itl
                if due > now:
                    await asyncio.sleep(due - now)
                    now = loop.time()
                # Every token already due goes out in one write, so an overloaded sim
                # coalesces frames instead of falling further behind.
                upto = min(n, max(i + 1, int((now - t0) / itl) + 1))
                if cut:
                    if sent >= cut:
                        raise StreamCut
                    upto = min(upto, i + cut - sent)
                if upto == i + 1:
                    chunk = fmt.token_frame(tokens[i], i)
                else:
                    chunk = b"".join([fmt.token_frame(tokens[j], j) for j in range(i, upto)])
                sent += upto - i
                i = upto
                yield chunk
            tail = fmt.tail("".join(tokens), reason, usage)
            if cut and sent + len(tail) > cut:
                yield b"".join(tail[:cut - sent])
                raise StreamCut
            done = True
            finish(reason, n, started)
            yield b"".join(tail)
        except StreamCut:
            engine.requests_failed += 1
            raise
        except (asyncio.CancelledError, GeneratorExit):
            if not done:
                cancelled()
            raise
        finally:
            if acquired:
                admission.release()
            engine.running_tokens -= cost

    for path in TEXT_ENDPOINTS:
        app.add_url_rule(path, path.strip("/").replace("/", "_"), text_endpoint,
                         methods=["POST"])

    @app.post("/v1/embeddings")
    async def embeddings() -> Response:
        body, err = await admit("/v1/embeddings")
        if err is not None:
            return err
        assert body is not None
        try:
            inputs = embedding_inputs(body)
            dimensions = int_param(body, "dimensions") or engine.embedding_dim
            if dimensions > engine.embedding_dim:
                # As vLLM: a model cannot return more dimensions than it has.
                raise BadRequest(f"dimensions must be at most {engine.embedding_dim} for this "
                                 f"model, got {dimensions}", "dimensions")
        except BadRequest as exc:
            return error_response(400, str(exc), param=exc.param)
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            return error_response(400, "encoding_format must be float or base64",
                                  param="encoding_format")
        prompt_tokens = sum(count_tokens(t) for t in inputs)
        metrics.prompt_tokens.inc(prompt_tokens)
        engine.requests_success += 1
        metrics.success("stop")
        return json_response(embeddings_response(served_name(body), inputs, dimensions,
                                                 encoding, prompt_tokens))

    # -- engine plumbing ------------------------------------------------------------------
    started_at = int(time.time())

    @app.get("/v1/models")
    async def models() -> Response:
        return json_response(models_list(engine.served_names, engine.max_model_len,
                                         started_at))

    @app.get("/health")
    @app.get("/healthz")
    async def health() -> Response:
        if faults.hang and faults.hang_health:
            await hang_forever()
        return Response("ok", content_type="text/plain")

    @app.get("/readyz")
    async def readyz() -> Response:
        return Response("ready", content_type="text/plain")

    @app.get("/version")
    async def version() -> Response:
        return json_response({"version": "nebula-sim"})

    @app.get("/metrics")
    async def prom() -> Response:
        return Response(generate_latest(metrics.registry), content_type=CONTENT_TYPE_LATEST)

    @app.get("/sim/stats")
    async def stats() -> Response:
        return json_response(engine.stats())

    @app.get("/sim/faults")
    async def get_faults() -> Response:
        return json_response({**faults.as_dict(), "crash_at_request": engine.crash_at})

    @app.post("/sim/faults")
    async def set_faults() -> Response:
        try:
            engine.update_faults(json.loads(await request.get_data()))
        except ValueError as exc:
            return error_response(400, str(exc))
        log.info("faults updated: %s", faults.as_dict())
        return json_response({**faults.as_dict(), "crash_at_request": engine.crash_at})

    @app.post("/sim/reset")
    async def reset() -> Response:
        """Clear counters and the prefix cache (benchmarks reuse one process per scenario)."""
        engine.cache.clear()
        engine.cache.queries = engine.cache.hits = 0
        engine.requests_total = engine.requests_success = 0
        engine.requests_cancelled = engine.requests_failed = 0
        engine.by_path.clear()
        return json_response(engine.stats())

    # A cut stream ends the ASGI call without finishing the response: the server then
    # drops the connection (no terminating chunk), and nothing logs a traceback.
    inner = app.asgi_app

    async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
        try:
            await inner(scope, receive, send)
        except StreamCut:
            log.info("stream cut by the stream_cut_after fault")

    app.asgi_app = asgi_app  # type: ignore[method-assign]
    return app
