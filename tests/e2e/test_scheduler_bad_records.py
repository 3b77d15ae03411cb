"""One malformed etcd record costs only itself, on real etcd and real processes.

A plan whose ``assignments`` is the number 5 (and an endpoint whose status is 7) sit
next to a good model. Before typed decoding this raised a TypeError that killed the
scheduler's reconcile task while it kept the leadership and stopped the node
reconciling any model. Here the scheduler keeps leading and placing, the node keeps
starting replicas, the router keeps routing, and each bad value is skipped, logged
and counted once.
"""

from __future__ import annotations

import json

from devtools.cluster import Cluster, free_port, http_get, wait_for
from nebula_common.store import EtcdStore
from tests.e2e.test_node_lifecycle import node_args, post_with_header, require_binaries
from tests.e2e.test_scheduler import scheduler_metric

GOOD, BAD = "good", "bad"
BAD_PLAN = json.dumps({"schema": 1, "model_uid": BAD, "model_name": "org/bad", "engine": "sim",
                       "version": 1, "assignments": 5, "unplaced": []}).encode()
BAD_ENDPOINT = json.dumps({"schema": 1, "model_uid": GOOD, "model_name": "org/good",
                           "replica_id": "r7", "node_id": "n1", "engine": "sim",
                           "base_url": "http://127.0.0.1:1", "status": 7}).encode()
INVALID_PLANS = 'nebula_common_records_invalid_total{kind="PlacementPlan"}'


def raw_items(cluster: Cluster, prefix: str) -> dict[str, bytes]:
    """Every key under ``prefix`` with its stored bytes (some are not JSON records)."""
    async def read(store: EtcdStore) -> dict[str, bytes]:
        kvs, _ = await store.get_prefix(cluster.prefix + prefix)
        return {kv.key[len(cluster.prefix):]: kv.value for kv in kvs}
    return cluster.with_store(read)


def deploy(cluster: Cluster, uid: str, replicas: int, *extra: str) -> None:
    result = cluster.nebula("deploy", uid, "--model", f"org/{uid}", "--engine", "sim",
                            "--replicas", str(replicas), "--port", str(free_port()),
                            "--engine-args", "--ttft-ms 1 --itl-ms 1", *extra, timeout=120)
    assert result.returncode == 0, result.stderr


def test_malformed_plan_next_to_a_good_one_stops_nothing(cluster: Cluster) -> None:
    require_binaries("nebula-node", "nebula-sim", "nebula-scheduler", "nebula-router", "nebula")
    node, node_url = cluster.start_node("n1", node_args())
    scheduler, sched_url = cluster.start_scheduler(args=["--lease-ttl", "2"])
    _router, router_url = cluster.start_router()
    wait_for(lambda: scheduler_metric(sched_url, "nebula_scheduler_leader") == 1.0, 20,
             "the scheduler leads")
    deploy(cluster, GOOD, 1, "--wait", "--timeout", "60")

    # The bad plan belongs to a deployed model: the scheduler must leave it alone. It is
    # written over the plan the scheduler placed, as a bug or a hand edit would.
    deploy(cluster, BAD, 1)
    wait_for(lambda: f"/placements/{BAD}" in raw_items(cluster, "/placements/"), 20,
             "the bad model placed")
    cluster.with_store(lambda s: s.put(f"{cluster.prefix}/placements/{BAD}", BAD_PLAN))
    cluster.with_store(lambda s: s.put(f"{cluster.prefix}/endpoints/{GOOD}/r7", BAD_ENDPOINT))
    for url in (sched_url, node_url):
        wait_for(lambda url=url: scheduler_metric(url, INVALID_PLANS) == 1.0, 20,
                 f"the bad plan counted at {url}")
    assert "skipping invalid record at /placements/bad: PlacementPlan.assignments: " \
           "expected a list, got int" in node.log()

    # Still leading and working: a scale of the good model is placed, started and ready.
    scaled = cluster.nebula("scale", GOOD, "2", "--wait", "--timeout", "60", timeout=90)
    assert scaled.returncode == 0, scaled.stderr + scheduler.log()[-3000:]
    assert scheduler.alive() and node.alive()
    assert json.loads(http_get(f"{sched_url}/debug/leader")[1])["leader"] is True
    assert http_get(f"{sched_url}/readyz") == (200, b"ready (leader)")
    assert http_get(f"{node_url}/readyz")[0] == 200
    plans = raw_items(cluster, "/placements/")
    assert plans[f"/placements/{BAD}"] == BAD_PLAN, "the unreadable plan was left alone"
    # Decoded on every pass, counted once: one stored value, one count.
    assert scheduler_metric(sched_url, INVALID_PLANS) == 1.0
    assert scheduler_metric(node_url, INVALID_PLANS) == 1.0

    # The router serves both replicas of the good model, and never the bad endpoint.
    seen: set[str] = set()

    def both_replicas_answer() -> bool:
        status, replica = post_with_header(
            f"{router_url}/v1/chat/completions",
            {"model": GOOD, "messages": [{"role": "user", "content": "hi"}]},
            "x-nebula-replica")
        assert status == 200
        seen.add(replica or "?")
        return seen == {f"{GOOD}/r0", f"{GOOD}/r1"}

    wait_for(both_replicas_answer, 30, "the router uses both good replicas")

    status = cluster.nebula("status")
    assert status.returncode == 0 and "(stored plan invalid)" in status.stdout, status.stdout

    # Undeploying the bad model is the operator's way out: its unreadable plan goes.
    assert cluster.nebula("undeploy", BAD).returncode == 0
    wait_for(lambda: f"/placements/{BAD}" not in raw_items(cluster, "/placements/"), 20,
             "the unreadable plan of an undeployed model deleted")
