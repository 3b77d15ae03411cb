"""A small real cluster for the edge tests: one sim replica behind a router and a gateway."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devtools.cluster import Cluster, http_post_json

MAX_BODY = 64 * 1024
BODY_TIMEOUT = 2.0
MODEL = "edge-model"


@dataclass
class Edge:
    cluster: Cluster
    gateway_url: str
    router_url: str
    host: str
    port: int

    def good_request(self) -> tuple[int, bytes]:
        return http_post_json(self.gateway_url + "/v1/chat/completions", {
            "model": MODEL, "messages": [{"role": "user", "content": "still there?"}]},
            timeout=10)


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    c = Cluster(Path(tmp_path_factory.mktemp("edge")) / "run")
    try:
        c.start_etcd()
        c.start_scheduler()
        c.start_node("e1", args=["--engine-host", "127.0.0.1", "--lease-ttl", "3"])
        _, router = c.start_router(args=["--ttfb-timeout", "5", "--total-timeout", "20"])
        _, gateway = c.start_gateway([router], args=[
            "--max-body-bytes", str(MAX_BODY), "--body-timeout", str(BODY_TIMEOUT),
            "--request-timeout", "15"])
        deployed = c.nebula("deploy", "edge", "--model", MODEL, "--engine", "sim",
                            "--engine-args", "--ttft-ms 5 --itl-ms 1 --output-tokens 8")
        assert deployed.returncode == 0, deployed.stderr
        c.wait_ready("edge", 1, timeout=60)
        host, port = gateway.removeprefix("http://").split(":")
        edge = Edge(c, gateway, router, host, int(port))
        from devtools.cluster import wait_for
        wait_for(lambda: edge.good_request()[0] == 200, 20, "a first good answer")
        yield edge
    finally:
        c.stop_all(grace=3)
