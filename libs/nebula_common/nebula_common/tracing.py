"""OpenTelemetry setup: OTLP/HTTP export when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set.

When it is not set the global no-op tracer stays in place, so spans cost a
few attribute look-ups and nothing is exported.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

from opentelemetry import context, propagate, trace

_configured = False


def tracing_enabled() -> bool:
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ) and os.environ.get("OTEL_SDK_DISABLED", "").lower() != "true"


def setup_tracing(service: str) -> trace.Tracer:
    """Install the SDK tracer provider (once) if an OTLP endpoint is configured."""
    global _configured
    if tracing_enabled() and not _configured:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        name = os.environ.get("OTEL_SERVICE_NAME") or service
        provider = TracerProvider(resource=Resource.create({"service.name": name}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(),
                                                       schedule_delay_millis=200))
        trace.set_tracer_provider(provider)
        _configured = True
    return trace.get_tracer(f"nebula.{service}")


def shutdown_tracing() -> None:
    provider = trace.get_tracer_provider()
    shutdown = getattr(provider, "shutdown", None)
    if shutdown is not None:
        shutdown()


def extract(headers: Mapping[str, str]) -> context.Context:
    """The caller's trace context from W3C ``traceparent``/``tracestate`` headers."""
    return propagate.extract(headers)


def inject(headers: MutableMapping[str, str]) -> None:
    """Add ``traceparent`` for the current span to outgoing ``headers``."""
    propagate.inject(headers)
