"""Autoscaling end to end: a node agent (sim engine), the scheduler, a queueing router.

`nebula deploy --min 1 --max 3` under a load that needs 3 replicas: the router's queue
signal reaches the scheduler through etcd, it scales out to 3 with no failed request, makes
no scale event while that load holds steady, and returns to 1 once the load stops. Then
`--min 0`: the model goes to zero after the idle period, and the next requests are held by
the router while a replica starts, then served.
Timings are shortened with the scheduler's ``--autoscale-timing``.
"""

from __future__ import annotations

import os
import threading
import time

from devtools.cluster import Cluster, http_get, http_post_json, wait_for
from tests.e2e.test_node_lifecycle import require_binaries
from tests.e2e.test_router_support import metric_value

UID = "auto"
MODEL = "nebula/auto"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}


def placed(cluster: Cluster) -> int:
    plan = cluster.etcd_items("/placements/").get(f"/placements/{UID}") or {}
    return len(plan.get("assignments", []))


def ready(cluster: Cluster) -> int:
    return len(cluster.ready_endpoints(UID))


class Load:
    """``n`` clients sending requests back to back to the router until stopped."""

    def __init__(self, router: str, n: int):
        self.router = router
        self.statuses: list[int] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(n)]

    def _run(self) -> None:
        while not self._stop.is_set():
            status, body = http_post_json(f"{self.router}/v1/chat/completions", CHAT,
                                          timeout=90)
            self.statuses.append(status)
            if status != 200:
                self.errors.append(body[:200].decode("utf-8", "replace"))

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=90)


STEADY_S = 120.0
"""How long a steady load must move nothing (the issue's two minutes)."""


def scale_events(scheduler: str) -> float:
    return metric_value(http_get(f"{scheduler}/metrics")[1].decode(),
                        "nebula_scheduler_autoscale_events_total")


def deploy(cluster: Cluster, *bounds: str) -> None:
    done = cluster.nebula("deploy", UID, "--model", MODEL, "--engine", "sim", *bounds,
                          "--port", str(21000 + os.getpid() % 20000), "--engine-args",
                          "--ttft-ms 5 --itl-ms 50 --output-tokens 20", timeout=60)
    assert done.returncode == 0, done.stderr


def test_scale_out_in_and_to_zero(cluster: Cluster) -> None:
    require_binaries("nebula-node", "nebula-sim", "nebula-scheduler", "nebula-router", "nebula")
    cluster.start_node("n1", args=["--lease-ttl", "2"])
    _, scheduler = cluster.start_scheduler(
        args=["--lease-ttl", "2", "--autoscale-timing", "2,3,4,2,6"])
    _, router = cluster.start_router(args=["--max-running-per-replica", "2"])
    deploy(cluster, "--min", "1", "--max", "3")
    wait_for(lambda: ready(cluster) == 1, 60, "1 ready replica")

    # 6 clients on 2 slots: a queue that lasts; 3 replicas of 2 are needed (the max).
    with Load(router, 6) as load:
        wait_for(lambda: placed(cluster) == 3 and ready(cluster) == 3, 90,
                 "scaled out to 3 ready replicas")
        # Steady: 6 clients on 6 slots queue nothing, and would not fit at 50 % on 2
        # replicas. For 2 minutes (20x the scale-in period plus its cooldown), watched
        # every second: no scale event, 3 replicas placed throughout.
        events = scale_events(scheduler)
        watch_until = time.monotonic() + STEADY_S
        while time.monotonic() < watch_until:
            assert scale_events(scheduler) == events, (
                "the replica count moved under a steady load")
            assert placed(cluster) == 3
            time.sleep(1.0)
    assert load.statuses and not load.errors, load.errors[:3]
    assert set(load.statuses) == {200}

    wait_for(lambda: placed(cluster) == 1, 60, "scaled back in to 1 after the load stopped")
    status = cluster.nebula("status")
    assert "(autoscale 1..3)" in status.stdout, status.stdout
    # The last decision and its reason, as the leader stored it right after that plan.
    wait_for(lambda: "scaled in 2->1 " in cluster.nebula("status").stdout, 10,
             "the scale-in decision in nebula status")

    deploy(cluster, "--min", "0", "--max", "3")
    wait_for(lambda: placed(cluster) == 0, 60, "scaled to zero after the idle period")
    wait_for(lambda: ready(cluster) == 0, 30, "no replica left")
    assert "scaled to zero" in cluster.nebula("status").stdout
    wait_for(lambda: "scaled to zero 1->0 " in cluster.nebula("status").stdout, 10,
             "the to-zero decision in nebula status")

    # The next requests are held while a replica is placed and started, then served.
    results: list[tuple[int, float]] = []

    def one() -> None:
        started = time.monotonic()
        status, _ = http_post_json(f"{router}/v1/chat/completions", CHAT, timeout=90)
        results.append((status, time.monotonic() - started))

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert [s for s, _ in results] == [200, 200, 200], results
    wake_s = max(d for _, d in results)
    print(f"wake from zero served 3 held requests in {wake_s:.1f}s")  # reported by -s
    assert placed(cluster) >= 1
