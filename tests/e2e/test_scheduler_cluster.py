"""Three real node agents (sim engine), the scheduler, router and gateway on one machine.

Deploy 4 replicas -> spread over the 3 nodes; kill -9 one node (and its engines,
as a host loss would) -> its replicas reappear elsewhere while requests through
the gateway keep succeeding; scale 4 -> 2 -> 4 -> only the needed replicas stop
and start; `nebula drain` empties a node with no failed request.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from collections import Counter
from pathlib import Path

import openai
import pytest

from devtools.cluster import Cluster, wait_for
from tests.e2e.test_node_lifecycle import require_binaries


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
