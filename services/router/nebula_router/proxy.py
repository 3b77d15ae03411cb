"""The request path: read the body, pick a replica, stream the answer through.

This is a raw ASGI handler (no framework objects per request): the router's hot
path parses only what routing needs (``model``, and what the policy's plugins
declared they read: ``policy.request``), forwards the original body bytes, and
passes upstream chunks to the client as they arrive. Retries happen only before
the first byte reached the client, and only for what another replica may do better
(no connection, a crash, 502/503/504, a stream with no first byte); an answer that
says the request itself cannot be served passes through as it came, and a
non-streamed request that outlives its response timeout is a 504, not a retry (the
engine may still be working on it). Afterwards a broken chat or completions stream
(reset, EOF without ``[DONE]``, idle timeout, its replica draining) is resumed on
another replica (:mod:`.failover`: the forwarded bytes are kept, and parsed only once a
stream broke); one that cannot be resumed exactly ends with an SSE error event so OpenAI
clients raise instead of truncating. Client-facing error texts name no replica or
address: those go to the log with the request id.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass

from opentelemetry import propagate, trace

from nebula_common.asgi import (
    BodyTooLarge,
    BodyWriter,
    ClientGone,
    DisconnectWatcher,
    RawHeaders,
    Receive,
    Scope,
    Send,
    body_writer,
    declared_length,
    read_body,
    send_json,
)
from nebula_common.deadline import Deadline
from nebula_common.http_client import (
    ConnectError,
    ConnectTimeout,
    HttpClientError,
    Pool,
    Response,
)
from nebula_common.ids import new_request_id
from nebula_common.logs import AccessLog
from nebula_common.openai_errors import error_json, sse_error_event
from nebula_common.records import EndpointState
from nebula_common.retry import backoff_delay
from nebula_common.sse import FRAME_ENDS, ends_a_frame, split_frames
from nebula_common.tracing import extract

from . import metrics as m
from .admission import Admission, ModelGate, Shed
from .failover import (
    DEFAULT_LIMIT,
    NotResumable,
    Recorder,
    Rewriter,
    Targets,
    can_continue,
    plan_continuation,
    reassemble,
    refusal,
)
from .failover.continuation import PATHS as FAILOVER_PATHS
from .headers import request_headers, response_headers
from .policy import Candidate, KeyReader, Pipeline, RouteKeys
from .policy.request import MODEL_UID_HEADER, PRIORITY_HEADER, SESSION_HEADER, TENANT_HEADER
from .table import EndpointTable, ModelEntry
from .upstream import ERROR_HEAD_BYTES, refuses_request

access_log = AccessLog("nebula.router.access")
log = logging.getLogger(__name__)


@dataclass
class ProxyConfig:
    max_retries: int = 2
    max_body_bytes: int = 16 * 1024 * 1024
    body_timeout: float = 30.0
    """Seconds for the whole request body to arrive (408 after); 0 = no limit."""
    connect_timeout: float = 2.0
    ttfb_timeout: float = 120.0
    """Streams: seconds until the upstream's first body byte (then another replica is tried)."""
    response_timeout: float = 600.0
    """Non-streamed requests: seconds for the answer, whose headers come only when it is
    complete (then 504, no retry)."""
    idle_timeout: float = 120.0
    total_timeout: float = 900.0
    replica_header: bool = True
    access_log: bool = True
    prefix_chars: int = 1024
    retry_initial_s: float = 0.01
    retry_max_s: float = 0.5
    upstream_keepalive_s: float = 4.0
    """Idle pooled connections are closed after this; below the engines' own keep-alive
    (uvicorn and hypercorn default to 5 s) so the router never reuses one they just closed."""
    stream_failover_max: int = 2
    """Resumes of one broken stream on another replica (0: a broken stream ends with an
    SSE error event)."""
    stream_failover_bytes: int = DEFAULT_LIMIT
    """Forwarded bytes kept per stream for a resume; past them failover is off for it."""


class AttemptFailed(Exception):
    """An attempt failed before anything reached the client.

    ``message`` is the detail for the log (replica address, engine text); ``public`` says
    what happened in words a client may see. ``retry`` False: no other replica is tried.
    """

    def __init__(self, kind: str, message: str, public: str, *, replica_fault: bool = True,
                 retry: bool = True):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.public = public
        self.replica_fault = replica_fault
        self.retry = retry


class IncompleteBody(Exception):
    """Raised to the server so it drops a connection whose body was cut mid-way."""


@dataclass(slots=True)
class _Outcome:
    """What one request did, for metrics, the access log and the span."""

    status: int = 0
    model: str = "unknown"
    replica: str = ""
    reason: str = ""
    retries: int = 0
    ttfb: float | None = None
    request_id: str = ""
    sse: bool = False
    """The response being streamed is server-sent events."""
    closing: bool = False
    """The last bytes are being sent: a disconnect now is the normal end, not a cancel."""
    abort: bool = False
    """The body is incomplete and cannot be marked so: drop the client connection."""
    last_sent: bytes = b""
    """The last body bytes sent to the client (does an error event need a frame end first?)."""
    record: Recorder | None = None
    """The bytes forwarded so far, when a broken stream may be resumed."""
    broken: str = ""
    """Why the stream under way broke (set instead of ending it when it may be resumed)."""
    resumes: int = 0
    served: list[str] | None = None
    """Every replica that sent part of the answer, once a stream was resumed."""
    resumable: _Resumable | None = None
    write_more: BodyWriter | None = None
    """The server's writer of body parts without a message, if it offers one (Response.readany's
    ``take`` calls it from the upstream's read callback)."""


@dataclass(slots=True)
class _Resumable:
    """What a resume of the request needs (kept only for a stream that may be resumed)."""

    entry: ModelEntry
    keys: RouteKeys
    request: dict[str, object]
    path: str
    headers: dict[str, str]
    url_tail: str


class Proxy:
    """Routes POSTs on the OpenAI paths to a replica chosen by the pipeline."""

    def __init__(self, table: EndpointTable, pipeline: Pipeline, config: ProxyConfig,
                 tracer: trace.Tracer | None = None, admission: Admission | None = None):
        self.table = table
        self.admission = admission
        """The admission queue (None: ``--max-running-per-replica 0``, requests go straight on)."""
        self.pipeline = pipeline
        self.config = config
        self.tracer = tracer
        self.client: Pool | None = None
        self._policy = pipeline.name
        # What to read from each request is what the pipeline's plugins declared.
        self.keys = KeyReader(pipeline.needs, config.prefix_chars)
        if admission is not None:  # the queue orders by tenant and priority class
            self.keys.tenant = self.keys.priority = self.keys.more_headers = True

    async def start(self) -> None:
        # No cap on connections per replica: the engines (and the admission queue) queue,
        # not the pool. Bytes pass through undecoded; nothing is retried inside the client.
        self.client = Pool(connect_timeout=self.config.connect_timeout,
                           keepalive_s=self.config.upstream_keepalive_s)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None

    def backoff(self, retry_number: int) -> float:
        """Jittered exponential pause before retry ``retry_number`` (1-based)."""
        cfg = self.config
        return backoff_delay(retry_number, initial=cfg.retry_initial_s,
                             maximum=cfg.retry_max_s, jitter=cfg.retry_initial_s)

    # -- entry point --------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        out = _Outcome()
        span: trace.Span | None = None
        req_id = ""
        incoming_tp = ""
        length: int | None = None
        uid = ""
        reader = self.keys
        keys = RouteKeys()
        more = reader.more_headers  # else every other header skips two compares
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = declared_length(value)
            elif name == b"x-request-id":
                req_id = value.decode("latin-1")
            elif name == SESSION_HEADER:
                if reader.session:
                    keys.session = value.decode("latin-1")
            elif name == b"traceparent":
                incoming_tp = value.decode("latin-1")
            elif name == MODEL_UID_HEADER:
                uid = value.decode("latin-1")
            elif more:
                if name == TENANT_HEADER and reader.tenant:
                    keys.tenant = value.decode("latin-1")
                elif name == PRIORITY_HEADER and reader.priority:
                    keys.priority = value.decode("latin-1")
        if self.tracer is not None:
            ctx = extract({n.decode("latin-1"): v.decode("latin-1")
                           for n, v in scope["headers"]})
            span = self.tracer.start_span("router.request", context=ctx,
                                          kind=trace.SpanKind.SERVER,
                                          attributes={"http.request.method": "POST",
                                                      "url.path": scope["path"]})
        watcher: DisconnectWatcher | None = None
        cfg = self.config
        out.write_more = body_writer(scope)
        try:
            try:
                # One deadline: the body's, then (moved once the body is in) the request's.
                loop = asyncio.get_running_loop()
                async with Deadline(loop, cfg.body_timeout or None) as deadline:
                    body = await self._body(receive, send, out, length)
                    if body is None:
                        return
                    deadline.reschedule(loop.time() + cfg.total_timeout)
                    # A disconnect after the response completed cancels nothing.
                    watcher = DisconnectWatcher(receive, ignore=lambda: out.closing)
                    await self._route(scope, body, send, out, span, req_id, keys, uid)
                if out.abort:
                    raise IncompleteBody(f"upstream body cut mid-way ({out.replica})")
            except asyncio.CancelledError:
                if watcher is None or not watcher.absorb():
                    raise
                out.status = 499
                m.CLIENT_DISCONNECTS.inc()
            except TimeoutError:
                if watcher is None:  # still reading the body: as the gateway answers
                    await self._reject(send, out, 408, "request body not received within "
                                       f"{cfg.body_timeout:g}s", code="body_timeout")
                    return
                message = (f"no complete answer within the router's total timeout "
                           f"({cfg.total_timeout:g}s)")
                if out.ttfb is None:
                    out.status = 504
                    await send_json(send, 504, error_json(504, message, code="timeout"))
                elif out.sse and not out.closing:
                    m.STREAM_ERRORS.inc()
                    await self._end_stream(send, out, 504, message, "timeout")
                elif not out.closing:
                    raise IncompleteBody(message) from None
        finally:
            if watcher is not None:
                watcher.stop()
            self._finish(out, started, span, out.request_id or req_id, incoming_tp)

    async def _body(self, receive: Receive, send: Send, out: _Outcome, declared: int | None
                    ) -> bytes | None:
        """The request body; None when the client got its 413 or went away."""
        try:
            return await read_body(receive, self.config.max_body_bytes, declared)
        except BodyTooLarge as exc:
            await self._reject(send, out, 413, str(exc), code="request_too_large")
        except ClientGone:
            out.status = 499
        return None

    async def _reject(self, send: Send, out: _Outcome, status: int, message: str,
                      headers: RawHeaders | None = None, *, param: str | None = None,
                      code: str | None = None) -> None:
        out.status = status
        out.closing = True
        await send_json(send, status, error_json(status, message, param=param, code=code),
                        headers)

    # -- routing ------------------------------------------------------------------------
    async def _route(self, scope: Scope, body: bytes, send: Send, out: _Outcome,
                     span: trace.Span | None, req_id: str, keys: RouteKeys, uid: str) -> None:
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            await self._reject(send, out, 400, f"request body is not valid JSON: {exc}")
            return
        except RecursionError:
            await self._reject(send, out, 400, "request body is nested too deeply to parse")
            return
        if not isinstance(data, dict):
            await self._reject(send, out, 400, "request body must be a JSON object")
            return
        model = data.get("model")
        if not isinstance(model, str) or not model:
            await self._reject(send, out, 400, "missing required parameter 'model'",
                               param="model", code="missing_required_parameter")
            return
        # The gateway names the model it authorised by uid: that uid exactly, never a
        # model whose name happens to equal it.
        entry = self.table.get(uid or model)
        if uid and entry is not None and entry.model_uid != uid:
            entry = None
        if entry is None:
            if not self.table.synced:
                await self._reject(send, out, 503, "the router has not loaded its endpoint "
                                   "table from etcd yet", [(b"retry-after", b"1")])
                return
            await self._reject(send, out, 404, f"The model '{model}' does not exist",
                               param="model", code="model_not_found")
            return
        if uid and model != entry.model_name and model != entry.model_uid:
            await self._reject(send, out, 400, f"the request's model '{model}' is not the "
                               f"model of {MODEL_UID_HEADER.decode()} '{uid}'", param="model",
                               code="model_mismatch")
            return
        out.model = entry.model_uid
        if span is not None:
            span.set_attribute("gen_ai.request.model", model)
            span.set_attribute("nebula.model_uid", entry.model_uid)
            span.set_attribute("nebula.policy", self._policy)

        gate: ModelGate | None = None
        if self.admission is not None:
            try:
                gate = await self.admission.acquire(entry.model_uid, keys.tenant, keys.priority)
            except Shed as shed:
                await self._reject(send, out, shed.status, shed.message,
                                   [(b"retry-after", str(shed.retry_after).encode())],
                                   code=shed.code)
                return
            entry = self.table.get(entry.model_uid) or entry  # replicas may have changed
        try:
            await self._forward(scope, data, body, send, out, span, req_id, keys, entry)
        finally:
            if gate is not None and self.admission is not None:
                self.admission.release(gate)

    async def _forward(self, scope: Scope, data: dict[str, object], body: bytes, send: Send,
                       out: _Outcome, span: trace.Span | None, req_id: str, keys: RouteKeys,
                       entry: ModelEntry) -> None:
        """Send an admitted request to a replica (retries, then failover of a broken stream)."""
        if self.keys.body:
            self.keys.from_body(keys, data)

        headers = request_headers(scope["headers"])
        if not req_id:
            req_id = new_request_id()
            headers["x-request-id"] = req_id
        out.request_id = req_id
        url_tail = scope["path"]
        if scope.get("query_string"):
            url_tail += "?" + scope["query_string"].decode("latin-1")
        streamed = data.get("stream") is True
        path = scope["path"]
        if streamed and self.config.stream_failover_max > 0 and path in FAILOVER_PATHS:
            out.record = Recorder(self.config.stream_failover_bytes)
            out.resumable = _Resumable(entry, keys, data, path, headers, url_tail)
        served = await self._attempts(entry, keys, body, headers, url_tail, streamed, send,
                                      out, span)
        if out.broken and served is not None and out.resumable is not None:
            await self._failover(out.resumable, served, send, out, span)

    async def _attempts(self, entry: ModelEntry, keys: RouteKeys, body: bytes,
                        headers: dict[str, str], url_tail: str, streamed: bool, send: Send,
                        out: _Outcome, span: trace.Span | None) -> Candidate | None:
        """Tries replicas until one answers; returns it (None: the client got an error)."""
        tried: list[Candidate] = []
        last: tuple[Candidate, AttemptFailed] | None = None
        unreachable = True  # every attempt so far failed to connect: nothing was sent
        pipeline = self.pipeline
        for attempt in range(self.config.max_retries + 1):
            cand, reason = pipeline.choose(entry.candidates, keys, time.monotonic(), tried)
            if cand is None:
                break
            if attempt:
                out.retries += 1
                m.retries_c(entry.model_uid).inc()
                await asyncio.sleep(self.backoff(attempt))
            m.decisions_c(self._policy, reason).inc()
            out.reason = reason
            out.replica = cand.ref
            tried.append(cand)
            try:
                await self._attempt(cand, entry, body, headers, url_tail, streamed, send, out,
                                    span)
                return cand
            except AttemptFailed as failure:
                last = (cand, failure)
                unreachable = unreachable and failure.kind == "connect"
                m.upstream_errors_c(failure.kind).inc()
                log.debug("attempt on %s failed: %s", cand.ref, failure.message)
                if not failure.retry:
                    break
        if last is None:
            await self._reject(send, out, 503, f"no ready replica for model "
                               f"'{entry.model_name}'", [(b"retry-after", b"1")],
                               code="no_ready_replica")
            return None
        cand, final = last
        log.warning("request %s for model %s failed after %d attempt(s); last on replica "
                    "%s: %s", out.request_id, entry.model_uid, len(tried), cand.ref,
                    final.message, extra={"request_id": out.request_id})
        if not final.retry:
            await self._reject(send, out, 504, final.public, code="timeout")
        elif unreachable:
            # No replica could even be connected to (a host gone, before its lease expires):
            # the model is unavailable for now, as with no replica at all, so say when to retry.
            await self._reject(send, out, 503, f"no replica of model '{entry.model_name}' is "
                               f"reachable ({len(tried)} tried)", [(b"retry-after", b"1")],
                               code="no_reachable_replica")
        else:
            await self._reject(send, out, 502, f"all {len(tried)} attempts failed; last: "
                               f"{final.public}", code="upstream_failed")
        return None

    async def _attempt(self, cand: Candidate, entry: ModelEntry, body: bytes,
                       headers: dict[str, str], url_tail: str, streamed: bool, send: Send,
                       out: _Outcome, parent: trace.Span | None,
                       rewriter: Rewriter | None = None) -> None:
        """One try on ``cand``; raises :class:`AttemptFailed` if nothing was sent yet.

        With ``rewriter`` it is a resume: the client has its headers already, and the
        continuation's chunks go through the rewriter.
        """
        outlier = self.pipeline.outlier
        outlier.on_attempt(cand, time.monotonic())
        cand.in_flight += 1
        cand.requests += 1
        span = None
        verdict: bool | None = None  # True success, False failure, None abandoned
        resp: Response | None = None
        try:
            if parent is not None:
                span, headers = self._client_span(parent, cand, headers)
            assert self.client is not None
            cfg = self.config
            try:
                async with Deadline(asyncio.get_running_loop(),
                                    cfg.ttfb_timeout if streamed else cfg.response_timeout):
                    # A non-streamed answer is silent until it is complete: no idle
                    # limit before it but the response timeout.
                    resp = await self.client.request(
                        cand.base_url, "POST", url_tail, headers, body,
                        cfg.idle_timeout if streamed else cfg.response_timeout)
                    status = resp.status
                    cand.answered_at = time.monotonic()
                    if status >= 500 or status == 429:
                        first = await _read_head(resp)
                        # An answer that refuses the request itself passes through as it came.
                        if not refuses_request(status, first):
                            text = first[:300].decode("utf-8", "replace")
                            raise AttemptFailed(
                                "status_429" if status == 429 else "status_5xx",
                                f"answered {status}: {text}", f"a replica answered {status}",
                                replica_fault=status != 429)
                    else:
                        first = await resp.readany()
                    if rewriter is not None and (
                            status != 200 or resp.content_type != "text/event-stream"):
                        # An engine that refuses the continuation (no continue_final_message)
                        # refuses it on every replica alike.
                        text = first[:300].decode("utf-8", "replace")
                        raise AttemptFailed("resume_refused", f"answered {status} to the "
                                            f"continuation: {text}", "the continuation was "
                                            "refused", replica_fault=False, retry=False)
            except AttemptFailed as failure:
                verdict = False if failure.replica_fault else None
                raise
            except ConnectTimeout:
                # During a connection storm a replica still answering is not failing.
                if outlier.connect_timeout_counts(cand, time.monotonic()):
                    verdict = False
                raise AttemptFailed("connect", f"cannot connect within {cfg.connect_timeout:g}s",
                                    "could not connect to a replica") from None
            except TimeoutError:
                if not streamed:
                    # Merely slow, or not: the engine may still be working on it, so neither a
                    # second copy elsewhere nor a mark against the replica.
                    raise AttemptFailed(
                        "response_timeout", f"no answer within {cfg.response_timeout:g}s",
                        f"no answer within the router's response timeout "
                        f"({cfg.response_timeout:g}s)", replica_fault=False, retry=False
                    ) from None
                verdict = False
                message = f"no first byte within {cfg.ttfb_timeout:g}s"
                raise AttemptFailed("ttfb_timeout", message, message) from None
            except ConnectError as exc:
                verdict = False
                raise AttemptFailed("connect", f"cannot connect: {exc}",
                                    "could not connect to a replica") from None
            except HttpClientError as exc:
                verdict = False
                raise AttemptFailed("upstream_closed", f"{type(exc).__name__}: {exc}",
                                    "a replica closed the connection before answering") from None
            verdict = await self._stream(cand, resp, first, send, out, rewriter)
            if span is not None:
                span.set_attribute("http.response.status_code", resp.status)
        finally:
            cand.in_flight -= 1
            if verdict is True:
                outlier.on_success(cand)
            elif verdict is False:
                if outlier.on_failure(cand, time.monotonic()):
                    m.ejections_c(entry.model_uid).inc()
                    log.warning("ejected replica %s after %d consecutive failures "
                                "(ejection #%d)", cand.ref, cand.failures, cand.ejections)
            else:
                outlier.on_abandon(cand)
            if resp is not None:
                resp.close()  # a no-op once released; cuts the upstream when abandoned
            if span is not None:
                if verdict is not True:
                    span.set_status(trace.StatusCode.ERROR,
                                    "failed" if verdict is False else "abandoned")
                span.end()

    def _client_span(self, parent: trace.Span, cand: Candidate, headers: dict[str, str]
                     ) -> tuple[trace.Span, dict[str, str]]:
        assert self.tracer is not None
        ctx = trace.set_span_in_context(parent)
        span = self.tracer.start_span("router.upstream", context=ctx,
                                      kind=trace.SpanKind.CLIENT,
                                      attributes={"nebula.replica": cand.ref,
                                                  "server.address": cand.base_url})
        headers = dict(headers)
        headers.pop("traceparent", None)
        headers.pop("tracestate", None)
        propagate.inject(headers, context=trace.set_span_in_context(span))
        return span, headers

    async def _stream(self, cand: Candidate, resp: Response, first: bytes,
                      send: Send, out: _Outcome, rewriter: Rewriter | None = None
                      ) -> bool | None:
        """Send status, headers and body to the client; returns the replica's verdict.

        A stream that may be resumed (``out.record`` within its limit) and breaks is not
        ended here: ``out.broken`` says why, and the caller resumes it.
        """
        if rewriter is None:
            hdrs = response_headers(resp.headers, keep_length=True)
            if self.config.replica_header:
                hdrs.append((b"x-nebula-replica", cand.ref.encode()))
            out.status = resp.status
            sse = out.sse = resp.content_type == "text/event-stream"
            if resp.at_eof() and not (sse and out.record is not None):
                await send({"type": "http.response.start", "status": resp.status,
                            "headers": hdrs})
                out.ttfb = time.perf_counter()
                out.closing = True
                await send({"type": "http.response.body", "body": first, "more_body": False})
                resp.release()
                return True
            await send({"type": "http.response.start", "status": resp.status, "headers": hdrs})
            out.ttfb = time.perf_counter()
        else:
            sse = True
        record = out.record if sse else None
        watch = record is not None  # a draining replica hands its streams on
        held = b""  # an SSE frame's start, sent once its end came (see split_frames)
        tail = b""  # bytes read with the upstream's end: sent with the end, in one write
        chunk = first
        write = out.write_more if sse and rewriter is None else None

        def take(data: bytes) -> bool:
            """The loop below for a read that needs nothing but sending (whole frames, a
            replica still ready, a client keeping up), run from the upstream's read
            callback: no task wakes for it (``Response.readany``)."""
            if (not data.endswith(FRAME_ENDS) or (watch and cand.status != EndpointState.READY)
                    or not write(data)):  # type: ignore[misc]  # (only passed with a writer)
                return False
            out.last_sent = data
            if record is not None:
                record.add(data)
            return True

        try:
            while True:
                if chunk:
                    if sse and (held or not chunk.endswith(FRAME_ENDS)):
                        chunk, held = split_frames(held + chunk)
                    if rewriter is not None and chunk:
                        chunk = rewriter.feed(chunk)
                    if chunk:
                        out.last_sent = chunk
                        if record is not None:
                            record.add(chunk)
                        if resp.at_eof():
                            tail = chunk
                            break
                        await send({"type": "http.response.body", "body": chunk,
                                    "more_body": True})
                    if watch and cand.status != EndpointState.READY:
                        watch = False  # looked at once: with no other replica, stay here
                        if self._movable(cand, out):
                            out.broken = "replica draining"
                            return None
                # --idle-timeout bounds each wait (the bytes take() sends count)
                chunk = await resp.readany(take if write is not None and not held else None)
                if not chunk:
                    break
        except (HttpClientError, TimeoutError) as exc:
            # The upstream died after bytes reached the client: no retry is possible.
            m.upstream_errors_c("stream_broken").inc()
            kind = "idle timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
            log.warning("request %s: replica %s failed mid-stream (%s)", out.request_id,
                        cand.ref, kind, extra={"request_id": out.request_id})
            if record is not None and record.active:
                out.broken = kind  # a frame held back is dropped: the resume re-sends it
                return False
            out.status = 502 if out.status < 400 else out.status
            if sse:  # a frame held back is dropped: the client gets whole frames only
                m.STREAM_ERRORS.inc()
                await self._end_stream(send, out, 502, f"the replica failed mid-stream ({kind})",
                                       "upstream_stream_error")
            else:
                m.STREAM_ERRORS.inc()
                out.abort = True  # the server drops the connection: the client sees the cut
            return False
        if rewriter is not None and held:
            held = rewriter.feed(held + b"\n\n")
        if record is not None and not (
                rewriter.ended if rewriter is not None else record.ended(held)) and (
                self._resumable_now(out)):
            # A clean EOF without [DONE]: the engine stopped short (killed between writes).
            # (A stream that is no chat or completions stream ends as it came.)
            m.upstream_errors_c("stream_broken").inc()
            log.warning("request %s: replica %s ended its stream without [DONE]",
                        out.request_id, cand.ref, extra={"request_id": out.request_id})
            if tail:  # the resume goes on from what the client has
                await send({"type": "http.response.body", "body": tail, "more_body": True})
            out.broken = "EOF without [DONE]"
            return False
        out.closing = True
        await send({"type": "http.response.body", "body": tail + held, "more_body": False})
        resp.release()
        return True

    @staticmethod
    def _resumable_now(out: _Outcome) -> bool:
        """The stream under way could be resumed exactly (parses the record: rare paths only)."""
        ctx = out.resumable
        data = out.record.data if out.record is not None else None
        if ctx is None or data is None:
            return False
        try:
            plan_continuation(ctx.path, ctx.request, reassemble(bytes(data)))
        except NotResumable:
            return False
        return True

    def _movable(self, cand: Candidate, out: _Outcome) -> bool:
        """Its replica is draining: can another one take this stream over exactly? A
        stream that cannot stays where it is until it ends."""
        ctx = out.resumable
        if ctx is None or not self._resumable_now(out):
            return False
        other, _ = self.pipeline.choose(ctx.entry.candidates, ctx.keys, time.monotonic(),
                                        [cand, *_not_continuing(ctx)])
        return other is not None

    # -- failover -----------------------------------------------------------------------
    async def _failover(self, ctx: _Resumable, failed: Candidate, send: Send, out: _Outcome,
                        span: trace.Span | None) -> None:
        """Resume a broken stream on other replicas, or end it with an SSE error event."""
        cfg = self.config
        tried = [failed, *_not_continuing(ctx)]
        while out.broken:
            kind, out.broken = out.broken, ""
            failed_ref = out.replica
            record = out.record
            data = record.data if record is not None else None
            outcome, detail = "", ""
            plan = state = None
            if data is None:
                outcome, detail = "refused", "over the failover record limit"
            elif out.resumes >= cfg.stream_failover_max:
                outcome, detail = "exhausted", f"{out.resumes} resume(s) already"
            else:
                state = reassemble(bytes(data))
                try:
                    planned = plan_continuation(ctx.path, ctx.request, state)
                    if planned.body is not None and (problem := refusal(
                            (c.capabilities for c in ctx.entry.candidates), ctx.path,
                            ctx.request)):
                        raise NotResumable(problem)  # e.g. tools, llama.cpp replicas only
                    plan = planned
                except NotResumable as exc:
                    outcome, detail = "refused", str(exc)
            served: Candidate | None = None
            if plan is not None and state is not None:
                rewriter = Rewriter(state, drop=plan.drop, finish_reason=plan.finish_reason)
                out.resumes += 1
                if plan.body is None:  # the answer is complete: only its end is missing
                    outcome = "resumed"
                    self._resume_event(span, out, outcome, kind, failed_ref, "", "local end")
                    m.resumes_c(outcome).inc()
                    out.closing = True
                    await send({"type": "http.response.body", "body": rewriter.local_end(),
                                "more_body": False})
                    return
                served = await self._resume_on(ctx, Targets(ctx.path, ctx.request, plan),
                                               rewriter, tried, send, out, span)
                outcome = "resumed" if served is not None else "failed"
                detail = "" if served is not None else "no replica took the continuation"
            m.resumes_c(outcome).inc()
            self._resume_event(span, out, outcome, kind, failed_ref,
                               served.ref if served is not None else "", detail)
            if served is None:
                log.warning("request %s: stream broken on %s (%s) not resumed: %s",
                            out.request_id, failed_ref, kind, detail,
                            extra={"request_id": out.request_id})
                m.STREAM_ERRORS.inc()
                out.status = 502
                await self._end_stream(send, out, 502, f"the replica failed mid-stream "
                                       f"({kind})", "upstream_stream_error")
                return
            if out.served is None:
                out.served = [failed_ref]
            out.served.append(served.ref)

    async def _resume_on(self, ctx: _Resumable, targets: Targets, rewriter: Rewriter,
                         tried: list[Candidate], send: Send, out: _Outcome,
                         span: trace.Span | None) -> Candidate | None:
        """Send the continuation to the best replica not tried yet, in the form that replica
        takes (``targets``); the one that took it."""
        for _ in range(self.config.max_retries + 1):
            cand, reason = self.pipeline.choose(ctx.entry.candidates, ctx.keys,
                                                time.monotonic(), tried)
            if cand is None:
                return None
            tried.append(cand)
            try:
                target = targets.for_replica(cand.capabilities)
            except NotResumable as exc:
                log.debug("continuation not for %s: %s", cand.ref, exc)
                continue
            m.decisions_c(self._policy, reason).inc()
            out.replica = cand.ref
            rewriter.from_completions = target.from_completions
            url_tail = target.path + ctx.url_tail[len(ctx.path):]  # the query string stays
            try:
                await self._attempt(cand, ctx.entry, target.body, ctx.headers, url_tail, True,
                                    send, out, span, rewriter)
                return cand
            except AttemptFailed as failure:
                m.upstream_errors_c(failure.kind).inc()
                log.debug("continuation on %s failed: %s", cand.ref, failure.message)
                if not failure.retry:
                    return None
        return None

    @staticmethod
    def _resume_event(span: trace.Span | None, out: _Outcome, outcome: str, kind: str,
                      failed: str, replica: str, detail: str) -> None:
        if span is None:
            return
        span.add_event("nebula.stream.resume", {
            "nebula.outcome": outcome, "nebula.reason": kind, "nebula.replica.failed": failed,
            "nebula.replica": replica, "nebula.detail": detail, "nebula.resumes": out.resumes})

    async def _end_stream(self, send: Send, out: _Outcome, status: int, message: str,
                          code: str) -> None:
        """End an SSE response under way with an error event, in a frame of its own."""
        out.closing = True
        event = sse_error_event(status, message, code=code)
        if not ends_a_frame(out.last_sent):  # a frame over the holding bound was cut
            event = b"\n\n" + event
        await send({"type": "http.response.body", "more_body": True, "body": event})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _finish(self, out: _Outcome, started: float, span: trace.Span | None, req_id: str,
                incoming_tp: str) -> None:
        now = time.perf_counter()
        status = out.status or 500
        model = out.model
        m.requests_c(model, _status_class(status)).inc()
        m.duration_h(model).observe(now - started)
        ttft_ms = None
        if out.ttfb is not None:
            m.ttfb_h(model).observe(out.ttfb - started)
            ttft_ms = round((out.ttfb - started) * 1000, 2)
        trace_id = incoming_tp[3:35] if len(incoming_tp) >= 35 else ""
        if span is not None:
            span.set_attribute("nebula.replica", out.replica)
            span.set_attribute("nebula.policy.reason", out.reason)
            span.set_attribute("nebula.retries", out.retries)
            if out.resumes:
                span.set_attribute("nebula.stream_resumes", out.resumes)
            span.set_attribute("http.response.status_code", status)
            if ttft_ms is not None:
                span.set_attribute("nebula.ttft_ms", ttft_ms)
            if status >= 500:
                span.set_status(trace.StatusCode.ERROR)
            trace_id = format(span.get_span_context().trace_id, "032x")
            span.end()
        if self.config.access_log and access_log.enabled():
            access_log.write({
                "request_id": req_id, "trace_id": trace_id, "model": model,
                "replica": out.replica, "status": status,
                "latency_ms": round((now - started) * 1000, 2), "ttft_ms": ttft_ms,
                "retries": out.retries, "policy_reason": out.reason,
                "replicas": out.served or ([out.replica] if out.replica else []),
                "resumes": out.resumes})


async def _read_head(content: Response) -> bytes:
    """The first :data:`ERROR_HEAD_BYTES` (or so) of a body; all of a shorter one."""
    head = b""
    while len(head) < ERROR_HEAD_BYTES:
        chunk = await content.readany()
        if not chunk:
            break
        head += chunk
    return head


def _not_continuing(ctx: _Resumable) -> list[Candidate]:
    """Replicas whose node declared capabilities that cannot continue this request (none
    declared: try)."""
    return [c for c in ctx.entry.candidates
            if not can_continue(c.capabilities, ctx.path, ctx.request)]


def _status_class(status: int) -> str:
    """Status label: exact code (a bounded set: what the router and engines answer)."""
    return str(status) if 100 <= status <= 599 else "other"
