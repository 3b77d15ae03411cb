"""The router's admission queue end to end: real etcd, a real `nebula-sim`, the router process.

One replica, ``--max-running-per-replica 1``: a long "blocker" request holds the only slot
while the test queues others (each one seen in /debug/queue before the next is sent, so
arrival order is known); when the blocker ends they are served one at a time, so the order
they finish in is the order the queue dispatched them.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from devtools.cluster import Cluster, http_get, http_post_json, wait_for
from nebula_common.keys import Keys
from nebula_common.records import QueueSignal
from tests.e2e.test_router_support import metric_value, start_sims, wait_router_sees

MODEL = "Org/Queue-Chat"
UID = "queued"
BLOCK_S = 1.5  # the blocker: 60 tokens at 25 ms
LONG_TOKENS = 160  # a longer one (4 s), where the test races the blocker's end


def chat(tokens: int) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": tokens}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    cluster = Cluster(Path(tmp_path_factory.mktemp("queue")) / "run")
    cluster.start_etcd()
    try:
        start_sims(cluster, UID, MODEL, 1, "--itl-ms", "25", "--output-tokens",
                   str(LONG_TOKENS))
        common = ["--max-running-per-replica", "1", "--queue-aging", "0"]
        _, router = cluster.start_router("router-q", args=[*common, "--router-id", "rq",
                                                           "--queue-max", "3",
                                                           "--queue-timeout", "30,30,30"])
        _, short = cluster.start_router("router-short", args=[
            *common, "--queue-timeout", "0.5,0.5,0.5"])
        for url in (router, short):
            wait_router_sees(url, UID, 1)
        yield {"router": router, "short": short, "cluster": cluster}
    finally:
        cluster.stop_all(grace=5)


def queue_state(router: str) -> dict[str, Any]:
    status, body = http_get(f"{router}/debug/queue")
    assert status == 200, body
    return json.loads(body)


def waiting(router: str) -> int:
    model = queue_state(router)["models"].get(UID)
    return sum(model["waiting"].values()) if model else 0


def admitted(router: str) -> int:
    model = queue_state(router)["models"].get(UID)
    return model["admitted"] if model else 0


class Client(threading.Thread):
    """One request in a thread: its status, body, Retry-After and when it finished.

    Six tokens at 25 ms: one slot serves them one after another, so finishing order is
    dispatch order as long as no client thread stalls for 150 ms (two tokens left 50).
    """

    done_order: list[str] = []
    lock = threading.Lock()

    def __init__(self, router: str, name: str, tokens: int = 6, tenant: str = "",
                 priority: str = ""):
        super().__init__(daemon=True)
        self.router, self.name_, self.tokens = router, name, tokens
        self.headers = {k: v for k, v in (("x-nebula-tenant", tenant),
                                          ("x-nebula-priority", priority)) if v}
        self.status = 0
        self.body = b""
        self.retry_after: str | None = None

    def run(self) -> None:
        url = urlsplit(self.router)
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        conn.request("POST", "/v1/chat/completions", json.dumps(chat(self.tokens)),
                     {"content-type": "application/json", **self.headers})
        resp = conn.getresponse()
        self.status, self.body = resp.status, resp.read()
        self.retry_after = resp.getheader("retry-after")
        conn.close()
        with self.lock:
            self.done_order.append(self.name_)


def start_blocked(router: str, queued: list[Client], tokens: int = 60) -> Client:
    """Occupy the slot, then queue ``queued`` one by one, in that order."""
    Client.done_order = []
    blocker = Client(router, "blocker", tokens=tokens)
    blocker.start()
    wait_for(lambda: admitted(router) == 1, 10, "the blocker is admitted")
    for i, c in enumerate(queued, 1):
        c.start()
        wait_for(lambda i=i: waiting(router) == i, 10, f"{i} request(s) queued")
    return blocker


def join(clients: list[Client]) -> None:
    for c in clients:
        c.join(60)
        assert not c.is_alive()


def test_priority_order(env: dict[str, Any]) -> None:
    router = env["router"]
    queued = [Client(router, "batch", priority="batch"), Client(router, "default"),
              Client(router, "interactive", priority="interactive")]
    blocker = start_blocked(router, queued)
    join([blocker, *queued])
    assert all(c.status == 200 for c in [blocker, *queued]), [c.body for c in queued]
    assert Client.done_order == ["blocker", "interactive", "default", "batch"]
    metrics = http_get(f"{router}/metrics")[1].decode()
    assert metric_value(metrics, "nebula_router_queue_dispatched_total", model=UID,
                        **{"class": "interactive"}) >= 1
    assert metric_value(metrics, "nebula_router_queue_wait_seconds_count", model=UID,
                        **{"class": "batch"}) >= 1


def test_fair_share_with_one_heavy_tenant(env: dict[str, Any]) -> None:
    # The queue holds 3 here: the heavy tenant queues first (2), a light one behind it.
    router = env["router"]
    heavy = [Client(router, f"heavy{i}", tenant="heavy") for i in range(2)]
    light = Client(router, "light", tenant="light")
    blocker = start_blocked(router, [*heavy, light])
    join([blocker, *heavy, light])
    assert all(c.status == 200 for c in [*heavy, light])
    # Arrived last, yet served second: the heavy tenant's backlog gives it no more turns.
    assert Client.done_order[:3] == ["blocker", "heavy0", "light"]


def test_queue_full_is_429_with_retry_after(env: dict[str, Any]) -> None:
    router = env["router"]
    queued = [Client(router, f"q{i}") for i in range(3)]
    blocker = start_blocked(router, queued)
    status, body = http_post_json(f"{router}/v1/chat/completions", chat(2))
    assert status == 429, body
    err = json.loads(body)["error"]
    assert err["code"] == "queue_full" and err["type"]
    join([blocker, *queued])
    assert all(c.status == 200 for c in queued)
    metrics = http_get(f"{router}/metrics")[1].decode()
    assert metric_value(metrics, "nebula_router_queue_shed_total", model=UID,
                        reason="queue_full") >= 1


def test_queue_timeout_is_503_with_retry_after(env: dict[str, Any]) -> None:
    short = env["short"]
    late = Client(short, "late", priority="batch")
    blocker = start_blocked(short, [late])
    late.join(10)
    assert late.status == 503, late.body
    assert json.loads(late.body)["error"]["code"] == "queue_timeout"
    assert late.retry_after is not None and int(late.retry_after) >= 1
    assert waiting(short) == 0
    join([blocker])
    assert blocker.status == 200


def test_disconnect_while_queued_leaves_the_queue(env: dict[str, Any]) -> None:
    router = env["router"]
    metrics = http_get(f"{router}/metrics")[1].decode()
    before = metric_value(metrics, "nebula_router_queue_shed_total", model=UID,
                          reason="cancelled")
    blocker = start_blocked(router, [], tokens=LONG_TOKENS)
    url = urlsplit(router)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    conn.request("POST", "/v1/chat/completions", json.dumps(chat(2)),
                 {"content-type": "application/json"})
    wait_for(lambda: waiting(router) == 1, 10, "the request is queued")
    gone = time.monotonic()
    conn.close()  # the client goes away while queued
    wait_for(lambda: waiting(router) == 0, 5, "the request left the queue")
    # "At once": long before the blocker ends and frees the slot.
    assert time.monotonic() - gone < BLOCK_S
    assert blocker.is_alive()
    metrics = http_get(f"{router}/metrics")[1].decode()
    assert metric_value(metrics, "nebula_router_queue_shed_total", model=UID,
                        reason="cancelled") == before + 1
    join([blocker])
    assert admitted(router) == 0


def stored_signal(cluster: Cluster, router_id: str) -> QueueSignal | None:
    async def get(store: Any) -> QueueSignal | None:
        kv = await store.get(Keys(cluster.prefix).queue(router_id))
        if kv is None:
            return None
        assert kv.lease, "the signal is written under the router's lease"
        return QueueSignal.from_json(kv.value)
    return cluster.with_store(get)


def test_queue_signal_reaches_etcd_under_the_routers_lease(env: dict[str, Any]) -> None:
    router, cluster = env["router"], env["cluster"]
    queued = [Client(router, f"s{i}") for i in range(2)]
    blocker = start_blocked(router, queued)

    def busy() -> QueueSignal | None:
        sig = stored_signal(cluster, "rq")
        load = sig.models.get(UID) if sig is not None else None
        return sig if load is not None and load.waiting == 2 and load.admitted == 1 else None

    sig = wait_for(busy, 5, "the signal shows 2 waiting, 1 admitted")
    assert sig.models[UID].max_running_per_replica == 1
    join([blocker, *queued])

    def idle() -> bool:
        sig = stored_signal(cluster, "rq")
        return sig is not None and sig.models[UID].waiting == 0 == sig.models[UID].admitted

    wait_for(idle, 5, "the signal shows the queue empty again")
