"""Helpers for the router e2e tests (no tests here): sim engines registered as a node would."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from devtools.cluster import Cluster, http_get, http_post_json, wait_for
from nebula_common.keys import Keys
from nebula_common.records import Endpoint, NodeStatus
from nebula_common.store import EtcdStore


@dataclass
class Sim:
    name: str
    url: str
    model_uid: str
    replica_id: str
    proc: Any

    @property
    def ref(self) -> str:
        return f"{self.model_uid}/{self.replica_id}"

    def stats(self) -> dict[str, Any]:
        status, body = http_get(f"{self.url}/sim/stats")
        assert status == 200, body
        return json.loads(body)

    def faults(self, **faults: Any) -> None:
        status, body = http_post_json(f"{self.url}/sim/faults", faults)
        assert status == 200, body


NODE_ID = "test-node"


def register(cluster: Cluster, sim: Sim, model_name: str, status: str = "ready") -> None:
    """Write the records a node writes for a ready replica (no lease here): its own
    NodeStatus (the router routes only to endpoints on a live node's advertise host)
    and the Endpoint."""
    keys = Keys(cluster.prefix)
    node = NodeStatus(node_id=NODE_ID, advertise_host="127.0.0.1")
    record = Endpoint(model_uid=sim.model_uid, model_name=model_name,
                      replica_id=sim.replica_id, node_id=NODE_ID, base_url=sim.url,
                      engine="sim", status=status)

    async def put(store: EtcdStore) -> None:
        await store.put(keys.node(NODE_ID), node.to_json())
        await store.put(keys.endpoint(sim.model_uid, sim.replica_id), record.to_json())

    cluster.with_store(put)


def deregister(cluster: Cluster, sim: Sim) -> None:
    keys = Keys(cluster.prefix)
    cluster.with_store(lambda s: s.delete(keys.endpoint(sim.model_uid, sim.replica_id)))


def start_sims(cluster: Cluster, model_uid: str, model_name: str, n: int,
               *extra: str) -> list[Sim]:
    sims = []
    for i in range(n):
        proc, url = cluster.start_sim(f"sim-{model_uid}-{i}", model_name, [model_uid],
                                      list(extra))
        sim = Sim(f"sim-{model_uid}-{i}", url, model_uid, str(i), proc)
        register(cluster, sim, model_name)
        sims.append(sim)
    return sims


def debug_endpoints(router: str) -> list[dict[str, Any]]:
    status, body = http_get(f"{router}/debug/endpoints")
    assert status == 200, body
    return json.loads(body)["endpoints"]


def wait_router_sees(router: str, model_uid: str, count: int, status: str = "ready",
                     timeout: float = 15) -> list[dict[str, Any]]:
    def check() -> list[dict[str, Any]] | None:
        rows = [r for r in debug_endpoints(router)
                if r["model_uid"] == model_uid and r["status"] == status]
        return rows if len(rows) == count else None

    return wait_for(check, timeout, f"router sees {count} {status} replicas of {model_uid}")


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, rest = head.partition("{")
        if metric != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += float(value)
    return total
