"""The walking skeleton end to end: real etcd, the four roles as processes, the openai client."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import openai
import pytest

from devtools.cluster import BIN, Cluster, free_port, group_alive, http_get, wait_for

MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
UID = "qwen2_5_0_5b"


@pytest.fixture(scope="module")
def skeleton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    cluster = Cluster(tmp_path_factory.mktemp("skeleton") / "run")
    try:
        cluster.start_etcd()
        node, _ = cluster.start_node("host-a")
        _, router = cluster.start_router()
        _, gateway = cluster.start_gateway([router])
        engine_port = free_port()
        sched, _ = cluster.start_scheduler(args=[
            "--model-uid", UID, "--model-name", MODEL, "--node-id", "host-a",
            "--engine", "sim", "--port", str(engine_port)])
        placed = wait_for(lambda: [ln for ln in sched.log().splitlines()
                                   if ln.startswith("placed:")], 30, "placed: line")
        cluster.wait_ready(UID, 1, timeout=60)
        client = openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0)
        # the router learns the endpoint from its watch a moment after etcd has it
        wait_for(lambda: client.models.list().data, 20, "model listed by the gateway")
        yield dict(cluster=cluster, router=router, gateway=gateway, client=client, node=node,
                   placed=placed, engine_port=engine_port)
    finally:
        cluster.stop_all(grace=5)


def test_scheduler_prints_placed_line(skeleton: dict) -> None:
    assert skeleton["placed"][0].startswith(f"placed: key=/placements/{UID}")


def test_placement_and_endpoint_records(skeleton: dict) -> None:
    cluster: Cluster = skeleton["cluster"]
    plan = cluster.etcd_items("/placements/")[f"/placements/{UID}"]
    assert plan["model_uid"] == UID and plan["model_name"] == MODEL and plan["engine"] == "sim"
    assert plan["schema"] == 1 and plan["version"] >= 1
    (assignment,) = plan["assignments"]
    assert assignment["node_id"] == "host-a" and assignment["port"] == skeleton["engine_port"]
    key = f"/endpoints/{UID}/{assignment['replica_id']}"
    endpoint = cluster.etcd_items(f"/endpoints/{UID}/")[key]
    assert endpoint["status"] == "ready" and endpoint["node_id"] == "host-a"
    assert endpoint["base_url"] == f"http://127.0.0.1:{skeleton['engine_port']}"
    assert endpoint["model_name"] == MODEL and endpoint["engine"] == "sim"
    node_log = skeleton["node"].log()
    assert "registered endpoint" in node_log and f"base_url={endpoint['base_url']}" in node_log


def test_healthz(skeleton: dict) -> None:
    for url in (skeleton["router"], skeleton["gateway"]):
        assert http_get(f"{url}/healthz") == (200, b"ok")


def test_chat_completion(skeleton: dict) -> None:
    reply = skeleton["client"].chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=8)
    assert reply.choices[0].message.content
    assert reply.usage.completion_tokens > 0


def test_streamed_chat_completion(skeleton: dict) -> None:
    stream = skeleton["client"].chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=8, stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) >= 3 and text
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")


def test_streamed_responses(skeleton: dict) -> None:
    events = list(skeleton["client"].responses.create(model=MODEL, input="hello", stream=True))
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert "response.output_text.delta" in types
    assert [e.sequence_number for e in events] == sorted(e.sequence_number for e in events)
    assert events[-1].response.usage.output_tokens > 0


def test_unknown_model_is_an_openai_404(skeleton: dict) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        skeleton["client"].chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert exc.value.body["code"] == "model_not_found"


def test_malformed_json_is_400(skeleton: dict) -> None:
    import urllib.request

    req = urllib.request.Request(f"{skeleton['gateway']}/v1/chat/completions", data=b"{nope",
                                 headers={"content-type": "application/json"}, method="POST")
    try:
        urllib.request.urlopen(req, timeout=5)
        raise AssertionError("malformed JSON was accepted")
    except urllib.error.HTTPError as exc:
        assert exc.code == 400
        assert json.loads(exc.read())["error"]["type"] == "invalid_request_error"


def test_zz_sigterm_to_node_deregisters_and_leaves_no_engine(skeleton: dict) -> None:
    """Runs last in this module: it takes the node down."""
    cluster: Cluster = skeleton["cluster"]
    pidfiles = list((cluster.run_dir / "nodes" / "host-a").rglob("*.pid"))
    assert pidfiles, "the node keeps a pid file per engine"
    pgids = [json.loads(p.read_text())["pgid"] for p in pidfiles]
    assert all(group_alive(g) for g in pgids)
    assert skeleton["node"].stop(grace=20) == 0
    assert cluster.etcd_items(f"/endpoints/{UID}/") == {}
    assert not any(group_alive(g) for g in pgids), "engine process group left behind"


@pytest.mark.parametrize("role", ["nebula-router", "nebula-gateway", "nebula-node",
                                  "nebula-scheduler"])
def test_busy_port_is_one_line_and_nonzero(role: str) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        extra = {"nebula-gateway": ["--router-url", "http://127.0.0.1:1"],
                 "nebula-node": ["--node-id", "x"]}.get(role, [])
        result = subprocess.run([str(BIN / role), "--listen", f"127.0.0.1:{port}",
                                 "--etcd-endpoints", f"127.0.0.1:{free_port()}", *extra],
                                capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(port) in lines[0] and "Traceback" not in result.stderr
