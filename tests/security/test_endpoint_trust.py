"""A router on real etcd routes only to endpoints on the advertise host of the node behind them.

Whoever can write one key under /endpoints/ could otherwise send the router's
traffic (prompts, keys' requests) anywhere: another host, a metadata address, a
path on a legitimate host. Here a recording server plays both the engine and the
attacker's host; the endpoints that point at it other than through the node's
advertised address must never receive a request, and /debug/endpoints says why.
"""

from __future__ import annotations

import json

from devtools.cluster import Cluster, http_get, http_post_json, wait_for
from nebula_common.records import Endpoint, NodeStatus
from tests.security.test_headers import Recorder

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def metric(text: str, name: str, kind: str) -> float:
    for line in text.splitlines():
        if line.startswith(f'{name}{{kind="{kind}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_router_refuses_endpoints_off_their_nodes_advertise_host(cluster: Cluster) -> None:
    engine, attacker = Recorder("engine").start(), Recorder("attacker").start()
    port = attacker.base_url.rsplit(":", 1)[1]
    # model uid -> (node, base_url): one good endpoint, then what a forged record could say.
    records = {
        "good": ("n1", engine.base_url),
        "other-host": ("n1", f"http://localhost:{port}"),
        "with-path": ("n1", f"{attacker.base_url}/v1/evil"),
        "with-query": ("n1", f"{attacker.base_url}?x=1"),
        "no-node": ("ghost", attacker.base_url),
    }
    try:
        cluster.with_store(lambda s: s.put("/nodes/n1", NodeStatus("n1", "127.0.0.1").to_json()))
        for uid, (node, url) in records.items():
            ep = Endpoint(uid, uid, "r0", node, url, "sim")
            cluster.with_store(lambda s, uid=uid, ep=ep: s.put(f"/endpoints/{uid}/r0",
                                                               ep.to_json()))
        proc, router = cluster.start_router()

        def rows() -> dict[str, dict[str, object]] | None:
            found = {r["model_uid"]: r for r in json.loads(
                http_get(router + "/debug/endpoints")[1])["endpoints"]}
            return found if len(found) == len(records) else None

        shown = wait_for(rows, 20, "router lists every endpoint")
        assert shown["good"]["status"] == "ready"
        for uid in records.keys() - {"good"}:
            assert shown[uid]["status"] == "refused" and shown[uid]["reason"], shown[uid]
        assert "advertise host" in str(shown["other-host"]["reason"])
        assert "path" in str(shown["with-path"]["reason"])
        assert "not live" in str(shown["no-node"]["reason"])

        assert http_post_json(f"{router}/v1/chat/completions", {**CHAT, "model": "good"})[0] \
            == 200
        for uid in records.keys() - {"good"}:
            status, _ = http_post_json(f"{router}/v1/chat/completions", {**CHAT, "model": uid})
            assert status == 404, (uid, status)
        assert attacker.requests == [] and len(engine.requests) == 1
        counted = metric(http_get(router + "/metrics")[1].decode(),
                         "nebula_common_records_invalid_total", "Endpoint")
        assert counted == len(records) - 1
        assert proc.log().count("refusing endpoint") == len(records) - 1
    finally:
        engine.stop()
        attacker.stop()
