"""The simulated engine: request admission and queueing, prefill, token generation, stats.

Everything the HTTP layer (``app.py``) asks of the sim is a method here; a handler
only translates between HTTP and one or two of these calls.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NamedTuple, NoReturn, Protocol

from .admission import Admission
from .faults import Faults
from .metrics import SimMetrics
from .prefix_cache import PrefixCache
from .protocol import (
    BadRequest,
    Refusal,
    TextFormat,
    Usage,
    embedding_inputs,
    embeddings_response,
    int_param,
    models_list,
)
from .tokens import count_tokens, generate_tokens, plan_output

JSONObject = dict[str, Any]
"""A parsed JSON request body (its values are whatever the client sent)."""

RECORDED_HEADERS = ("traceparent", "tracestate", "x-request-id", "x-session-id")
"""Request headers kept for /sim/stats, so tests can see what reached the engine."""

NO_EMBEDDINGS = "Llama model must be created with embedding=True to call this method"
"""llama-cpp-python's error for embeddings from a model loaded without them."""


class HeaderLookup(Protocol):
    """What :meth:`SimEngine.admit` reads of a request's headers (werkzeug's ``Headers``)."""

    def __contains__(self, key: str, /) -> bool: ...

    def __getitem__(self, key: str, /) -> str: ...


class StreamCut(Exception):
    """Raised inside a stream to drop the connection mid-response (stream_cut_after)."""


class Job(NamedTuple):
    """One admitted text request, planned: its prompt and what to generate."""

    prompt: str
    prompt_tokens: int
    tokens: int  # tokens to generate
    reason: str  # the finish reason once they are out
    origin: str = ""  # a continuation: the prompt whose answer it continues (.continuation)
    done: int = 0  # a continuation: tokens of that answer already generated

    def output(self) -> list[str]:
        """The tokens to send: the answer's, after the ``done`` ones of a continuation."""
        if not self.done:
            return generate_tokens(self.prompt, self.tokens)
        return generate_tokens(self.origin, self.done + self.tokens)[self.done:]


def crash_process(request_number: int) -> NoReturn:
    """The crash_after fault: exit at once with status 1, as a crashing engine would."""
    sys.stderr.write(f"nebula-sim: crash_after fault: exiting at request {request_number}\n")
    sys.stderr.flush()
    os._exit(1)


async def crlf_framed(frames: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The crlf_frames fault: ``frames`` with CRLF line ends (JSON data holds no raw newline)."""
    async for chunk in frames:
        yield chunk.replace(b"\n", b"\r\n")


async def hang_forever() -> None:
    """Never return: the 'hang' fault (a client timeout or disconnect cancels it)."""
    await asyncio.Event().wait()


class SimEngine:
    """The simulated engine: settings, faults, queue, prefix cache, counters, request path."""

    def __init__(self, *, model: str, served_names: list[str], max_model_len: int,
                 output_tokens: int, faults: Faults, prefix_cache_blocks: int,
                 prefix_block_chars: int, kv_cache_tokens: int, embedding_dim: int,
                 seed: int, crash: Callable[[int], NoReturn] = crash_process) -> None:
        self.model = model
        self.served_names = served_names
        self.max_model_len = max_model_len
        self.output_tokens = output_tokens
        self.faults = faults
        self.embedding_dim = embedding_dim
        self.kv_cache_tokens = max(1, kv_cache_tokens)
        self.cache = PrefixCache(prefix_cache_blocks, prefix_block_chars)
        self.admission = Admission(faults.max_concurrency,
                                   self.kv_cache_tokens if faults.kv_admission else 0)
        self.rng = random.Random(seed)
        self.crash_at = faults.crash_after  # request number that kills the process
        self.started_at = int(time.time())  # the models' "created"
        self.running_tokens = 0
        self.requests_total = 0
        self.requests_cancelled = 0
        self.requests_failed = 0
        self.requests_success = 0
        self.by_path: dict[str, int] = {}
        self.last_request_headers: dict[str, str] = {}
        self._crash = crash
        admission = self.admission
        self.metrics = SimMetrics(model, running=lambda: admission.running,
                                  waiting=lambda: admission.waiting, kv_usage=self.kv_usage)

    # -- state --------------------------------------------------------------------------
    def kv_usage(self) -> float:
        return min(1.0, self.running_tokens / self.kv_cache_tokens)

    def serves(self, name: object) -> bool:
        return name is None or name in self.served_names

    def served_name(self, body: JSONObject) -> str:
        """The name the request used for the model (answers carry it back)."""
        name = body.get("model")
        return name if isinstance(name, str) else self.served_names[0]

    def models(self) -> JSONObject:
        """The ``/v1/models`` list."""
        return models_list(self.served_names, self.max_model_len, self.started_at)

    def metrics_text(self) -> bytes:
        return self.metrics.text()

    def stats(self) -> JSONObject:
        cache = self.cache
        return {
            "model": self.model,
            "requests_total": self.requests_total,
            "requests_success": self.requests_success,
            "requests_cancelled": self.requests_cancelled,
            "requests_failed": self.requests_failed,
            "running": self.admission.running,
            "waiting": self.admission.waiting,
            "kv_cache_usage": self.kv_usage(),
            "prefix_cache": {
                "queries": cache.queries, "hits": cache.hits,
                "hit_rate": cache.hits / cache.queries if cache.queries else 0.0,
                "blocks": len(cache), "capacity": cache.capacity,
                "block_chars": cache.block_chars,
            },
            "by_path": dict(self.by_path),
            "last_request_headers": dict(self.last_request_headers),
            "faults": self.faults.as_dict(),
        }

    def reset(self) -> None:
        """Zero the request counters and empty the prefix cache (one process per benchmark)."""
        self.cache.clear()
        self.requests_total = self.requests_success = 0
        self.requests_cancelled = self.requests_failed = 0
        self.by_path.clear()

    # -- faults -------------------------------------------------------------------------
    def fault_settings(self) -> JSONObject:
        """The faults as ``/sim/faults`` shows them, with the request number that crashes."""
        return {**self.faults.as_dict(), "crash_at_request": self.crash_at}

    def update_faults(self, patch: object) -> None:
        """Apply a partial update of the faults; ValueError (and no change) on a bad one."""
        values = self.faults.validated(patch)
        self.faults.apply(values)
        if "crash_after" in values:
            # At run time "crash after N" counts from now, not from the start.
            n = int(values["crash_after"])
            self.crash_at = self.requests_total + n if n else 0
        if "max_concurrency" in values:
            self.admission.set_limit(int(values["max_concurrency"]))
        if "kv_admission" in values:
            self.admission.set_budget(self.kv_cache_tokens if values["kv_admission"] else 0)

    def should_fail(self) -> bool:
        rate = self.faults.fail_rate
        return rate > 0 and (rate >= 1.0 or self.rng.random() < rate)

    async def health(self) -> None:
        """Return at once, or never while hang and hang_health are both set (a wedged engine)."""
        if self.faults.hang and self.faults.hang_health:
            await hang_forever()

    # -- the request path ---------------------------------------------------------------
    async def admit(self, path: str, headers: HeaderLookup,
                    read_body: Callable[[], Awaitable[str | bytes]]) -> JSONObject:
        """Count an inference request, apply the crash, hang and fail faults; its body.

        Raises :class:`Refusal` for a body that is not a JSON object, a model this
        engine does not serve, or an injected failure.
        """
        self.requests_total += 1
        self.by_path[path] = self.by_path.get(path, 0) + 1
        self.last_request_headers = {h: headers[h] for h in RECORDED_HEADERS if h in headers}
        if self.crash_at and self.requests_total >= self.crash_at:
            self._crash(self.requests_total)
        if self.faults.hang:
            try:
                await hang_forever()
            except asyncio.CancelledError:
                self._cancelled()
                raise
        try:
            body = json.loads(await read_body())
        except ValueError:
            raise Refusal(400, "request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise Refusal(400, "request body must be a JSON object")
        if not self.serves(body.get("model")):
            raise Refusal(404, f"The model `{body.get('model')}` does not exist.",
                          code="model_not_found", param="model")
        if self.should_fail():
            self.requests_failed += 1
            raise Refusal(500, "simulated engine failure (fail_rate fault)", code="sim_fault")
        return body

    def plan(self, prompt: str, requested: int | None, origin: str = "", done: int = 0
             ) -> Job:
        """What to generate for ``prompt``; a 400 :class:`Refusal` when it fills the context.

        A continuation (``done`` tokens of ``origin``'s answer already generated) counts
        them as prompt and generates what the uninterrupted answer had left.
        """
        prompt_tokens = count_tokens(origin) + done if done else count_tokens(prompt)
        if prompt_tokens >= self.max_model_len:
            raise Refusal(400, f"prompt is {prompt_tokens} tokens; the maximum "
                          f"context length is {self.max_model_len}")
        n, reason = plan_output(requested, max(self.output_tokens - done, 0), prompt_tokens,
                                self.max_model_len)
        return Job(prompt, prompt_tokens, n, reason, origin, done)

    async def complete(self, job: Job) -> tuple[str, Usage]:
        """Run ``job`` to its end (queue, prefill, every token's time); its text and usage."""
        started = time.monotonic()
        try:
            cached = await self._start(job, started)
            try:
                itl_ms = self.faults.itl_ms
                if itl_ms > 0 and job.tokens > 1:
                    await asyncio.sleep(itl_ms * (job.tokens - 1) / 1000)
            finally:
                self._stop(job)
        except asyncio.CancelledError:
            self._cancelled()
            raise
        text = "".join(job.output())
        self._finish(job, started)
        return text, Usage(job.prompt_tokens, job.tokens, cached)

    async def stream(self, fmt: TextFormat, job: Job) -> AsyncIterator[bytes]:
        """The SSE frames of ``job`` in ``fmt``: one write, or paced on ``itl_ms`` deadlines.

        The stream_cut_after fault raises :class:`StreamCut` after that many frames.
        """
        started = time.monotonic()
        try:
            cached = await self._start(job, started)
        except asyncio.CancelledError:
            self._cancelled()
            raise
        done = False
        try:
            n = job.tokens
            tokens = job.output()
            usage = Usage(job.prompt_tokens, n, cached)
            cut = self.faults.stream_cut_after
            itl = self.faults.itl_ms / 1000
            if itl <= 0 or n <= 1:
                # No pacing: the whole stream in one write.
                sent, last = 0, fmt.all_frames(tokens, job.reason, usage)
            else:
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
                        chunk = b"".join([fmt.token_frame(tokens[j], j)
                                          for j in range(i, upto)])
                    sent += upto - i
                    i = upto
                    yield chunk
                last = fmt.tail("".join(tokens), job.reason, usage)
            if cut and sent + len(last) > cut:
                yield b"".join(last[:cut - sent])
                raise StreamCut
            done = True
            self._finish(job, started)
            yield b"".join(last)
        except StreamCut:
            self.requests_failed += 1
            raise
        except (asyncio.CancelledError, GeneratorExit):
            if not done:
                self._cancelled()
            raise
        finally:
            self._stop(job)

    def embed(self, body: JSONObject) -> JSONObject:
        """The embeddings response of an admitted request; :class:`BadRequest` on bad fields.

        The embeddings_unsupported fault answers as llama-cpp-python's server does for a
        model not loaded with ``--embedding``: a 500 whose message says why.
        """
        if self.faults.embeddings_unsupported:
            self.requests_failed += 1
            raise Refusal(500, NO_EMBEDDINGS, type="internal_server_error")
        inputs = embedding_inputs(body)
        dimensions = int_param(body, "dimensions") or self.embedding_dim
        if dimensions > self.embedding_dim:
            # As vLLM: a model cannot return more dimensions than it has.
            raise BadRequest(f"dimensions must be at most {self.embedding_dim} for this "
                             f"model, got {dimensions}", "dimensions")
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise BadRequest("encoding_format must be float or base64", "encoding_format")
        prompt_tokens = sum(count_tokens(t) for t in inputs)
        self.metrics.prompt_tokens.inc(prompt_tokens)
        self.requests_success += 1
        self.metrics.success("stop")
        return embeddings_response(self.served_name(body), inputs, dimensions, encoding,
                                   prompt_tokens)

    def pool(self, body: JSONObject, answer: Callable[[str, JSONObject], JSONObject]
             ) -> JSONObject:
        """A pooling answer (rerank, score: :mod:`pooling`) of an admitted request, counted."""
        out = answer(self.served_name(body), body)
        self.metrics.prompt_tokens.inc(out["usage"]["total_tokens"])
        self.requests_success += 1
        self.metrics.success("stop")
        return out

    async def _start(self, job: Job, started: float) -> int:
        """Wait for a slot, hold the job's KV tokens, prefill; returns the cached tokens.

        Whatever interrupts it (a cancel while queued or prefilling) leaves nothing held;
        once it returned, the caller gives the slot back with :meth:`_stop`.
        """
        await self.admission.acquire(job.prompt_tokens + job.tokens)
        self.running_tokens += job.prompt_tokens + job.tokens
        try:
            cached = await self._prefill(job)
        except BaseException:
            self._stop(job)
            raise
        self.metrics.ttft.observe(time.monotonic() - started)
        return cached

    async def _prefill(self, job: Job) -> int:
        """Prefix-cache lookup and the time to first token; returns the cached tokens."""
        result = self.cache.lookup_and_insert(job.prompt)
        metrics = self.metrics
        metrics.prefix_queries.inc(result.query_tokens)
        if result.hit_tokens:
            metrics.prefix_hits.inc(result.hit_tokens)
        metrics.prompt_tokens.inc(job.prompt_tokens)
        faults = self.faults
        delay = faults.ttft_ms + faults.prefill_ms_per_token * result.uncached_tokens
        if delay > 0:
            await asyncio.sleep(delay / 1000)
        return result.hit_tokens

    def _stop(self, job: Job) -> None:
        self.admission.release(job.prompt_tokens + job.tokens)
        self.running_tokens -= job.prompt_tokens + job.tokens

    def _finish(self, job: Job, started: float) -> None:
        self.requests_success += 1
        metrics = self.metrics
        metrics.success(job.reason)
        metrics.generation_tokens.inc(job.tokens)
        metrics.e2e.observe(time.monotonic() - started)

    def _cancelled(self) -> None:
        """The client went away before the answer was complete."""
        self.requests_cancelled += 1
        self.metrics.aborted()
