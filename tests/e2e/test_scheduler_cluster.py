"""Real node agents (sim engine), schedulers, router and gateway on one machine.

Deploy 4 replicas -> spread over the 3 nodes; kill -9 one node (and its engines,
as a host loss would) -> its replicas reappear elsewhere while requests through
the gateway keep succeeding; scale 4 -> 2 -> 4 -> only the needed replicas stop
and start; `nebula drain` empties a node with no failed request. Two schedulers:
the leader paused (SIGSTOP) past its lease writes no plan once resumed. A replica
whose restart budget is spent on its node is replaced on another.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import openai
import pytest

from devtools.cluster import Cluster, http_get, http_post_json, wait_for
from nebula_common.keys import Keys
from nebula_common.records import ModelSpec
from nebula_common.store import EtcdStore
from tests.e2e.test_node_lifecycle import history, require_binaries, store_revision


@pytest.fixture(autouse=True)
def installed() -> None:
    require_binaries("nebula-node", "nebula-sim", "nebula-scheduler", "nebula-router",
                     "nebula-gateway", "nebula")

UID = "demo"
MODEL = "nebula/demo"


class Traffic:
    """Non-streamed chat requests through the gateway in a background thread."""

    def __init__(self, gateway_url: str):
        self.client = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key="test",
                                    max_retries=0, timeout=20)
        self.ok = 0
        self.failures: list[str] = []
        self.replicas: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                raw = self.client.chat.completions.with_raw_response.create(
                    model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
                raw.parse()
                self.ok += 1
                self.replicas[raw.headers.get("x-nebula-replica", "?")] += 1
            except Exception as exc:  # recorded and asserted on by the test
                self.failures.append(f"{type(exc).__name__}: {exc}")

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def plan(cluster: Cluster) -> dict:
    return cluster.etcd_items("/placements/").get(f"/placements/{UID}") or {"assignments": []}


def placement(cluster: Cluster) -> dict[str, str]:
    return {a["replica_id"]: a["node_id"] for a in plan(cluster)["assignments"]}


def ready(cluster: Cluster) -> dict[str, str]:
    """replica id -> node id of ready endpoints that match the plan."""
    where = placement(cluster)
    return {e["replica_id"]: e["node_id"] for e in cluster.ready_endpoints(UID)
            if where.get(e["replica_id"]) == e["node_id"]}


def converged(cluster: Cluster, n: int) -> dict[str, str] | None:
    where = placement(cluster)
    return where if len(where) == n and ready(cluster) == where else None


def engine_pids(cluster: Cluster) -> dict[str, int]:
    """replica id -> engine pid, from the node agents' pid files."""
    pids = {}
    for path in (cluster.run_dir / "nodes").glob(f"*/engines/{UID}__*.pid"):
        with contextlib.suppress(ValueError, OSError, KeyError):
            data = json.loads(path.read_text())
            if _alive(int(data["pid"])):
                pids[path.stem.split("__", 1)[1]] = int(data["pid"])
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_host(cluster: Cluster, node_id: str) -> None:
    """SIGKILL the node agent and its engines' process groups: the host is gone."""
    cluster.procs[f"node-{node_id}"].kill9()
    for path in (cluster.run_dir / "nodes" / node_id).rglob("*.pid"):
        with contextlib.suppress(ValueError, OSError, KeyError):
            os.killpg(int(json.loads(path.read_text())["pgid"]), signal.SIGKILL)


def test_cluster_spread_reschedule_scale_drain(cluster: Cluster, tmp_path: Path) -> None:
    nodes = ["n1", "n2", "n3"]
    for node_id in nodes:
        cluster.start_node(node_id, args=["--lease-ttl", "2"])
    cluster.start_scheduler(args=["--reschedule-grace", "2", "--lease-ttl", "2"])
    _router, router_url = cluster.start_router()
    _gw, gateway_url = cluster.start_gateway([router_url])

    deployed = cluster.nebula("deploy", UID, "--model", MODEL, "--engine", "sim",
                              "--replicas", "4", "--port", str(20000 + os.getpid() % 20000),
                              "--engine-args", "--ttft-ms 5 --itl-ms 2 --output-tokens 4",
                              "--wait", "--timeout", "90", timeout=120)
    assert deployed.returncode == 0, deployed.stderr + cluster.procs["scheduler"].log()[-3000:]
    where = wait_for(lambda: converged(cluster, 4), 60, "4 ready replicas")
    # Spread: every node hosts at least one of the 4 replicas.
    assert set(where.values()) == set(nodes), where
    assert sorted(Counter(where.values()).values()) == [1, 1, 2]

    # kill -9 a node hosting one replica: it reappears elsewhere, requests keep succeeding.
    victim = next(n for n, c in Counter(where.values()).items() if c == 1)
    with Traffic(gateway_url) as traffic:
        wait_for(lambda: traffic.ok >= 5, 30, "traffic flowing")
        kill_host(cluster, victim)
        moved = wait_for(lambda: (w := converged(cluster, 4)) and victim not in w.values()
                         and w, 60, f"replicas of {victim} rescheduled")
        wait_for(lambda: traffic.ok >= 20, 30, "more traffic")
    assert traffic.failures == [], traffic.failures[:5]
    assert {r: n for r, n in moved.items() if where[r] != victim} == \
        {r: n for r, n in where.items() if n != victim}  # the others did not move

    # scale 4 -> 2 -> 4: only the needed replicas stop and start.
    pids = wait_for(lambda: (p := engine_pids(cluster)) and set(p) == set(moved) and p, 30,
                    "engine pid files")
    assert cluster.nebula("scale", UID, "2").returncode == 0
    two = wait_for(lambda: converged(cluster, 2), 60, "2 replicas")
    assert set(two) == {"r0", "r1"}
    wait_for(lambda: set(engine_pids(cluster)) == {"r0", "r1"}, 60, "r2, r3 engines stopped")
    assert {r: engine_pids(cluster)[r] for r in two} == {r: pids[r] for r in two}
    assert cluster.nebula("scale", UID, "4").returncode == 0
    four = wait_for(lambda: converged(cluster, 4), 60, "4 replicas again")
    after = engine_pids(cluster)
    assert {r: after[r] for r in two} == {r: pids[r] for r in two}  # untouched
    assert {r: four[r] for r in two} == two

    # drain a node: its replicas move, capacity never drops, no request fails.
    busiest = Counter(four.values()).most_common(1)[0][0]
    with Traffic(gateway_url) as traffic:
        wait_for(lambda: traffic.ok >= 5, 30, "traffic flowing")
        drained = cluster.nebula("drain", busiest, "--wait", "--timeout", "90", timeout=120)
        assert drained.returncode == 0, drained.stderr
        final = wait_for(lambda: converged(cluster, 4), 60, "4 ready replicas after drain")
        wait_for(lambda: traffic.ok >= 30, 30, "more traffic")
    assert busiest not in final.values()
    assert traffic.failures == [], traffic.failures[:5]
    status = cluster.nebula("status")
    assert status.returncode == 0 and "4/4/4" in status.stdout, status.stdout


# -- two schedulers: fencing ----------------------------------------------------------------
MODELS = 40
"""Models deployed at once: the leader's pass writes 40 plans, long enough to stop it mid-way."""


def leader_info(url: str) -> dict[str, Any]:
    status, body = http_get(f"{url}/debug/leader")
    assert status == 200
    info: dict[str, Any] = json.loads(body)
    return info


def specs(batch: str, replicas: int) -> dict[str, bytes]:
    """``MODELS`` sim models pinned to a node that never comes: placed without any node."""
    return {Keys().model(f"{batch}{i:02d}"): ModelSpec(
        model_uid=f"{batch}{i:02d}", model_name=f"{batch}{i:02d}", engine="sim",
        replicas=replicas, port=30000, node_ids=["ghost"]).to_json() for i in range(MODELS)}


async def put_all(store: EtcdStore, items: dict[str, bytes]) -> None:
    """One transaction: the leader sees every spec in one event batch, and runs one pass."""
    async def op(client: Any) -> None:
        txn = client.transactions
        await client.transaction(compare=[], failure=[],
                                 success=[txn.put(k.encode(), v) for k, v in items.items()])
    await store.call(op)


def deploy_and_stop_leader_mid_pass(cluster: Cluster, batch: str, pid: int) -> int:
    """Deploy a batch, SIGSTOP ``pid`` at the first plan it writes; the plans it wrote by then."""
    async def run(store: EtcdStore) -> int:
        prefix = f"/placements/{batch}"
        watch = await store.call(lambda c: c.watch_prefix(prefix.encode()))
        events = watch.__aiter__()
        try:
            await put_all(store, specs(batch, 1))
            await asyncio.wait_for(events.__anext__(), 30)
            os.kill(pid, signal.SIGSTOP)
        finally:
            await watch.cancel()
        return len((await store.get_prefix(prefix))[0])
    return cluster.with_store(run)


def plans_of(cluster: Cluster, batch: str) -> dict[str, dict[str, Any]]:
    return cluster.etcd_items(f"/placements/{batch}")


def test_leader_paused_past_its_lease_writes_no_plan_once_resumed(cluster: Cluster) -> None:
    old, old_url = cluster.start_scheduler("sched-old", args=["--lease-ttl", "2"])
    wait_for(lambda: leader_info(old_url)["leader"], 30, "first scheduler leads")
    _new, new_url = cluster.start_scheduler("sched-new", args=["--lease-ttl", "2"])
    new_id = leader_info(new_url)["identity"]
    # Stop the leader in the middle of a pass (a few tries: it may finish before the signal).
    for attempt in range(3):
        batch = f"b{attempt}-"
        wait_for(lambda: leader_info(old_url)["leader"], 30, "old scheduler leads")
        written = deploy_and_stop_leader_mid_pass(cluster, batch, old.pid)
        if written < MODELS:
            break
        os.kill(old.pid, signal.SIGCONT)
        wait_for(lambda b=batch: len(plans_of(cluster, b)) == MODELS, 30, "batch placed")
    else:
        pytest.fail("the leader finished every pass before it could be stopped")
    try:
        # Past its lease the follower takes over, while the operator scales every model.
        wait_for(lambda: leader_info(new_url)["leader"], 30, "the follower wins")
        cluster.with_store(lambda store: put_all(store, specs(batch, 2)))
        wait_for(lambda: (p := plans_of(cluster, batch)) and len(p) == MODELS and all(
            len(v["assignments"]) == 2 and v["writer"] == new_id for v in p.values()), 60,
                 "the new leader placed the scaled batch")
        since, log_at = store_revision(cluster), len(old.log())
    finally:
        os.kill(old.pid, signal.SIGCONT)
    # Resumed, the old leader finishes its interrupted pass from its stale view (1 replica
    # per model): etcd must refuse every write it tries, and it must step down.
    wait_for(lambda: "plan write refused" in old.log()[log_at:], 30,
             "the old leader's stale pass, refused")
    wait_for(lambda: not leader_info(old_url)["leader"], 30, "the old leader stepped down")
    assert old.alive()
    puts = [json.loads(c.value) for c in history(cluster, "/placements/", since)
            if c.kind == "PUT"]
    assert [p for p in puts if p.get("writer") != new_id] == [], "a plan written by another"
    assert all(len(v["assignments"]) == 2 for v in plans_of(cluster, batch).values())


# -- a replica whose restart budget is spent ------------------------------------------------
def test_replica_whose_restart_budget_is_spent_is_replaced_on_another_node(
        cluster: Cluster) -> None:
    # n1 gives an engine no second chance: one crash spends its restart budget.
    node_args = ["--lease-ttl", "2", "--restart-backoff", "0.1", "--engine-host", "127.0.0.1"]
    cluster.start_node("n1", args=[*node_args, "--restart-max", "0"])
    cluster.start_scheduler(args=["--reschedule-grace", "2", "--lease-ttl", "2"])
    deployed = cluster.nebula("deploy", UID, "--model", MODEL, "--engine", "sim",
                              "--port", str(20000 + os.getpid() % 20000),
                              "--engine-args", "--crash-after 1", "--wait", "--timeout", "60",
                              timeout=90)
    assert deployed.returncode == 0, deployed.stderr
    assert placement(cluster) == {"r0": "n1"}
    cluster.start_node("n2", args=node_args)
    wait_for(lambda: "/nodes/n2" in cluster.etcd_items("/nodes/"), 30, "n2 registered")
    crashing = cluster.ready_endpoints(UID)[0]
    # Its first request crashes the engine (the sim's crash_after fault).
    with contextlib.suppress(OSError):
        http_post_json(f"{crashing['base_url']}/v1/chat/completions", {
            "model": UID, "messages": [{"role": "user", "content": "hi"}]}, timeout=10)
    wait_for(lambda: (w := converged(cluster, 1)) and w == {"r1": "n2"}, 60,
             "the failed replica replaced on n2")
    failures = plan(cluster)["failures"]
    assert [(f["replica_id"], f["node_id"], f["replaced_by"]) for f in failures] == \
        [("r0", "n1", "r1")], failures
    assert "exited with code 1" in failures[0]["reason"], failures
    wait_for(lambda: "r0" not in {e["replica_id"] for e in cluster.ready_endpoints(UID)}
             and f"/endpoints/{UID}/r0" not in cluster.etcd_items("/endpoints/"), 30,
             "n1 stopped the failed replica")
    data = json.loads(cluster.nebula("status", "--json").stdout)
    model = next(m for m in data["models"] if m["model_uid"] == UID)
    assert (model["desired"], model["placed"], model["ready"]) == (1, 1, 1), model
