"""Router tracing end to end: an OTLP/HTTP receiver on loopback decodes what the router exports."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from devtools.cluster import Cluster, free_port, http_post_json, wait_for
from tests.e2e.test_router_support import start_sims, wait_router_sees

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


class Receiver:
    """Collects every span POSTed to /v1/traces."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        spans = self.spans

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                req = ExportTraceServiceRequest()
                req.ParseFromString(body)
                for rs in req.resource_spans:
                    for ss in rs.scope_spans:
                        spans.extend(ss.spans)
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


def attrs(span: Span) -> dict[str, object]:
    out: dict[str, object] = {}
    for kv in span.attributes:
        v = kv.value
        out[kv.key] = v.string_value or v.int_value or v.double_value or v.bool_value
    return out


def test_router_spans_continue_the_trace_and_cover_the_stream(cluster: Cluster,
                                                              receiver: Receiver) -> None:
    sims = start_sims(cluster, "tr", "Org/Traced", 1, "--itl-ms", "30", "--output-tokens", "8")
    _, router = cluster.start_router(env={
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
        "OTEL_SERVICE_NAME": "nebula-router"})
    wait_router_sees(router, "tr", 1)
    tp = f"00-{TRACE_ID}-{PARENT_ID}-01"
    body = {"model": "Org/Traced", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 8}
    assert http_post_json(f"{router}/v1/chat/completions", body,
                          headers={"traceparent": tp})[0] == 200
    engine_tp = sims[0].stats()["last_request_headers"]["traceparent"]
    assert http_post_json(f"{router}/v1/chat/completions", {**body, "stream": True},
                          headers={"traceparent": tp})[0] == 200

    def complete() -> list[Span] | None:
        servers = [s for s in receiver.spans if s.name == "router.request"]
        clients = [s for s in receiver.spans if s.name == "router.upstream"]
        return servers if len(servers) >= 2 and len(clients) >= 2 else None

    servers = wait_for(complete, 15, "router spans at the OTLP receiver")
    clients = [s for s in receiver.spans if s.name == "router.upstream"]
    for span in servers:
        assert span.trace_id.hex() == TRACE_ID
        assert span.parent_span_id.hex() == PARENT_ID
        assert span.kind == Span.SPAN_KIND_SERVER
        a = attrs(span)
        assert a["gen_ai.request.model"] == "Org/Traced"
        assert a["nebula.replica"] == "tr/0"
        assert a["nebula.policy"] == "least_load" and a["nebula.policy.reason"] == "single"
        assert a["http.response.status_code"] == 200
        assert "nebula.retries" in a and "nebula.ttft_ms" in a
    by_id = {s.span_id: s for s in servers}
    for span in clients:
        assert span.kind == Span.SPAN_KIND_CLIENT
        assert span.parent_span_id in by_id
    # the engine received the upstream span's context
    first_client = min(clients, key=lambda s: s.start_time_unix_nano)
    assert engine_tp == f"00-{TRACE_ID}-{first_client.span_id.hex()}-01"
    # the streaming request's span ends when the stream ends (8 tokens, 30 ms apart)
    streamed = max(servers, key=lambda s: s.start_time_unix_nano)
    assert streamed.end_time_unix_nano - streamed.start_time_unix_nano >= 0.2e9
