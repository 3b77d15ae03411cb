"""Grafana provisioning and dashboards: well-formed, wired to the provisioned datasource, and
asking only for metrics that some role (or the engines) really exports.

Whether every panel returns data from a live cluster is tests/deploy/test_dashboards_live.py.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tests.deploy.deploylib import (
    GPU_PANELS,
    REPO,
    dashboards,
    iter_panels,
    metric_names,
    panel_queries,
)

GRAFANA = REPO / "deploy" / "grafana"
SOURCES = [*REPO.glob("services/*/nebula_*/**/*.py"), *REPO.glob("libs/nebula_common/**/*.py")]


@pytest.fixture(scope="module")
def datasource() -> dict[str, Any]:
    doc = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    (ds,) = doc["datasources"]
    return ds


def test_datasource_points_at_compose_prometheus(datasource: dict[str, Any]) -> None:
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    assert datasource["isDefault"] is True


def test_dashboard_provider_loads_the_mounted_folder() -> None:
    doc = yaml.safe_load((GRAFANA / "provisioning/dashboards/nebula.yml").read_text())
    (provider,) = doc["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/etc/grafana/dashboards"


def test_overview_and_fleet_dashboards() -> None:
    dash = dashboards()
    assert set(dash) == {"overview.json", "fleet.json"}
    uids = {d["uid"] for d in dash.values()}
    assert uids == {"nebula-overview", "nebula-fleet"}
    titles = {d["uid"]: {p["title"] for p in iter_panels(d)} for d in dash.values()}
    overview = " ".join(titles["nebula-overview"]).lower()
    for topic in ("requests per second", "error", "latency", "time to first token",
                  "in-flight", "retries"):
        assert topic in overview, topic
    fleet = " ".join(titles["nebula-fleet"]).lower()
    for topic in ("node", "replicas", "queue", "kv-cache", "gpu memory", "restarts"):
        assert topic in fleet, topic


def test_panels_are_well_formed(datasource: dict[str, Any]) -> None:
    for name, dash in dashboards().items():
        ids = [p["id"] for p in iter_panels(dash)]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        titles = [p["title"] for p in iter_panels(dash)]
        assert len(titles) == len(set(titles)), f"{name}: duplicate titles (the GPU list uses them)"
        for panel in iter_panels(dash):
            assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
            assert panel["targets"], f"{name}/{panel['title']} has no query"
            for target in panel["targets"]:
                assert target["expr"].strip(), f"{name}/{panel['title']}"
                assert target["datasource"]["uid"] == datasource["uid"]
                assert target["expr"].count("(") == target["expr"].count(")")


def test_gpu_panel_list_names_real_panels() -> None:
    titles = {(d["uid"], p["title"]) for d in dashboards().values() for p in iter_panels(d)}
    assert GPU_PANELS <= titles, GPU_PANELS - titles
    for uid, title in GPU_PANELS:
        panel = next(p for d in dashboards().values() if d["uid"] == uid
                     for p in iter_panels(d) if p["title"] == title)
        assert "gpu only" in panel.get("description", "").lower(), title


def test_template_variables_resolve_to_a_label_we_export() -> None:
    for dash in dashboards().values():
        for var in dash["templating"]["list"]:
            match = re.fullmatch(r"label_values\((\w+), (\w+)\)", var["definition"])
            assert match, var["definition"]
            assert defined_in_code(match.group(1))


def defined_in_code(metric: str) -> bool:
    """The metric name (without a histogram/counter suffix) appears in a role's source."""
    base = re.sub(r"_(bucket|sum|count|total)$", "", metric)
    return any(f'"{base}' in path.read_text() for path in SOURCES)


def test_every_queried_metric_is_exported() -> None:
    """Nebula metric names in panels exist in the code (GPU panels: the node must add them)."""
    gpu_only = {q.expr for q in panel_queries() if (q.dashboard, q.panel) in GPU_PANELS}
    missing = set()
    for query in panel_queries():
        names = metric_names(query.expr)
        assert names, f"no metric found in {query.panel}: {query.expr}"
        for name in names:
            if name.startswith("nebula_") and not defined_in_code(name) \
                    and query.expr not in gpu_only:
                missing.add((query.panel, name))
    assert not missing, missing
