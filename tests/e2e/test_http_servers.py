"""The request path on each HTTP server (`--http-server uvicorn|hypercorn|granian`): alike."""

from __future__ import annotations

import openai
import pytest

from devtools.cluster import Cluster, free_port, http_get, wait_for

MODEL = "uv-model"


@pytest.mark.parametrize("server", ["uvicorn", "hypercorn", "granian"])
def test_router_and_gateway_on(server: str, cluster: Cluster) -> None:
    flags = ["--http-server", server]
    cluster.start_node("uv-node")
    router_proc, router = cluster.start_router(args=flags)
    gateway_proc, gateway = cluster.start_gateway([router],
                                                  args=[*flags, "--expose-replica-header"])
    cluster.start_scheduler(args=["--model-uid", "uv", "--model-name", MODEL, "--node-id",
                                  "uv-node", "--engine", "sim", "--port", str(free_port())])
    cluster.wait_ready("uv", 1)
    # /readyz needs the gateway's router probe, a loop its Quart start-up hook starts:
    # the ASGI lifespan runs on every server
    wait_for(lambda: http_get(f"{gateway}/readyz")[0] == 200, 20, "gateway ready")
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key="x", max_retries=0, timeout=30)
    wait_for(lambda: client.models.list().data, 20, "model listed")

    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-nebula-replica"].startswith("uv/")
    assert raw.parse().choices[0].message.content
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True))
    assert len(chunks) > 2 and chunks[-1].choices[0].finish_reason

    assert gateway_proc.stop() == 0 and router_proc.stop() == 0, "SIGTERM is a clean stop"
    assert "Traceback" not in gateway_proc.log() + router_proc.log()
