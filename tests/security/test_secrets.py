"""API keys (good or bad) never show up in logs, metrics or traces.

A whole cluster runs at debug log level with tracing exported to a raw OTLP
receiver on loopback; requests carry a configured key, an unknown key, and keys
in places a careless logger would print (query string, x-api-key, a failing
request); then every log file under the run dir, every /metrics page, and every
exported trace payload is searched for the key material.
"""

from __future__ import annotations

import gzip
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from devtools.cluster import Cluster, http_get, http_post_json, wait_for

GOOD_KEY = "sk-nebula-good-4c1f9e0a7b3d52e8"
OTHER_KEY = "sk-nebula-other-9d8c7b6a5f4e3d21"
WRONG_KEY = "sk-nebula-wrong-0123456789abcdef"
SECRETS = (GOOD_KEY, OTHER_KEY, WRONG_KEY)


class RawOtlp:
    """Keeps every OTLP/HTTP export body as bytes (protobuf keeps strings verbatim)."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                owner.bodies.append(body)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def chat(url: str, key: str | None, *, stream: bool = False, model: str = "sec-model",
         query: str = "", extra: dict[str, str] | None = None) -> int:
    headers = dict(extra or {})
    if key:
        headers["authorization"] = f"Bearer {key}"
    status, _ = http_post_json(f"{url}/v1/chat/completions{query}", {
        "model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]},
        headers=headers, timeout=20)
    return status


def test_api_keys_never_logged_exported_or_measured(cluster: Cluster) -> None:
    otlp = RawOtlp()
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url, "OTEL_BSP_SCHEDULE_DELAY": "200",
           "NEBULA_LOG_LEVEL": "debug"}
    try:
        _, sched = cluster.start_scheduler(env=env)
        _, node = cluster.start_node("s1", args=["--engine-host", "127.0.0.1"], env=env)
        _, router = cluster.start_router(env=env)
        _, gateway = cluster.start_gateway(
            [router], env={**env, "NEBULA_API_KEYS": f"{GOOD_KEY},{OTHER_KEY}"})
        deployed = cluster.nebula("deploy", "sec", "--model", "sec-model", "--engine", "sim")
        assert deployed.returncode == 0, deployed.stderr
        cluster.wait_ready("sec", 1, timeout=60)
        wait_for(lambda: chat(gateway, GOOD_KEY) == 200, 20, "a good key is served")

        assert chat(gateway, GOOD_KEY, stream=True) == 200
        assert chat(gateway, OTHER_KEY) == 200
        assert chat(gateway, WRONG_KEY) == 401
        assert chat(gateway, None) == 401
        assert chat(gateway, GOOD_KEY, model="no-such-model") == 404
        # Keys where a careless log line would print them.
        assert chat(gateway, WRONG_KEY, query=f"?api_key={WRONG_KEY}") == 401
        assert chat(gateway, None, extra={"x-api-key": WRONG_KEY}) == 401
        assert chat(gateway, GOOD_KEY, query=f"?key={GOOD_KEY}") in (200, 400)
        req = urllib.request.Request(f"{gateway}/v1/models",
                                     headers={"authorization": f"Bearer {WRONG_KEY}"})
        try:
            urllib.request.urlopen(req, timeout=10)
        except urllib.error.HTTPError as exc:
            assert exc.code == 401

        # Traces: wait for the gateway's spans to be exported.
        wait_for(lambda: any(b"gateway" in body for body in otlp.bodies), 20,
                 "gateway spans exported")
        # With keys configured the gateway's /metrics needs one too (a 401 body would hide
        # nothing): read it as Prometheus would, with a key.
        scrape = urllib.request.Request(gateway + "/metrics",
                                        headers={"authorization": f"Bearer {GOOD_KEY}"})
        with urllib.request.urlopen(scrape, timeout=10) as resp:
            metrics = {"gateway": resp.read()}
        metrics.update({name: http_get(url + "/metrics")[1]
                        for name, url in (("router", router), ("node", node),
                                          ("scheduler", sched))})
    finally:
        otlp_bodies = list(otlp.bodies)
        otlp.close()
        cluster.stop_all(grace=5)  # flushes what the services buffered

    leaks = []
    for path in sorted(Path(cluster.run_dir).rglob("*")):
        if path.is_file() and path.suffix in (".log", ".json", ".txt", ""):
            text = path.read_bytes()
            leaks += [f"{path.relative_to(cluster.run_dir)}: {s[:16]}..." for s in SECRETS
                      if s.encode() in text]
    for name, body in metrics.items():
        leaks += [f"/metrics of {name}: {s[:16]}..." for s in SECRETS if s.encode() in body]
    for body in otlp_bodies:
        leaks += [f"OTLP export: {s[:16]}..." for s in SECRETS if s.encode() in body]
    assert otlp_bodies, "no trace was exported: the trace check proved nothing"
    assert not leaks, "API keys leaked:\n" + "\n".join(sorted(set(leaks)))
    # The logs did see these requests (the check above is not vacuous).
    gateway_log = (cluster.logs / "gateway.log").read_text()
    assert gateway_log.count('"status":401') + gateway_log.count('"status": 401') >= 3, \
        gateway_log[-2000:]
