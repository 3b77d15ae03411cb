"""The scheduler as a real process on real etcd: the seed contract, reconcile, leader failover.

Nodes here are NodeStatus records written straight into etcd (what a node agent
writes); the multi-node run with real node agents is test_scheduler_cluster.py.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time

import pytest

from devtools.cluster import BIN, Cluster, http_get, wait_for
from nebula_common.records import GpuInfo, NodeStatus
from nebula_common.store import EtcdConfig, EtcdStore


def put_json(cluster: Cluster, key: str, value: bytes) -> None:
    cluster.with_store(lambda store: store.put(key, value))


def delete_key(cluster: Cluster, key: str) -> None:
    cluster.with_store(lambda store: store.delete(key))


def node_record(node_id: str, gpus: int = 0) -> bytes:
    return NodeStatus(node_id=node_id, advertise_host="127.0.0.1",
                      gpus=[GpuInfo(index=i, name="H100", memory_total_mb=80_000)
                            for i in range(gpus)]).to_json()


def register_node(cluster: Cluster, node_id: str, gpus: int = 0) -> None:
    put_json(cluster, f"/nodes/{node_id}", node_record(node_id, gpus))


def register_nodes_at_once(cluster: Cluster, *node_ids: str) -> None:
    """Several NodeStatus records in one etcd transaction: the scheduler sees them together."""
    async def go() -> None:
        store = EtcdStore(EtcdConfig(endpoints=(cluster.etcd_endpoint,), timeout=3))

        async def txn(client) -> None:  # type: ignore[no-untyped-def]
            ops = client.transactions
            await client.transaction(compare=[], failure=[], success=[
                ops.put(f"/nodes/{n}".encode(), node_record(n)) for n in node_ids])
        try:
            await store.call(txn)
        finally:
            await store.close()
    asyncio.run(go())


def seed(cluster: Cluster, *extra: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "nebula-scheduler"), "--model-uid", "qwen2_5_0_5b",
         "--model-name", "Qwen/Qwen2.5-0.5B-Instruct", "--node-id", "host1", "--engine", "vllm",
         "--port", "10814", "--etcd-endpoints", f"http://{cluster.etcd_endpoint}",
         "--log-format", "text", *extra],
        capture_output=True, text=True, timeout=timeout,
    )


def test_seed_cli_contract_once(cluster: Cluster) -> None:
    result = seed(cluster, "--once")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("placed: ")]
    assert len(lines) == 1, result.stdout
    assert lines[0].startswith("placed: key=/placements/qwen2_5_0_5b")
    assert "version=1" in lines[0] and "nodes=host1" in lines[0]

    spec = cluster.etcd_items("/models/")["/models/qwen2_5_0_5b"]
    assert spec["model_name"] == "Qwen/Qwen2.5-0.5B-Instruct" and spec["engine"] == "vllm"
    assert spec["node_ids"] == ["host1"] and spec["replicas"] == 1 and spec["schema"] == 1
    plan = cluster.etcd_items("/placements/")["/placements/qwen2_5_0_5b"]
    assert plan["model_uid"] == "qwen2_5_0_5b"
    assert plan["model_name"] == "Qwen/Qwen2.5-0.5B-Instruct"
    assert plan["engine"] == "vllm" and plan["version"] == 1 and plan["unplaced"] == []
    (a,) = plan["assignments"]
    assert (a["replica_id"], a["node_id"], a["port"], a["gpu_indices"]) == \
        ("r0", "host1", 10814, [0])

    # Running it again changes nothing: the plan is not rewritten.
    again = seed(cluster, "--once")
    assert again.returncode == 0 and "version=1" in again.stdout
    assert cluster.etcd_items("/placements/")["/placements/qwen2_5_0_5b"]["version"] == 1


def test_seed_keeps_running_as_reconciler(cluster: Cluster) -> None:
    proc, url = cluster.start_scheduler(args=[
        "--model-uid", "m1", "--model-name", "demo", "--engine", "sim", "--replicas", "2",
        "--reschedule-grace", "1"])
    log = wait_for(lambda: "placed: key=/placements/m1" in proc.log() and proc.log(), 20,
                   "placed line")
    assert "unplaced=2" in log and "no live node" in log  # no node registered yet
    assert http_get(f"{url}/healthz") == (200, b"ok")
    wait_for(lambda: http_get(f"{url}/readyz")[0] == 200, 20, "readyz")
    wait_for(lambda: b"nebula_scheduler_leader 1.0" in http_get(f"{url}/metrics")[1], 20,
             "leadership")
    # Capacity appears: the reconciler places both replicas, spread over the two nodes.
    register_nodes_at_once(cluster, "n1", "n2")

    def placed() -> dict | None:
        plan = cluster.etcd_items("/placements/").get("/placements/m1")
        return plan if plan and len(plan["assignments"]) == 2 else None

    plan = wait_for(placed, 20, "both replicas placed")
    assert {a["node_id"] for a in plan["assignments"]} == {"n1", "n2"}
    assert plan["unplaced"] == [] and plan["version"] >= 2
    metrics = http_get(f"{url}/metrics")[1].decode()
    assert "nebula_scheduler_specs 1.0" in metrics
    assert 'nebula_scheduler_replicas{model_uid="m1",state="placed"} 2.0' in metrics
    assert "nebula_scheduler_unplaceable_replicas 0.0" in metrics
    assert "nebula_scheduler_reconcile_duration_seconds_count" in metrics
    assert 'nebula_scheduler_plan_writes_total{result="ok"}' in metrics
    # One scheduler alone never loses a compare-and-swap against itself.
    assert 'nebula_scheduler_plan_writes_total{result="conflict"} 0.0' in metrics

    # n2 vanishes (its lease expired): after the 1s grace its replica moves to n1.
    delete_key(cluster, "/nodes/n2")
    wait_for(lambda: (p := placed()) and {a["node_id"] for a in p["assignments"]} == {"n1"},
             20, "replica moved off n2")
    moved = placed()
    # n2 returns: nothing flaps back. Counted in reconcile passes, not seconds: three more
    # passes (the loop ticks every second) saw n2 back and none rewrote the plan.
    register_node(cluster, "n2")
    passes = scheduler_metric(url, RECONCILE_OK)
    assert passes is not None
    deadline = time.monotonic() + 20
    while (scheduler_metric(url, RECONCILE_OK) or 0) < passes + 3:
        assert placed()["version"] == moved["version"]
        assert time.monotonic() < deadline, "the reconciler stopped making passes"
        time.sleep(0.2)
    assert placed()["version"] == moved["version"]


RECONCILE_OK = 'nebula_scheduler_reconcile_total{result="ok"}'


def scheduler_metric(url: str, name: str) -> float | None:
    _status, body = http_get(f"{url}/metrics")
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def test_two_schedulers_leader_killed_follower_takes_over(cluster: Cluster) -> None:
    register_node(cluster, "n1")
    a, url_a = cluster.start_scheduler("sched-a", args=["--lease-ttl", "2"])
    wait_for(lambda: scheduler_metric(url_a, "nebula_scheduler_leader") == 1.0, 20, "a leads")
    _b, url_b = cluster.start_scheduler("sched-b", args=["--lease-ttl", "2"])
    wait_for(lambda: http_get(f"{url_b}/readyz")[0] == 200, 20, "b ready")
    assert scheduler_metric(url_b, "nebula_scheduler_leader") == 0.0
    assert json.loads(http_get(f"{url_b}/debug/leader")[1])["leader"] is False

    first = cluster.nebula("deploy", "one", "--model", "demo-one", "--engine", "sim")
    assert first.returncode == 0, first.stderr
    wait_for(lambda: cluster.etcd_items("/placements/").get("/placements/one"), 20,
             "plan written by the leader")

    killed_at = time.monotonic()
    a.kill9()
    wait_for(lambda: scheduler_metric(url_b, "nebula_scheduler_leader") == 1.0, 15,
             "b takes over")
    # Lease TTL 2s, plus one keepalive/campaign interval of slack.
    assert time.monotonic() - killed_at < 2 + 3

    second = cluster.nebula("deploy", "two", "--model", "demo-two", "--engine", "sim")
    assert second.returncode == 0, second.stderr
    plan = wait_for(lambda: cluster.etcd_items("/placements/").get("/placements/two"), 15,
                    "new deployment placed by the new leader")
    assert plan["assignments"][0]["node_id"] == "n1"


def test_unreachable_etcd_is_one_line_exit_nonzero(tmp_path) -> None:
    from devtools.cluster import free_port
    port = free_port()
    result = subprocess.run(
        [str(BIN / "nebula-scheduler"), "--model-uid", "x", "--model-name", "y",
         "--etcd-endpoints", f"127.0.0.1:{port}", "--etcd-wait", "1", "--once"],
        capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("nebula-scheduler: error: etcd unreachable")
    assert "Traceback" not in result.stderr


def test_seed_refuses_a_uid_or_name_that_is_another_models(cluster: Cluster) -> None:
    """Recording a model whose uid is another model's name would serve one under the other."""
    assert seed(cluster, "--once").returncode == 0  # qwen2_5_0_5b, Qwen/Qwen2.5-0.5B-Instruct
    before = cluster.etcd_items("/models/")
    for uid, name, problem in (
            ("Qwen/Qwen2.5-0.5B-Instruct", "other", "is the name of model 'qwen2_5_0_5b'"),
            ("other", "qwen2_5_0_5b", "is the uid of another model")):
        result = subprocess.run(
            [str(BIN / "nebula-scheduler"), "--model-uid", uid, "--model-name", name,
             "--engine", "sim", "--etcd-endpoints", cluster.etcd_endpoint, "--once"],
            capture_output=True, text=True, timeout=60)
        assert result.returncode == 1, (result.stdout, result.stderr)
        assert result.stderr.startswith("nebula-scheduler: error: cannot record "), result.stderr
        assert problem in result.stderr and result.stderr.strip().count("\n") == 0
    assert cluster.etcd_items("/models/") == before  # nothing written


@pytest.mark.parametrize("argv,message", [
    (["--model-uid", "x"], "--model-name is required"),
    (["--once"], "--once needs --model-uid"),
])
def test_bad_flags_one_line(argv: list[str], message: str) -> None:
    result = subprocess.run([str(BIN / "nebula-scheduler"), "--etcd-endpoints", "127.0.0.1:1",
                             *argv], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and message in result.stderr
    assert result.stderr.strip().count("\n") == 0


class OtlpReceiver:
    """A loopback OTLP/HTTP trace receiver: decodes every export into span dicts."""

    def __init__(self) -> None:
        import http.server
        import threading

        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        self.spans: list[dict] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                for rs in request.resource_spans:
                    service = next((a.value.string_value for a in rs.resource.attributes
                                    if a.key == "service.name"), "")
                    for ss in rs.scope_spans:
                        for span in ss.spans:
                            receiver.spans.append({
                                "service": service, "name": span.name,
                                "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
                                "parent": span.parent_span_id.hex(),
                                "attrs": {a.key: a.value.string_value or a.value.int_value
                                          for a in span.attributes},
                            })
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_reconcile_and_placement_decisions_are_traced(cluster: Cluster) -> None:
    receiver = OtlpReceiver()
    try:
        register_node(cluster, "n1")
        cluster.start_scheduler(env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
                                     "OTEL_SERVICE_NAME": "nebula-scheduler-test"})
        assert cluster.nebula("deploy", "traced", "--model", "m", "--engine", "sim",
                              "--replicas", "2").returncode == 0

        def decisions() -> list[dict]:
            return [s for s in receiver.spans if s["name"] == "scheduler.placement_decision"
                    and s["attrs"].get("nebula.model_uid") == "traced"]

        def complete() -> bool:
            # Spans arrive in batches: wait for the decisions, their parents and the writes.
            ids = {s["span_id"] for s in receiver.spans}
            names = {s["name"] for s in receiver.spans}
            return len(decisions()) >= 2 and all(d["parent"] in ids for d in decisions()) \
                and {"scheduler.reconcile", "scheduler.write_plan"} <= names

        wait_for(complete, 20, "reconcile, place, decision and write spans")
        found = decisions()
        by_id = {s["span_id"]: s for s in receiver.spans}
        for d in found:
            assert d["service"] == "nebula-scheduler-test"
            assert d["attrs"]["nebula.action"] == "add" and d["attrs"]["nebula.node_id"] == "n1"
            place_span = by_id[d["parent"]]
            assert place_span["name"] == "scheduler.place"
            root = by_id[place_span["parent"]]
            assert root["name"] == "scheduler.reconcile" and root["parent"] == ""
            assert root["trace_id"] == d["trace_id"]
        writes = [s for s in receiver.spans if s["name"] == "scheduler.write_plan"
                  and s["attrs"].get("nebula.model_uid") == "traced"]
        assert writes and writes[0]["attrs"]["nebula.result"] == "ok"
        assert by_id[writes[0]["parent"]]["name"] == "scheduler.reconcile"
    finally:
        receiver.close()
