"""One request's record: metrics, access log, span and key slot, finished exactly once.

Every request the gateway answers (hot path or Quart) opens an :class:`Outcome`
on arrival and finishes it when its last byte was sent or its client went away.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from nebula_common.asgi import BodyWriter
from nebula_common.ids import new_request_id
from nebula_common.logs import AccessLog

from . import metrics
from .auth import ANONYMOUS, ApiKey, Authenticator

access_log = AccessLog("nebula.gateway.access")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def request_id_from(incoming: str | None) -> str:
    """The caller's ``x-request-id`` when it is sane, else a fresh one."""
    if incoming and _REQUEST_ID.match(incoming):
        return incoming
    return new_request_id()


@dataclass(slots=True, eq=False)
class Outcome:
    """One request's bookkeeping: metrics, access log, span, limits; finished once."""

    auth: Authenticator
    log_access: bool
    endpoint: str
    method: str
    request_id: str
    span: trace.Span
    caller_trace_id: str | None
    start: float = field(default_factory=time.perf_counter)
    status: int = 500
    model: str = "unknown"
    model_uid: str = ""
    key: ApiKey | None = None
    holds_slot: bool = False
    ttft: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    note: str | None = None
    finished: bool = False
    hold: Any = None
    """The request's token reservation (:class:`~.tenancy.Hold`), settled after it ends."""
    priority: str | None = None
    """A priority class the gateway sets itself over the key's (a batch's lines: ``batch``)."""
    write_more: BodyWriter | None = None
    """The server's writer of streamed body parts without a message, if it offers one
    (:func:`~.passthrough.pass_frames` calls it from the router answer's read callback)."""

    def __post_init__(self) -> None:
        metrics.in_flight_g.inc()

    @classmethod
    def begin(cls, endpoint: str, method: str, headers: Mapping[str, str], *,
              auth: Authenticator, log_access: bool,
              tracer: trace.Tracer | None) -> Outcome:
        """The record of a request just arrived; its span when ``tracer`` is given."""
        request_id = request_id_from(headers.get("x-request-id"))
        parent = headers.get("traceparent", "")
        caller_trace = parent.split("-")[1][:32] if parent.count("-") == 3 else None
        if tracer is not None:
            span = tracer.start_span(
                "gateway.request", context=propagate.extract(dict(headers)),
                kind=SpanKind.SERVER, attributes={"http.request.method": method,
                                                  "url.path": endpoint,
                                                  "nebula.request_id": request_id})
        else:
            span = trace.INVALID_SPAN
        return cls(auth, log_access, endpoint, method, request_id, span, caller_trace)

    @property
    def key_label(self) -> str:
        return self.key.label if self.key is not None else ANONYMOUS

    @property
    def owner(self) -> str:
        """Whose stored responses this request may see: its key's hash."""
        return self.key.key_hash if self.key is not None else ANONYMOUS

    def first_byte(self) -> None:
        if self.ttft is None:
            self.ttft = time.perf_counter() - self.start

    def usage(self, usage: object) -> bool:
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
            self.auth.release(self.key)
        metrics.in_flight_g.dec()
        metrics.requests_c(self.endpoint, self.model, str(status)).inc()
        metrics.duration_h(self.endpoint, self.model).observe(elapsed)
        if self.ttft is not None:
            metrics.ttft_h(self.endpoint, self.model).observe(self.ttft)
        if self.prompt_tokens is not None:
            metrics.prompt_tokens_c(self.model, self.key_label).inc(self.prompt_tokens)
            metrics.completion_tokens_c(self.model, self.key_label).inc(
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
        if self.log_access and access_log.enabled():
            access_log.write({
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
