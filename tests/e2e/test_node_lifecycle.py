"""The node agent on real etcd with real sim engines: lifecycle under failure.

Plans are written to etcd directly (the scheduler is another role), the node
runs as its own process, engines are ``nebula-sim`` processes; assertions read
etcd, the node's HTTP API and /proc.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from devtools.cluster import BIN, REPO, Cluster, free_port, http_get, http_post_json, wait_for
from nebula_common.keys import Keys
from nebula_common.records import Assignment, PlacementPlan
from nebula_common.store import EtcdStore
from tests.support import needs
from tests.support.partition import partition

FAST_SIM = ["--ttft-ms", "1", "--itl-ms", "1"]


# -- helpers ---------------------------------------------------------------------------------
def require_binaries(*names: str) -> None:
    """A missing entry point is a broken install: the test fails and says which, never skips."""
    for name in names:
        needs.binary(str(BIN / name), "the venv is incomplete (run make venv)")


@pytest.fixture(autouse=True)
def installed() -> None:
    require_binaries("nebula-node", "nebula-sim")


def put_plan(cluster: Cluster, plan: PlacementPlan) -> None:
    key = Keys(cluster.prefix).placement(plan.model_uid)
    cluster.with_store(lambda s: s.put(key, plan.to_json()))


def sim_plan(uid: str, node_id: str, ports: list[int], version: int = 1,
             engine_args: list[str] | None = None) -> PlacementPlan:
    return PlacementPlan(
        model_uid=uid, model_name=f"{uid}-name", engine="sim", version=version,
        assignments=[Assignment(replica_id=f"r{i}", node_id=node_id, port=port,
                                engine_args=list(engine_args or FAST_SIM))
                     for i, port in enumerate(ports)])


def uid(prefix: str = "m") -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def endpoint(cluster: Cluster, model_uid: str, replica_id: str) -> dict[str, Any] | None:
    return cluster.etcd_items(f"/endpoints/{model_uid}/").get(
        f"/endpoints/{model_uid}/{replica_id}")


def pid_record(cluster: Cluster, node_id: str, model_uid: str, replica_id: str
               ) -> dict[str, Any] | None:
    path = cluster.run_dir / "nodes" / node_id / "engines" / f"{model_uid}__{replica_id}.pid"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def live_processes() -> list[tuple[int, int, int, str]]:
    """(pid, ppid, pgid, cmdline) of every live, non-zombie process."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if fields[0] == "Z":
            continue
        out.append((int(entry), int(fields[1]), int(fields[2]), cmd))
    return out


def engine_processes(model_uid: str) -> list[tuple[int, int, int, str]]:
    """Live sim engines serving ``model_uid`` (its uid is on their command line)."""
    return [p for p in live_processes() if "nebula-sim" in p[3] and f" {model_uid} " in p[3]]


def group_alive(pgid: int) -> bool:
    return any(p[2] == pgid for p in live_processes())


def node_replicas(url: str) -> dict[tuple[str, str], dict[str, Any]]:
    status, body = http_get(f"{url}/replicas", timeout=10)
    assert status == 200
    return {(r["model_uid"], r["replica_id"]): r for r in json.loads(body)["replicas"]}


def node_args(**over: Any) -> list[str]:
    low = free_port()
    flags = {"--lease-ttl": "2", "--stop-grace": "3", "--engine-ready-timeout": "60",
             "--drain-timeout": "20", "--restart-backoff": "0.1",
             "--port-range": f"{low}-{low + 200}", "--engine-host": "127.0.0.1",
             "--log-format": "text"}
    flags.update({k: str(v) for k, v in over.items()})
    return [x for kv in flags.items() for x in kv]


def models_of(base_url: str) -> set[str]:
    status, body = http_get(f"{base_url}/v1/models")
    assert status == 200
    return {m["id"] for m in json.loads(body)["data"]}


def post_with_header(url: str, body: dict[str, Any], header: str) -> tuple[int, str | None]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        resp.read()
        return resp.status, resp.headers.get(header)


FAKE_VLLM = """#!{python}
# Stands in for `vllm serve`: records what the node passed, leaves a child in its
# process group (as vLLM's VLLM::EngineCore), then becomes the sim.
import os, subprocess, sys
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)", "VLLM::EngineCore"])
args = sys.argv[1:]
assert args[0] == "serve", args
def val(flag):
    return args[args.index(flag) + 1]
names, i = [], args.index("--served-model-name") + 1
while i < len(args) and not args[i].startswith("--"):
    names.append(args[i])
    i += 1
tp = val("--tensor-parallel-size") if "--tensor-parallel-size" in args else "1"
print("FAKE-VLLM CUDA_VISIBLE_DEVICES=" + os.environ.get("CUDA_VISIBLE_DEVICES", "-")
      + " TP=" + tp + " MODEL=" + args[1] + " NAMES=" + ",".join(names), flush=True)
os.execv({sim!r}, [{sim!r}, "--host", val("--host"), "--port", val("--port"),
                   "--model-name", args[1], "--served-model-name", *names[1:]])
"""

FAKE_SMI = """#!/bin/sh
echo "0, NVIDIA H100 80GB HBM3, 81559, 1024"
echo "1, NVIDIA H100 80GB HBM3, 81559, 2048"
"""


# -- tests ---------------------------------------------------------------------------------
def test_two_models_two_replicas_distinct_ports_status_stats_and_api(cluster: Cluster):
    a, b = uid("a"), uid("b")
    proc, url = cluster.start_node("n1", node_args())
    pa = [free_port(), free_port()]
    # Model b's assigned port is held by a foreign process: the node takes the next free one.
    foreign = socket.socket()
    foreign.bind(("127.0.0.1", 0))
    foreign.listen(1)
    taken = foreign.getsockname()[1]
    try:
        put_plan(cluster, sim_plan(a, "n1", pa))
        put_plan(cluster, sim_plan(b, "n1", [taken]))
        eps_a = cluster.wait_ready(a, 2, timeout=60)
        eps_b = cluster.wait_ready(b, 1, timeout=60)
    finally:
        foreign.close()
    urls = {e["base_url"] for e in eps_a + eps_b}
    assert len(urls) == 3
    assert {e["base_url"] for e in eps_a} == {f"http://127.0.0.1:{p}" for p in pa}
    assert eps_b[0]["base_url"] != f"http://127.0.0.1:{taken}"
    for e in eps_a + eps_b:
        assert e["node_id"] == "n1" and e["engine"] == "sim" and e["plan_version"] == 1
        # Each replica answers for its own model only.
        assert e["model_uid"] in models_of(e["base_url"])
        other = b if e["model_uid"] == a else a
        assert other not in models_of(e["base_url"])
        status, body = http_post_json(f"{e['base_url']}/v1/chat/completions", {
            "model": e["model_uid"], "messages": [{"role": "user", "content": "hi"}]})
        assert status == 200 and json.loads(body)["choices"]
    for e in eps_a + eps_b:
        assert (f"registered endpoint model_uid={e['model_uid']} replica_id={e['replica_id']} "
                f"base_url={e['base_url']}") in proc.log()

    node = cluster.etcd_items("/nodes/")["/nodes/n1"]
    assert node["advertise_host"] == "127.0.0.1" and "sim" in node["engines"]
    assert isinstance(node["gpus"], list) and node["started_at"] > 0

    stats = wait_for(lambda: len(s := cluster.etcd_items(f"/stats/{a}/")) == 2 and s, 20,
                     "stats of model a")
    for value in stats.values():
        assert set(value) >= {"running", "waiting", "kv_cache_usage", "prefix_cache_hit_rate"}

    reps = node_replicas(url)
    assert reps[(a, "r0")]["state"] == "ready" and reps[(b, "r0")]["port"] != taken
    status, text = http_get(f"{url}/replicas/{a}/r0/log")
    assert status == 200 and b"starting:" in text
    assert http_get(f"{url}/replicas/nope/r0/log")[0] == 404
    status, metrics = http_get(f"{url}/metrics")
    assert b'nebula_node_replicas{state="ready"} 3.0' in metrics
    assert b"nebula_node_engine_start_seconds_count" in metrics
    assert b"nebula_node_etcd_up 1.0" in metrics


def test_engine_kill9_deregisters_at_once_restarts_and_leaves_no_orphan(cluster: Cluster):
    m = uid()
    proc, url = cluster.start_node("n1", node_args())
    put_plan(cluster, sim_plan(m, "n1", [free_port()]))
    cluster.wait_ready(m, 1)
    old = pid_record(cluster, "n1", m, "r0")
    assert old and old["pgid"] == old["pid"]
    assert [p[0] for p in engine_processes(m)] == [old["pid"]]

    os.kill(old["pid"], signal.SIGKILL)
    killed = time.monotonic()
    wait_for(lambda: endpoint(cluster, m, "r0") is None, 5, "endpoint removed", interval=0.02)
    assert time.monotonic() - killed < 1.0

    eps = cluster.wait_ready(m, 1, timeout=30)
    new = pid_record(cluster, "n1", m, "r0")
    assert new and new["pid"] != old["pid"]
    assert eps[0]["base_url"] == f"http://127.0.0.1:{new['port']}"
    # Process tree: exactly one engine, a direct child of the node, in its own group.
    engines = engine_processes(m)
    assert [p[0] for p in engines] == [new["pid"]]
    assert engines[0][1] == proc.pid and engines[0][2] == new["pid"]
    assert not group_alive(old["pgid"])
    reps = node_replicas(url)
    assert reps[(m, "r0")]["restarts"] == 1
    assert b"nebula_node_engine_restarts_total" in http_get(f"{url}/metrics")[1]


def test_node_kill9_then_same_node_id_reaps_old_engines(cluster: Cluster):
    m = uid()
    args = node_args()
    proc, _ = cluster.start_node("n1", args)
    put_plan(cluster, sim_plan(m, "n1", [free_port(), free_port()]))
    cluster.wait_ready(m, 2)
    old = {r: pid_record(cluster, "n1", m, r) for r in ("r0", "r1")}
    proc.kill9()
    # A crashed node leaves its engines running (their own process groups).
    assert all(group_alive(rec["pgid"]) for rec in old.values())

    proc2, url2 = cluster.start_node("n1", args)
    wait_for(lambda: all(not group_alive(rec["pgid"]) for rec in old.values()), 30,
             "old engine groups reaped")
    wait_for(lambda: all((rec := pid_record(cluster, "n1", m, r)) and
                         rec["pid"] != old[r]["pid"] for r in old) and
             len(cluster.wait_ready(m, 2)) == 2, 60, "fresh engines registered")
    wait_for(lambda: {e["base_url"] for e in cluster.ready_endpoints(m)} ==
             {f"http://127.0.0.1:{pid_record(cluster, 'n1', m, r)['port']}" for r in old},
             30, "endpoints point at the new engines")
    engines = engine_processes(m)
    assert len(engines) == 2 and all(p[1] == proc2.pid for p in engines)
    assert sorted(node_replicas(url2)) == [(m, "r0"), (m, "r1")]
    assert "reaping engine group" in proc2.log()


def test_etcd_restart_and_lost_lease_keep_engines_running(cluster: Cluster):
    proc, url = cluster.start_node("n1", node_args(**{"--log-level": "debug"}))
    try:
        _etcd_restart_and_lost_lease(cluster, url)
    except (AssertionError, TimeoutError) as exc:
        raise AssertionError(f"{exc}\n--- node log ---\n{proc.log()[-6000:]}") from exc


def _etcd_restart_and_lost_lease(cluster: Cluster, url: str) -> None:
    m = uid()
    put_plan(cluster, sim_plan(m, "n1", [free_port()]))
    cluster.wait_ready(m, 1)
    wait_for(lambda: cluster.etcd_items(f"/stats/{m}/"), 20, "stats")
    before = pid_record(cluster, "n1", m, "r0")

    # 1. etcd down (longer than the lease TTL), then up again with the same data dir.
    cluster.procs["etcd"].stop(grace=5)
    wait_for(lambda: http_get(f"{url}/readyz")[0] == 503, 20, "node notices etcd is gone")
    deadline = time.monotonic() + 4  # > lease TTL (2s) of downtime, the engine keeps serving
    while time.monotonic() < deadline:
        assert node_replicas(url)[(m, "r0")]["state"] == "ready"
        time.sleep(0.2)
    cluster.start_etcd()
    wait_for(lambda: endpoint(cluster, m, "r0") and cluster.etcd_items("/nodes/")
             and cluster.etcd_items(f"/stats/{m}/"), 30, "keys back after etcd restart")
    wait_for(lambda: http_get(f"{url}/readyz")[0] == 200, 30, "node ready again")

    # 2. The lease itself is lost (revoked): a new lease, every key back.
    async def revoke(store: EtcdStore) -> int:
        kv = await store.get(Keys(cluster.prefix).node("n1"))
        await store.revoke(kv.lease)
        return kv.lease
    old_lease = cluster.with_store(revoke)
    wait_for(lambda: (ep := endpoint(cluster, m, "r0")) and ep["status"] == "ready", 30,
             "endpoint re-registered after lease loss")

    async def leases(store: EtcdStore) -> set[int]:
        kvs, _ = await store.get_prefix(cluster.prefix + "/")
        return {kv.lease for kv in kvs if kv.key.startswith(cluster.prefix + "/endpoints/")}
    assert old_lease not in cluster.with_store(leases)
    wait_for(lambda: cluster.etcd_items("/nodes/"), 10, "node status back")

    after = pid_record(cluster, "n1", m, "r0")
    assert after["pid"] == before["pid"] and group_alive(before["pgid"])
    assert node_replicas(url)[(m, "r0")]["restarts"] == 0
    assert [p[0] for p in engine_processes(m)] == [before["pid"]]


def store_revision(cluster: Cluster) -> int:
    async def read(store: EtcdStore) -> int:
        return (await store.get_prefix(cluster.prefix + "/none/"))[1]
    return cluster.with_store(read)


@dataclass(frozen=True)
class Change:
    kind: str  # PUT or DELETE
    key: str
    lease: int
    value: bytes


def history(cluster: Cluster, prefix: str, after: int) -> list[Change]:
    """Every change under ``prefix`` (after the cluster's prefix) after revision ``after``."""
    async def read(store: EtcdStore) -> list[Change]:
        watch = await store.call(lambda c: c.watch_prefix(
            (cluster.prefix + prefix).encode(), start_revision=after + 1))
        events = watch.__aiter__()
        changes: list[Change] = []
        try:  # etcd replays the history at once: a quiet second means it is all here
            while True:
                try:
                    event = await asyncio.wait_for(events.__anext__(), 1.0)
                except TimeoutError:
                    return changes
                changes.append(Change(str(event.kind), event.kv.key.decode(), event.kv.lease,
                                      event.kv.value))
        finally:
            await watch.cancel()
    return cluster.with_store(read)


def test_partitioned_node_gives_up_the_replica_that_moved_while_it_was_away(cluster: Cluster):
    m = uid()
    with partition(cluster.etcd_endpoint) as link:
        proc, url = cluster.start_node("n1", [*node_args(), "--etcd-endpoints", link.endpoint])
        cluster.start_node("n2", node_args())
        put_plan(cluster, sim_plan(m, "n1", [free_port()]))
        cluster.wait_ready(m, 1)
        wait_for(lambda: cluster.etcd_items(f"/stats/{m}/"), 20, "stats of r0 on n1")
        engine = pid_record(cluster, "n1", m, "r0")
        assert engine is not None

        link.cut()  # n1 keeps running, etcd is out of its reach; its lease expires
        wait_for(lambda: endpoint(cluster, m, "r0") is None, 20, "n1's keys expired")
        # The scheduler moved the replica, same replica id, to n2 meanwhile.
        put_plan(cluster, sim_plan(m, "n2", [free_port()], version=2))
        wait_for(lambda: (ep := endpoint(cluster, m, "r0")) and ep["node_id"] == "n2"
                 and ep["status"] == "ready", 60, "r0 ready on n2")
        wait_for(lambda: cluster.etcd_items(f"/stats/{m}/"), 20, "stats of r0 on n2")

        async def lease_of(store: EtcdStore) -> int:
            kv = await store.get(Keys(cluster.prefix).endpoint(m, "r0"))
            return kv.lease
        owner = cluster.with_store(lease_of)
        healed_at = store_revision(cluster)
        link.heal()
        try:
            wait_for(lambda: "/nodes/n1" in cluster.etcd_items("/nodes/"), 30,
                     "n1 registered again")
            wait_for(lambda: not group_alive(engine["pgid"]), 30, "n1 stopped its r0 engine")
            wait_for(lambda: (m, "r0") not in node_replicas(url), 30, "n1 forgot r0")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n--- n1 log ---\n{proc.log()[-6000:]}") from exc
        # n2's keys of r0 were never overwritten nor deleted by n1 coming back.
        changes = history(cluster, f"/endpoints/{m}/", healed_at) + \
            history(cluster, f"/stats/{m}/", healed_at)
        assert all(c.kind == "PUT" and c.lease == owner for c in changes), changes
        ep = endpoint(cluster, m, "r0")
        assert ep is not None and ep["node_id"] == "n2" and ep["status"] == "ready"


def test_sigterm_node_deregisters_and_stops_every_engine(cluster: Cluster):
    a, b = uid("a"), uid("b")
    proc, _ = cluster.start_node("n1", node_args())
    put_plan(cluster, sim_plan(a, "n1", [free_port()]))
    put_plan(cluster, sim_plan(b, "n1", [free_port()]))
    cluster.wait_ready(a, 1)
    cluster.wait_ready(b, 1)
    recs = [pid_record(cluster, "n1", u, "r0") for u in (a, b)]
    started = time.monotonic()
    assert proc.stop(grace=30) == 0
    assert time.monotonic() - started < 20
    assert cluster.etcd_items("/endpoints/") == {}
    assert cluster.etcd_items("/nodes/") == {}
    assert cluster.etcd_items("/stats/") == {}
    assert not any(group_alive(r["pgid"]) for r in recs)
    assert engine_processes(a) == [] and engine_processes(b) == []
    assert list((cluster.run_dir / "nodes" / "n1" / "engines").glob("*.pid")) == []


def test_removed_assignment_drains_in_flight_request_then_stops(cluster: Cluster):
    m = uid()
    _proc, url = cluster.start_node("n1", node_args())
    ports = [free_port(), free_port()]
    slow = ["--ttft-ms", "1", "--itl-ms", "100"]
    put_plan(cluster, sim_plan(m, "n1", ports, engine_args=slow))
    eps = {e["replica_id"]: e for e in cluster.wait_ready(m, 2)}
    keep = pid_record(cluster, "n1", m, "r0")
    gone = pid_record(cluster, "n1", m, "r1")

    # A ~3 s streamed answer in flight on r1 when its assignment is removed.
    result: dict[str, Any] = {}

    def long_request() -> None:
        result["reply"] = http_post_json(f"{eps['r1']['base_url']}/v1/completions", {
            "model": m, "prompt": "hello", "max_tokens": 30, "stream": False}, timeout=60)

    worker = threading.Thread(target=long_request)
    worker.start()
    wait_for(lambda: cluster.etcd_items(f"/stats/{m}/")[f"/stats/{m}/r1"]["running"] >= 1, 10,
             "stats show the request running")
    plan = sim_plan(m, "n1", ports[:1], version=2, engine_args=slow)
    put_plan(cluster, plan)

    wait_for(lambda: (ep := endpoint(cluster, m, "r1")) and ep["status"] == "draining", 10,
             "r1 draining")
    assert group_alive(gone["pgid"])  # still serving the in-flight request
    assert node_replicas(url)[(m, "r1")]["state"] == "draining"
    worker.join(timeout=60)
    assert result["reply"][0] == 200
    wait_for(lambda: endpoint(cluster, m, "r1") is None and not group_alive(gone["pgid"]), 30,
             "r1 stopped after its request finished")
    # r0 was left alone: same process, plan version updated.
    assert pid_record(cluster, "n1", m, "r0")["pid"] == keep["pid"]
    wait_for(lambda: endpoint(cluster, m, "r0")["plan_version"] == 2, 10, "r0 at version 2")
    wait_for(lambda: sorted(node_replicas(url)) == [(m, "r0")], 10, "r1 gone from /replicas")


def test_changed_assignment_restarts_only_that_replica(cluster: Cluster):
    m = uid()
    cluster.start_node("n1", node_args())
    ports = [free_port(), free_port()]
    put_plan(cluster, sim_plan(m, "n1", ports))
    cluster.wait_ready(m, 2)
    r0 = pid_record(cluster, "n1", m, "r0")
    r1 = pid_record(cluster, "n1", m, "r1")
    plan = sim_plan(m, "n1", ports, version=2)
    plan.assignments[1].engine_args = [*FAST_SIM, "--max-concurrency", "4"]
    put_plan(cluster, plan)
    wait_for(lambda: (rec := pid_record(cluster, "n1", m, "r1")) and rec["pid"] != r1["pid"]
             and len(cluster.ready_endpoints(m)) == 2, 30, "r1 restarted with new args")
    assert "--max-concurrency" in pid_record(cluster, "n1", m, "r1")["cmd"]
    assert pid_record(cluster, "n1", m, "r0")["pid"] == r0["pid"]
    assert not group_alive(r1["pgid"])


def test_engine_that_keeps_failing_is_reported_failed_with_log_tail(cluster: Cluster):
    m = uid()
    proc, url = cluster.start_node("n1", node_args(**{"--restart-max": 2}))
    # An allowed flag with a value the sim's parser rejects: the engine exits at once.
    put_plan(cluster, sim_plan(m, "n1", [free_port()], engine_args=["--max-model-len", "lots"]))
    ep = wait_for(lambda: (e := endpoint(cluster, m, "r0")) and e["status"] == "failed" and e,
                  60, "replica reported failed")
    assert "exited with code" in ep["reason"]
    assert "max-model-len" in ep["log_tail"] and len(ep["log_tail"]) <= 2048
    rep = node_replicas(url)[(m, "r0")]
    assert rep["state"] == "failed" and rep["restarts"] == 2
    assert engine_processes(m) == []
    assert "failed 3 times in a row; not restarting" in proc.log()
    # Not restarted again. With --restart-backoff 0.1 a third restart would start 0.4 s
    # after the last failure; watching for 3 s (over 7 times that) makes the check mean
    # something: any restart would show as a counter, a pid, a process or a state.
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        rep = node_replicas(url)[(m, "r0")]
        assert (rep["state"], rep["restarts"], rep["pid"]) == ("failed", 2, None), rep
        assert engine_processes(m) == []
        time.sleep(0.1)
    metrics = http_get(f"{url}/metrics")[1]
    assert b'nebula_node_replicas{state="failed"} 1.0' in metrics


def test_unhealthy_engine_is_deregistered_and_restarted(cluster: Cluster):
    m = uid()
    cluster.start_node("n1", node_args(**{"--health-failures": 2, "--health-interval": 0.3}))
    put_plan(cluster, sim_plan(m, "n1", [free_port()],
                               engine_args=[*FAST_SIM, "--hang-health"]))
    cluster.wait_ready(m, 1)
    old = pid_record(cluster, "n1", m, "r0")
    status, _ = http_post_json(f"http://127.0.0.1:{old['port']}/sim/faults", {"hang": True})
    assert status == 200
    wait_for(lambda: endpoint(cluster, m, "r0") is None, 30, "hung engine deregistered")
    wait_for(lambda: not group_alive(old["pgid"]), 30, "hung engine killed")
    # The fault was set at run time, so the restarted engine is healthy again.
    cluster.wait_ready(m, 1, timeout=30)
    assert pid_record(cluster, "n1", m, "r0")["pid"] != old["pid"]


def test_node_started_before_etcd_waits_for_it_and_stops_cleanly_meanwhile(cluster: Cluster):
    cluster.procs["etcd"].stop(grace=5)
    proc, url = cluster.start_node("early", node_args())
    assert http_get(f"{url}/readyz")[0] == 503
    # SIGTERM while etcd is still missing: a prompt, clean exit.
    started = time.monotonic()
    assert proc.stop(grace=15) == 0
    assert time.monotonic() - started < 10

    m = uid()
    proc, url = cluster.start_node("early", node_args())
    cluster.start_etcd()
    put_plan(cluster, sim_plan(m, "early", [free_port()]))
    cluster.wait_ready(m, 1)
    wait_for(lambda: http_get(f"{url}/readyz")[0] == 200, 20, "node ready")


def test_vllm_adapter_with_fake_vllm_binary_and_fake_gpus(cluster: Cluster, tmp_path: Path):
    vllm = tmp_path / "bin" / "vllm"
    vllm.parent.mkdir()
    vllm.write_text(FAKE_VLLM.format(python=sys.executable, sim=str(BIN / "nebula-sim")))
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.write_text(FAKE_SMI)
    for f in (vllm, smi):
        f.chmod(0o755)
    agent, url = cluster.start_node("gpu1", node_args(**{"--vllm-bin": vllm,
                                                         "--nvidia-smi": smi}))
    node = wait_for(lambda: cluster.etcd_items("/nodes/").get("/nodes/gpu1"), 20, "node status")
    assert [g["index"] for g in node["gpus"]] == [0, 1]
    assert node["gpus"][1]["memory_used_mb"] == 2048 and "vllm" in node["engines"]
    gpu_memory = {s.labels["gpu"]: s.value for f in text_string_to_metric_families(
        http_get(f"{url}/metrics")[1].decode()) for s in f.samples
        if s.name == "nebula_node_gpu_memory_used_bytes"}
    assert gpu_memory == {"0": 1024 * 2**20, "1": 2048 * 2**20}

    m = uid("qwen")
    put_plan(cluster, PlacementPlan(
        model_uid=m, model_name="Qwen/Qwen2.5-0.5B-Instruct", engine="vllm",
        assignments=[Assignment(replica_id="r0", node_id="gpu1", port=free_port(),
                                gpu_indices=[0, 1])]))
    [ep] = cluster.wait_ready(m, 1)
    assert ep["engine"] == "vllm" and ep["model_name"] == "Qwen/Qwen2.5-0.5B-Instruct"
    log_text = http_get(f"{url}/replicas/{m}/r0/log")[1].decode()
    assert (f"FAKE-VLLM CUDA_VISIBLE_DEVICES=0,1 TP=2 MODEL=Qwen/Qwen2.5-0.5B-Instruct "
            f"NAMES=Qwen/Qwen2.5-0.5B-Instruct,{m}") in log_text
    assert {"Qwen/Qwen2.5-0.5B-Instruct", m} <= models_of(ep["base_url"])

    # kill -9 of the engine's main process: its EngineCore-like child must not be orphaned.
    old = pid_record(cluster, "gpu1", m, "r0")
    members = [p for p in live_processes() if p[2] == old["pgid"]]
    assert len(members) == 2 and any("VLLM::EngineCore" in p[3] for p in members)
    os.kill(old["pid"], signal.SIGKILL)
    wait_for(lambda: endpoint(cluster, m, "r0") is None, 5, "endpoint removed", interval=0.02)
    cluster.wait_ready(m, 1, timeout=30)
    assert not group_alive(old["pgid"])
    new = pid_record(cluster, "gpu1", m, "r0")
    assert new["pid"] != old["pid"] and group_alive(new["pgid"])

    # SIGTERM to the node: the whole new group goes, child included.
    assert agent.stop(grace=30) == 0
    assert not group_alive(new["pgid"])
    assert not any("VLLM::EngineCore" in p[3] and p[2] in (old["pgid"], new["pgid"])
                   for p in live_processes())


def test_router_sends_each_model_to_its_own_replicas(cluster: Cluster):
    require_binaries("nebula-router")
    a, b = uid("a"), uid("b")
    cluster.start_node("n1", node_args())
    put_plan(cluster, sim_plan(a, "n1", [free_port(), free_port()]))
    put_plan(cluster, sim_plan(b, "n1", [free_port(), free_port()]))
    cluster.wait_ready(a, 2)
    cluster.wait_ready(b, 2)
    _router, rurl = cluster.start_router(args=["--policy", "round_robin"])
    for model in (a, b):
        seen = set()
        for _ in range(8):
            status, replica = wait_for(lambda model=model: post_with_header(
                f"{rurl}/v1/chat/completions",
                {"model": model, "messages": [{"role": "user", "content": "hi"}]},
                "x-nebula-replica"), 20, f"router answers for {model}")
            assert status == 200 and replica and replica.split("/")[0] == model
            seen.add(replica)
        assert seen == {f"{model}/r0", f"{model}/r1"}


def test_default_state_dir_is_per_user_state_not_the_working_directory(
        cluster: Cluster, tmp_path: Path):
    node_id = uid("state")
    port = free_port()
    proc = cluster.spawn(f"node-{node_id}", [
        str(BIN / "nebula-node"), "--node-id", node_id, "--listen", f"127.0.0.1:{port}",
        "--advertise-host", "127.0.0.1", *cluster.common()],
        env={"XDG_STATE_HOME": str(tmp_path / "state")})
    cluster.wait_healthy(proc, f"http://127.0.0.1:{port}")
    wait_for(lambda: cluster.etcd_items("/nodes/").get(f"/nodes/{node_id}"), 20, "node status")
    assert (tmp_path / "state" / "nebula" / "node" / node_id).is_dir()
    assert not (REPO / ".nebula-node" / node_id).exists(), "the node ran in the checkout"
    assert proc.stop(grace=15) == 0
