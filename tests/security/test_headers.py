"""Header hygiene and upstream pinning, through a real gateway and router.

The "engine" here is a recording HTTP server registered in etcd the way a node
registers a replica (placement + endpoint records): it remembers every header
it received and answers with hop-by-hop and internal headers of its own, so the
test sees what crosses each hop in both directions. A second recording server
plays the attacker's host: no request may ever reach it.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from devtools.cluster import Cluster, http_get, wait_for
from nebula_common.records import Assignment, Endpoint, NodeStatus, PlacementPlan
from nebula_common.store import EtcdConfig, EtcdStore

MODEL = "hdr-model"
API_KEY = "sk-nebula-test-7f3a9c1e5b2d4f60"

# Request headers a client may send that must never reach the engine.
HOP_REQUEST = {
    "connection": "keep-alive, x-drop-me",
    "keep-alive": "timeout=5, max=100",
    "proxy-authorization": "Basic c2VjcmV0OnNlY3JldA==",
    "proxy-connection": "keep-alive",
    "te": "trailers",
    "trailer": "x-checksum",
    "upgrade": "websocket",
    "x-drop-me": "listed in Connection: hop-by-hop by declaration",
}
# Response headers an engine may send that must never reach the client.
HOP_RESPONSE = {
    "Connection": "x-engine-private",
    "X-Engine-Private": "listed in Connection",
    "Keep-Alive": "timeout=99",
    "Proxy-Authenticate": "Basic realm=engine",
    "Trailer": "x-checksum",
    "Upgrade": "h2c",
}


@dataclass
class Recorder:
    """A tiny HTTP/1.1 server that records requests and answers like an engine."""

    name: str
    requests: list[dict] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> Recorder:
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                self._answer(b"")

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                self._answer(self.rfile.read(length))

            def _answer(self, body: bytes) -> None:
                recorder.requests.append({
                    "path": self.path, "host": self.headers.get("host"),
                    "headers": [(k.lower(), v) for k, v in self.headers.items()],
                    "body": body})
                try:
                    stream = bool(json.loads(body or b"{}").get("stream"))
                except ValueError:
                    stream = False
                if stream:
                    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1,
                             "model": MODEL, "choices": [{"index": 0, "delta": {
                                 "content": "hi"}, "finish_reason": "stop"}]}
                    payload = (b"data: " + json.dumps(chunk).encode() + b"\n\n"
                               b"data: [DONE]\n\n")
                    ctype = "text/event-stream"
                else:
                    payload = json.dumps({
                        "id": "c1", "object": "chat.completion", "created": 1, "model": MODEL,
                        "choices": [{"index": 0, "message": {"role": "assistant",
                                                             "content": "hi"},
                                     "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                                  "total_tokens": 2}}).encode()
                    ctype = "application/json"
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                for name, value in HOP_RESPONSE.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True,
                         name=f"recorder-{self.name}").start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def register(cluster: Cluster, base_url: str) -> None:
    """Write what the scheduler and a node write for one ready replica."""
    async def go() -> None:
        store = EtcdStore(EtcdConfig(endpoints=(cluster.etcd_endpoint,), timeout=3))
        try:
            plan = PlacementPlan(model_uid="hdr", model_name=MODEL, engine="sim",
                                 assignments=[Assignment(replica_id="r0", node_id="n1",
                                                         port=1)])
            ep = Endpoint(model_uid="hdr", model_name=MODEL, replica_id="r0", node_id="n1",
                          base_url=base_url, engine="sim")
            await store.put("/nodes/n1", NodeStatus("n1", "127.0.0.1").to_json())
            await store.put("/placements/hdr", plan.to_json())
            await store.put("/endpoints/hdr/r0", ep.to_json())
        finally:
            await store.close()
    asyncio.run(go())


@dataclass
class Stack:
    cluster: Cluster
    engine: Recorder
    attacker: Recorder
    router_url: str
    gateway_url: str


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    cluster = Cluster(Path(tmp_path_factory.mktemp("hdr")) / "run")
    engine = Recorder("engine").start()
    attacker = Recorder("attacker").start()
    try:
        cluster.start_etcd()
        register(cluster, engine.base_url)
        _, router = cluster.start_router(env={"NEBULA_LOG_LEVEL": "debug"})
        _, gateway = cluster.start_gateway([router], env={"NEBULA_API_KEYS": API_KEY,
                                                          "NEBULA_LOG_LEVEL": "debug"})
        wait_for(lambda: MODEL.encode() in http_get(router + "/v1/models")[1], 20,
                 "router lists the recorded engine")
        yield Stack(cluster, engine, attacker, router, gateway)
    finally:
        cluster.stop_all(grace=3)
        engine.stop()
        attacker.stop()


def raw_request(url: str, head_lines: list[str], body: bytes, request_target: str | None = None
                ) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 POST over a socket, so no client library drops or adds headers."""
    host, port = url.removeprefix("http://").split(":")
    target = request_target or "/v1/chat/completions"
    head = [f"POST {target} HTTP/1.1", *head_lines, f"Content-Length: {len(body)}"]
    with socket.create_connection((host, int(port)), timeout=15) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head_raw, _, rest = data.partition(b"\r\n\r\n")
        lines = head_raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), value.strip())
        length = headers.get("content-length")
        sock.settimeout(10)
        while True:
            if length is not None and len(rest) >= int(length):
                break
            if length is None and b"0\r\n\r\n" in rest:
                break
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    return status, headers, rest


def chat_body(stream: bool = False, model: str = MODEL) -> bytes:
    return json.dumps({"model": model, "stream": stream,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()


def base_lines(host: str = "nebula", auth: bool = True) -> list[str]:
    lines = [f"Host: {host}", "Content-Type: application/json"]
    if auth:
        lines.append(f"Authorization: Bearer {API_KEY}")
    return lines


def hop_lines() -> list[str]:
    return [f"{k.title()}: {v}" for k, v in HOP_REQUEST.items()]


def last_engine_headers(stack: Stack) -> dict[str, str]:
    assert stack.engine.requests, "the engine received nothing"
    return dict(stack.engine.requests[-1]["headers"])


def assert_response_clean(headers: dict[str, str]) -> None:
    for name in ("keep-alive", "proxy-authenticate", "trailer", "upgrade", "x-engine-private"):
        assert name not in headers, f"{name} leaked to the client: {headers}"
    assert "x-engine-private" not in headers.get("connection", "").lower(), headers


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("hop", ["gateway", "router"])
def test_hop_by_hop_headers_stripped_both_ways(stack: Stack, hop: str, stream: bool) -> None:
    url = stack.gateway_url if hop == "gateway" else stack.router_url
    before = len(stack.engine.requests)
    status, headers, _ = raw_request(url, [*base_lines(), *hop_lines()], chat_body(stream))
    assert status == 200, headers
    assert len(stack.engine.requests) == before + 1
    seen = last_engine_headers(stack)
    leaked = {k: v for k, v in seen.items() if k in HOP_REQUEST}
    assert not leaked, f"hop-by-hop request headers reached the engine via the {hop}: {leaked}"
    assert_response_clean(headers)
    if hop == "gateway":
        # The caller's API key is the gateway's business: it never reaches an engine.
        assert "authorization" not in seen, seen
        assert API_KEY not in json.dumps(seen)


def test_client_cannot_forge_internal_headers(stack: Stack) -> None:
    """x-nebula-* headers are Nebula's to set: a client's own are not passed on as-is."""
    forged = ["X-Nebula-Replica: evil/r9", "X-Nebula-Internal-Debug: 1"]
    status, headers, _ = raw_request(stack.gateway_url, [*base_lines(), *forged], chat_body())
    assert status == 200
    seen = last_engine_headers(stack)
    assert seen.get("x-nebula-replica") != "evil/r9", seen
    assert "x-nebula-internal-debug" not in seen, seen
    # The replica stays inside: only a gateway started with --expose-replica-header says it.
    assert "x-nebula-replica" not in headers, headers


@pytest.mark.parametrize("hop", ["gateway", "router"])
def test_upstream_only_from_etcd(stack: Stack, hop: str) -> None:
    """Host, X-Forwarded-Host, an absolute URI or a URL as the model never redirect the proxy."""
    url = stack.gateway_url if hop == "gateway" else stack.router_url
    evil = stack.attacker.base_url
    evil_hostport = evil.removeprefix("http://")
    before = len(stack.engine.requests)
    tricks = [
        (base_lines(host=evil_hostport), None, chat_body()),
        ([*base_lines(), f"X-Forwarded-Host: {evil_hostport}", "X-Forwarded-Proto: http",
          f"Forwarded: host={evil_hostport}"], None, chat_body()),
        (base_lines(host=evil_hostport), f"{evil}/v1/chat/completions", chat_body()),
        (base_lines(), None, chat_body(model=f"{evil}/v1")),
        (base_lines(), None, chat_body(model=f"../../{evil_hostport}")),
    ]
    answers = []
    for lines, target, body in tricks:
        status, _, _ = raw_request(url, lines, body, request_target=target)
        answers.append(status)
    assert not stack.attacker.requests, (
        f"the {hop} connected to a host that did not come from etcd: "
        f"{stack.attacker.requests[:2]}")
    # The first three are ordinary requests for the real model: they reach the real engine.
    assert len(stack.engine.requests) - before >= 2, answers
    assert answers[3] == 404 and answers[4] == 404, answers
