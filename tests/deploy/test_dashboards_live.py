"""A real Prometheus scrapes a running cluster, and every dashboard query returns data.

etcd, the scheduler, a node with two simulator replicas, a router and a gateway run as
processes (devtools.cluster); Debian's `prometheus` scrapes their /metrics and the engines'
every second, with deploy/prometheus/alerts.yml loaded. The traffic covers what the panels
show: plain and streamed chat completions, a streamed Responses call, an unknown model (4xx),
a replica failing every request (retries, upstream errors, ejection) and an engine killed
(restart by its node). Then every PromQL expression of every panel in deploy/grafana/dashboards
must return data with finite values, except the panels listed in deploylib.GPU_PANELS.
"""

from __future__ import annotations

import json
import math
import os
import signal
import urllib.parse
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import yaml

from devtools.cluster import Cluster, free_port, http_get, http_post_json, wait_for
from tests.deploy.deploylib import GPU_PANELS, REPO, concrete_promql, metric_names, panel_queries
from tests.support import needs

pytestmark = [pytest.mark.prometheus, pytest.mark.timeout(600)]

UID = "dash_sim"
MODEL = "dash/sim-model"
NODE = "dash-node"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"


def scrape_config(targets: dict[str, list[str]]) -> dict[str, Any]:
    """The compose Prometheus config with loopback targets and a 1s interval."""
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": hosts}]}
                           for job, hosts in targets.items()],
    }


def hostport(url: str) -> str:
    return url.removeprefix("http://").rstrip("/")


def metrics_text(url: str) -> str:
    status, body = http_get(f"{url}/metrics")
    return body.decode() if status == 200 else ""


def prom_query(prom: str, expr: str) -> dict[str, Any]:
    status, body = http_get(f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr}),
                            timeout=10)
    doc = json.loads(body)
    assert status == 200 and doc["status"] == "success", (expr, doc)
    return doc["data"]


def finite_values(data: dict[str, Any]) -> list[float]:
    if data["resultType"] == "vector":
        values = [float(s["value"][1]) for s in data["result"]]
    elif data["resultType"] == "scalar":
        values = [float(data["result"][1])]
    else:
        values = [float(v[1]) for s in data["result"] for v in s["values"]]
    return [v for v in values if math.isfinite(v)]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    prometheus = needs.binary("prometheus", "make prometheus installs it (Debian's package)")
    run_dir = tmp_path_factory.mktemp("dashboards") / "run"
    cluster = Cluster(run_dir)
    try:
        cluster.start_etcd()
        _, node = cluster.start_node(NODE)
        _, router = cluster.start_router()
        _, gateway = cluster.start_gateway([router])
        _, scheduler = cluster.start_scheduler(args=[
            "--model-uid", UID, "--model-name", MODEL, "--node-id", NODE, "--engine", "sim",
            "--port", str(free_port()), "--replicas", "2"])
        endpoints = cluster.wait_ready(UID, 2, timeout=90)
        engines = sorted(hostport(e["base_url"]) for e in endpoints)

        prom_port = free_port()
        prom = f"http://127.0.0.1:{prom_port}"
        config = run_dir / "prometheus.yml"
        config.write_text(yaml.safe_dump(scrape_config({
            "nebula-scheduler": [hostport(scheduler)], "nebula-node": [hostport(node)],
            "nebula-router": [hostport(router)], "nebula-gateway": [hostport(gateway)],
            "nebula-engine": engines})))
        cluster.spawn("prometheus", [
            prometheus, f"--config.file={config}", f"--storage.tsdb.path={run_dir / 'prom'}",
            f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"])

        def all_up() -> bool:
            status, body = http_get(f"{prom}/api/v1/targets")
            if status != 200:
                return False
            active = json.loads(body)["data"]["activeTargets"]
            return len(active) == 4 + len(engines) and all(t["health"] == "up" for t in active)

        wait_for(all_up, 60, "Prometheus scraping every target")
        send_traffic(cluster, gateway, router, node, endpoints)
        yield {"cluster": cluster, "prom": prom, "gateway": gateway}
    finally:
        cluster.stop_all(grace=5)


def send_traffic(cluster: Cluster, gateway: str, router: str, node: str,
                 endpoints: list[dict[str, Any]]) -> None:
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0)
    wait_for(lambda: any(m.id == MODEL for m in client.models.list().data), 30,
             "the model listed by the gateway")

    def chat(n: int, stream: bool) -> bool:
        for _ in range(n):
            if stream:
                chunks = list(client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "hello there"}],
                    max_tokens=8, stream=True))
                assert chunks
            else:
                reply = client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "hello there"}],
                    max_tokens=8)
                assert reply.choices[0].message.content
        return True

    chat(5, stream=False)
    chat(5, stream=True)
    events = [e.type for e in client.responses.create(model=MODEL, input="hi", stream=True)]
    assert events[-1] == "response.completed"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model",
                                       messages=[{"role": "user", "content": "x"}])

    # One replica fails every request: the router retries on the other one, counts the
    # upstream errors and ejects the failing replica.
    failing = endpoints[0]
    status, _ = http_post_json(f"{failing['base_url']}/sim/faults", {"fail_rate": 1.0})
    assert status == 200

    def retried_and_ejected() -> bool:
        chat(2, stream=False)
        text = metrics_text(router)
        return "nebula_router_retries_total{" in text and "nebula_router_ejections_total{" in text

    wait_for(retried_and_ejected, 60, "router retries and an ejection", interval=0.1)
    http_post_json(f"{failing['base_url']}/sim/faults", {"fail_rate": 0.0})

    # An engine dies: its node restarts it.
    pidfile = (cluster.run_dir / "nodes" / NODE / "engines"
               / f"{UID}__{endpoints[1]['replica_id']}.pid")
    pgid = json.loads(pidfile.read_text())["pgid"]
    os.killpg(pgid, signal.SIGKILL)
    wait_for(lambda: "nebula_node_engine_restarts_total{" in metrics_text(node), 60,
             "the node restarting the killed engine", interval=0.2)
    cluster.wait_ready(UID, 2, timeout=60)
    # The router may still be ejecting the replica that failed above: poll until served.
    wait_for(lambda: chat(1, stream=True), 30, "a request served after the restart", 0.2)
    chat(3, stream=True)


def test_every_dashboard_query_returns_data(live: dict[str, Any]) -> None:
    prom = live["prom"]
    queries = [q for q in panel_queries() if (q.dashboard, q.panel) not in GPU_PANELS]
    assert len(queries) >= 30

    def missing() -> list[str]:
        out = []
        for q in queries:
            data = prom_query(prom, concrete_promql(q.expr))
            if not data["result"] or not finite_values(data):
                out.append(f"{q.dashboard} / {q.panel} / {q.ref_id}: {q.expr} -> "
                           f"{json.dumps(data['result'])[:200]}")
        return out

    # Scrapes are 1s apart: give the last requests a few scrapes to show up everywhere.
    try:
        wait_for(lambda: not missing(), 30, "data for every panel", interval=1.0)
    except TimeoutError:
        pytest.fail("panels without data:\n" + "\n".join(missing()))


def test_gpu_panels_are_the_only_ones_skipped(live: dict[str, Any]) -> None:
    """The skipped panels ask for GPU metrics this CPU-only cluster cannot have."""
    for q in panel_queries():
        if (q.dashboard, q.panel) in GPU_PANELS:
            assert all("gpu" in name for name in metric_names(q.expr)), q.expr
            assert prom_query(live["prom"], concrete_promql(q.expr))["result"] == []


def test_alert_rules_evaluate_on_live_metrics(live: dict[str, Any]) -> None:
    """Every metric the alerts use is really scraped, and every rule evaluates cleanly."""
    prom = live["prom"]
    rules = yaml.safe_load(ALERTS.read_text())
    names = {n for g in rules["groups"] for r in g["rules"] for n in metric_names(r["expr"])}
    for name in names:
        series = prom_query(prom, f'count({{__name__="{name}"}})')["result"]
        assert series, f"alert metric {name} is not exported by any role"

    def evaluated() -> list[dict[str, Any]]:
        status, body = http_get(f"{prom}/api/v1/rules")
        groups = json.loads(body)["data"]["groups"] if status == 200 else []
        found = [r for g in groups for r in g["rules"]]
        return found if len(found) == 5 and all(r.get("lastEvaluation", "").startswith("2")
                                                and r["health"] != "unknown"
                                                for r in found) else []

    for rule in wait_for(evaluated, 30, "alert rules evaluated", interval=0.5):
        assert rule["health"] == "ok", rule
        # A healthy cluster: nothing fires (NoReadyReplica, NodeMissing, EtcdUnreachable).
        assert rule["name"] in ("NebulaHigh5xxRatio", "NebulaSlowTTFT") or \
            rule["state"] == "inactive", rule
