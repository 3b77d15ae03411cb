"""The `nebula` operator CLI against real etcd and a real scheduler process.

Nodes and endpoints are records written into etcd the way a node agent writes
them, so drain and status are checked without engines; the run with real node
agents is test_scheduler_cluster.py.
"""

from __future__ import annotations

import json
import subprocess
import time

from devtools.cluster import BIN, Cluster, free_port, wait_for
from nebula_common.records import Endpoint
from tests.e2e.test_scheduler import put_json, register_node


def plan_of(cluster: Cluster, uid: str) -> dict | None:
    return cluster.etcd_items("/placements/").get(f"/placements/{uid}")


def mark_ready(cluster: Cluster, uid: str, assignment: dict) -> None:
    ep = Endpoint(model_uid=uid, model_name=uid, replica_id=assignment["replica_id"],
                  node_id=assignment["node_id"], engine="sim",
                  base_url=f"http://127.0.0.1:{assignment['port']}")
    put_json(cluster, f"/endpoints/{uid}/{assignment['replica_id']}", ep.to_json())


def one_line_error(result: subprocess.CompletedProcess[str], text: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.startswith("nebula: error: "), result.stderr
    assert text in result.stderr, result.stderr
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr


def test_unreachable_etcd_fails_fast_with_one_line() -> None:
    port = free_port()
    started = time.monotonic()
    result = subprocess.run([str(BIN / "nebula"), "--etcd-endpoints", f"127.0.0.1:{port}",
                             "status"], capture_output=True, text=True, timeout=30)
    assert time.monotonic() - started < 10
    one_line_error(result, "etcd unreachable")


def test_unknown_names_are_one_line_errors(cluster: Cluster) -> None:
    one_line_error(cluster.nebula("scale", "nope", "3"), "unknown model 'nope'")
    one_line_error(cluster.nebula("undeploy", "nope"), "unknown model 'nope'")
    one_line_error(cluster.nebula("drain", "ghost"), "unknown node 'ghost'")
    one_line_error(cluster.nebula("uncordon", "ghost"), "unknown node 'ghost'")
    usage = cluster.nebula("deploy", "x", "--engine", "nonsense", "--model", "m")
    assert usage.returncode == 2 and "Traceback" not in usage.stderr


def test_deploy_scale_status_undeploy(cluster: Cluster) -> None:
    register_node(cluster, "n1")
    register_node(cluster, "n2")
    cluster.start_scheduler()
    deployed = cluster.nebula("deploy", "chat", "--model", "demo/chat", "--engine", "sim",
                              "--replicas", "2", "--port", "12000",
                              "--engine-args", "--ttft-ms 5 --itl-ms '1'")
    assert deployed.returncode == 0, deployed.stderr
    spec = cluster.etcd_items("/models/")["/models/chat"]
    assert spec["engine_args"] == ["--ttft-ms", "5", "--itl-ms", "1"] and spec["port"] == 12000
    plan = wait_for(lambda: (p := plan_of(cluster, "chat")) and len(p["assignments"]) == 2 and p,
                    20, "2 replicas placed")
    assert {a["node_id"] for a in plan["assignments"]} == {"n1", "n2"}
    assert {a["port"] for a in plan["assignments"]} == {12000}  # one per node: no collision
    mark_ready(cluster, "chat", plan["assignments"][0])

    status = cluster.nebula("status")
    assert status.returncode == 0, status.stderr
    assert "NODES" in status.stdout and "MODELS" in status.stdout
    assert "chat" in status.stdout and "2/2/1" in status.stdout
    data = json.loads(cluster.nebula("status", "--json").stdout)
    assert [n["node_id"] for n in data["nodes"]] == ["n1", "n2"]
    (model,) = data["models"]
    assert (model["desired"], model["placed"], model["ready"]) == (2, 2, 1)
    states = sorted(r["state"] for r in data["replicas"])
    assert states == ["ready", "starting"]

    scaled = cluster.nebula("scale", "chat", "3")
    assert scaled.returncode == 0 and "2 -> 3" in scaled.stdout
    plan3 = wait_for(lambda: (p := plan_of(cluster, "chat")) and len(p["assignments"]) == 3 and p,
                     20, "3 replicas placed")
    before = {a["replica_id"]: a["node_id"] for a in plan["assignments"]}
    after = {a["replica_id"]: a["node_id"] for a in plan3["assignments"]}
    assert {k: after[k] for k in before} == before  # nothing moved
    assert plan3["version"] == plan["version"] + 1

    undeployed = cluster.nebula("undeploy", "chat")
    assert undeployed.returncode == 0, undeployed.stderr
    wait_for(lambda: plan_of(cluster, "chat") is None, 20, "plan removed")


def test_deploy_refuses_a_uid_or_name_that_is_another_models(cluster: Cluster) -> None:
    assert cluster.nebula("deploy", "a", "--model", "Org/A", "--engine", "sim").returncode == 0
    for argv, problem in (
            (["Org/A", "--model", "Org/B"], "model uid 'Org/A' is the name of model 'a'"),
            (["b", "--model", "a"], "model name 'a' is the uid of another model"),
            (["b", "--model", "Org/A"], "model name 'Org/A' is already the name of model 'a'")):
        result = cluster.nebula("deploy", *argv, "--engine", "sim")
        one_line_error(result, f"cannot deploy {argv[0]!r}: {problem}")
    assert list(cluster.etcd_items("/models/")) == ["/models/a"]
    # Redeploying the same model under a new name is an update, not a collision.
    assert cluster.nebula("deploy", "a", "--model", "Org/A2", "--engine", "sim",
                          "--trust-remote-code").returncode == 0
    spec = cluster.etcd_items("/models/")["/models/a"]
    assert spec["model_name"] == "Org/A2" and spec["trust_remote_code"] is True


def test_unplaced_reason_in_status(cluster: Cluster) -> None:
    register_node(cluster, "cpu-only")
    cluster.start_scheduler()
    assert cluster.nebula("deploy", "big", "--model", "m", "--engine", "vllm").returncode == 0
    wait_for(lambda: (p := plan_of(cluster, "big")) and p["unplaced"], 20, "unplaced listed")
    data = json.loads(cluster.nebula("status", "--json").stdout)
    (replica,) = data["replicas"]
    assert replica["state"] == "unplaced" and "needs a GPU" in replica["reason"]
    register_node(cluster, "gpu", gpus=1)
    plan = wait_for(lambda: (p := plan_of(cluster, "big")) and p["assignments"] and p, 20,
                    "placed once a GPU node appears")
    assert plan["assignments"][0]["node_id"] == "gpu" and not plan["unplaced"]


def test_drain_adds_replacement_before_removing(cluster: Cluster) -> None:
    for n in ("n1", "n2", "n3"):
        register_node(cluster, n)
    cluster.start_scheduler()
    assert cluster.nebula("deploy", "m", "--model", "m", "--engine", "sim",
                          "--replicas", "2").returncode == 0
    plan = wait_for(lambda: (p := plan_of(cluster, "m")) and len(p["assignments"]) == 2 and p,
                    20, "placed")
    for a in plan["assignments"]:
        mark_ready(cluster, "m", a)
    victim = plan["assignments"][0]
    drain = subprocess.Popen(
        [str(BIN / "nebula"), "--etcd-endpoints", cluster.etcd_endpoint, "drain",
         victim["node_id"], "--wait", "--timeout", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        grown = wait_for(lambda: (p := plan_of(cluster, "m")) and len(p["assignments"]) == 3
                         and p, 20, "replacement added")
        # The drained replica is still there: its replacement is not ready yet.
        ids = {a["replica_id"]: a for a in grown["assignments"]}
        assert ids[victim["replica_id"]]["node_id"] == victim["node_id"]
        (new,) = [a for a in grown["assignments"]
                  if a["replica_id"] not in {x["replica_id"] for x in plan["assignments"]}]
        assert new["node_id"] != victim["node_id"]
        mark_ready(cluster, "m", new)
        final = wait_for(lambda: (p := plan_of(cluster, "m")) and len(p["assignments"]) == 2
                         and p, 20, "drained replica removed")
        assert victim["node_id"] not in {a["node_id"] for a in final["assignments"]}
        out, err = drain.communicate(timeout=30)
        assert drain.returncode == 0, err
        assert f"drained: {victim['node_id']}" in out
    finally:
        if drain.poll() is None:
            drain.kill()
            drain.wait()
    status = json.loads(cluster.nebula("status", "--json").stdout)
    cordoned = {n["node_id"]: n["cordoned"] for n in status["nodes"]}
    assert cordoned[victim["node_id"]] is True
    uncordon = cluster.nebula("uncordon", victim["node_id"])
    assert uncordon.returncode == 0 and "uncordoned" in uncordon.stdout
    assert cluster.etcd_items("/cordon/") == {}


def test_etcd_flags_work_before_or_after_the_command(cluster: Cluster) -> None:
    register_node(cluster, "flag-node")
    for argv in (["--etcd-endpoints", cluster.etcd_endpoint, "status", "--json"],
                 ["status", "--json", "--etcd-endpoints", cluster.etcd_endpoint]):
        result = subprocess.run([str(BIN / "nebula"), *argv], capture_output=True, text=True,
                                timeout=30)
        assert result.returncode == 0, result.stderr
        assert "flag-node" in result.stdout
    # given both before and after the command, the one after it wins
    result = subprocess.run([str(BIN / "nebula"), "--etcd-endpoints", "127.0.0.1:1",
                             "status", "--etcd-endpoints", cluster.etcd_endpoint],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, "the flag after the command wins"
