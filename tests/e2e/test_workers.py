"""``--workers N``: the router and the gateway on N processes behind one SO_REUSEPORT port.

Every request here opens its own connection, so the kernel spreads them over the
workers; the access log's ``worker`` field shows that both served. What must hold
across workers: session affinity (the same hash on the same replica set), least
load (each worker balances its own share), ``/metrics`` summed over the workers,
a clean stop on SIGTERM, and a worker that dies started again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.cluster import BIN, Cluster, free_port, http_get, wait_for
from nebula_common.metric_children import FLUSH_S
from tests.e2e.test_router_faults import (
    post,  # one request on a new connection: the kernel picks the worker
)
from tests.e2e.test_router_support import Sim, debug_endpoints, metric_value, start_sims

UID, MODEL = "wk", "wk-model"
WORKERS = 2


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """etcd + 3 sim replicas + a session-policy router on 2 workers."""
    cluster = Cluster(Path(tmp_path_factory.mktemp("workers")) / "run")
    cluster.start_etcd()
    try:
        sims = start_sims(cluster, UID, MODEL, 3, "--itl-ms", "5", "--output-tokens", "4")
        proc, router = cluster.start_router(args=["--workers", str(WORKERS),
                                                  "--policy", "session"])
        wait_every_worker_sees(router, 3)
        yield {"cluster": cluster, "sims": sims, "router": router, "proc": proc}
    finally:
        cluster.stop_all(grace=10)


def wait_every_worker_sees(router: str, count: int) -> None:
    """Each connection may reach another worker: 10 answers in a row must agree."""

    def all_agree() -> bool:
        return all(sum(r["model_uid"] == UID and r["status"] == "ready"
                       for r in debug_endpoints(router)) == count for _ in range(10))

    wait_for(all_agree, 20, f"every worker sees {count} ready replicas")


def chat(max_tokens: int = 4) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": max_tokens}


def workers_in_log(log: str) -> set[int]:
    seen = set()
    for line in log.splitlines():
        if '"nebula.router.access"' in line:
            seen.add(json.loads(line).get("worker"))
    return seen


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def test_session_affinity_holds_across_workers(env: dict) -> None:
    for session in ("alice", "bob", "carol"):
        seen = Counter()
        for _ in range(30):
            status, headers, body = post(env["router"], chat(),
                                         headers={"x-session-id": session})
            assert status == 200, body
            seen[headers["x-nebula-replica"]] += 1
        assert len(seen) == 1, (session, seen)
    assert workers_in_log(env["proc"].log()) == set(range(WORKERS)), \
        "new connections reached every worker"


def test_least_load_spreads_concurrent_requests_across_workers(env: dict) -> None:
    cluster: Cluster = env["cluster"]
    _, router = cluster.start_router(name="router-ll", args=["--workers", str(WORKERS)])
    wait_every_worker_sees(router, 3)
    sims: list[Sim] = env["sims"]
    before = [s.stats()["requests_total"] for s in sims]
    errors: list[object] = []

    def one() -> None:
        status, _, body = post(router, chat(max_tokens=80))
        if status != 200:
            errors.append(body)

    threads = [threading.Thread(target=one) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    served = [s.stats()["requests_total"] - b for s, b in zip(sims, before, strict=True)]
    assert sum(served) == 12
    # 12 requests of 400 ms at once on 3 replicas: each worker balances its own share
    # (power of two choices), so no replica takes half while another sits idle.
    assert max(served) <= 6 and min(served) >= 1, served


def test_metrics_are_summed_over_workers(env: dict) -> None:
    router = env["router"]

    def total() -> float:
        text = http_get(f"{router}/metrics")[1].decode()
        return metric_value(text, "nebula_router_requests_total", model=UID, status="200")

    start = total()
    for _ in range(20):
        assert post(router, chat())[0] == 200
    # A worker applies its request counts within FLUSH_S (metric_children), the answering
    # one before it renders. Once the sum holds them all, every scrape, whichever worker
    # answers it, counts the requests of all of them.
    wait_for(lambda: total() - start == 20, 20 * FLUSH_S, "every worker's counts in the sum",
             0.01)
    assert [total() - start for _ in range(6)] == [20.0] * 6


def test_a_dead_worker_is_started_again(env: dict) -> None:
    proc = env["proc"]
    first = children(proc.pid)
    assert len(first) == WORKERS
    os.kill(first[0], signal.SIGKILL)
    wait_for(lambda: len(c := children(proc.pid)) == WORKERS and first[0] not in c, 20,
             "the supervisor starts a new worker")
    wait_every_worker_sees(env["router"], 3)
    for _ in range(10):
        assert post(env["router"], chat())[0] == 200
    assert "exited with status -9; starting it again" in proc.log()


def test_gateway_workers_and_a_clean_stop(env: dict) -> None:
    cluster: Cluster = env["cluster"]
    gw_proc, gateway = cluster.start_gateway([env["router"]], args=["--workers", str(WORKERS)])
    workers = children(gw_proc.pid)
    assert len(workers) == WORKERS
    for _ in range(10):
        status, _, body = post(gateway, chat())
        assert status == 200, body
        assert json.loads(body)["choices"][0]["message"]["content"]
    assert gw_proc.stop() == 0, "SIGTERM to the supervisor stops every worker cleanly"
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    assert "Traceback" not in gw_proc.log()


def test_busy_port_is_one_line_with_workers(env: dict) -> None:
    port = int(env["router"].rsplit(":", 1)[1])
    done = subprocess.run(
        [str(BIN / "nebula-router"), "--listen", f"127.0.0.1:{port}", "--workers", "2",
         "--etcd-endpoints", env["cluster"].etcd_endpoint],
        capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot listen on" in lines[0], done.stderr
    # a bad setting is refused once, by the supervisor, before any worker starts
    done = subprocess.run([str(BIN / "nebula-router"), "--listen", f"127.0.0.1:{free_port()}",
                           "--workers", "2", "--policy-profile", "/nonexistent.yaml"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and len(done.stderr.strip().splitlines()) == 1, done.stderr
