"""The node exports spans of its reconcile steps and engine starts over OTLP/HTTP."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from devtools.cluster import Cluster, free_port, wait_for
from tests.e2e.test_node_lifecycle import node_args, put_plan, require_binaries, sim_plan, uid


@pytest.fixture(autouse=True)
def installed() -> None:
    require_binaries("nebula-node", "nebula-sim")


class Receiver:
    """A loopback OTLP/HTTP trace receiver that keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, dict[str, Any], str]] = []
        spans = self.spans

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                req = ExportTraceServiceRequest.FromString(body)
                for rs in req.resource_spans:
                    service = next((a.value.string_value for a in rs.resource.attributes
                                    if a.key == "service.name"), "")
                    for ss in rs.scope_spans:
                        for span in ss.spans:
                            attrs = {a.key: (a.value.string_value or a.value.int_value
                                             or a.value.double_value)
                                     for a in span.attributes}
                            spans.append((span.name, attrs, service))
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def names(self) -> set[str]:
        return {name for name, _, _ in self.spans}


def test_engine_start_and_reconcile_spans_are_exported(cluster: Cluster):
    receiver = Receiver()
    try:
        m = uid()
        cluster.start_node("n1", node_args(), env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url})
        put_plan(cluster, sim_plan(m, "n1", [free_port()]))
        cluster.wait_ready(m, 1)
        wait_for(lambda: {"node.engine_start", "node.reconcile"} <= receiver.names(), 20,
                 "node spans")
        start = next(a for n, a, _ in receiver.spans if n == "node.engine_start")
        assert start["nebula.model_uid"] == m and start["nebula.replica_id"] == "r0"
        assert start["nebula.engine"] == "sim" and start["nebula.start_seconds"] > 0
        assert {s for n, _, s in receiver.spans} == {"node"}
    finally:
        receiver.server.shutdown()
