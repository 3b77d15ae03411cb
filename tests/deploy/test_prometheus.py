"""Prometheus configuration and alert rules, checked by Debian's promtool.

`promtool test rules` runs deploy/prometheus/alerts_test.yml, where every alert is shown
firing on a broken series and quiet on a healthy one.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.deploylib import REPO, load_compose, strip_tags
from tests.support import needs

PROM = REPO / "deploy" / "prometheus"
ALERTS = {"NebulaNoReadyReplica", "NebulaHigh5xxRatio", "NebulaSlowTTFT", "NebulaNodeMissing",
          "NebulaEtcdUnreachable"}


def promtool_path() -> str:
    return needs.binary("promtool", "make prometheus installs it (Debian's prometheus)")


def promtool(*args: str, cwd: Path = PROM) -> str:
    out = subprocess.run([promtool_path(), *args], capture_output=True, text=True, timeout=120,
                         cwd=cwd)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


@pytest.mark.prometheus
def test_check_config() -> None:
    assert "SUCCESS" in promtool("check", "config", "prometheus.yml")


@pytest.mark.prometheus
def test_check_rules() -> None:
    assert f"SUCCESS: {len(ALERTS)} rules found" in promtool("check", "rules", "alerts.yml")


@pytest.mark.prometheus
def test_alert_unit_tests_pass() -> None:
    assert "SUCCESS" in promtool("test", "rules", "alerts_test.yml")


@pytest.mark.prometheus
def test_alert_unit_tests_can_fail(tmp_path: Path) -> None:
    """A rule that never fires makes the unit tests fail (they are not vacuous)."""
    for name in ("alerts.yml", "alerts_test.yml"):
        shutil.copy(PROM / name, tmp_path / name)
    rules = yaml.safe_load((tmp_path / "alerts.yml").read_text())
    for rule in rules["groups"][0]["rules"]:
        rule["expr"] = "vector(1) == 0"
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules))
    out = subprocess.run([promtool_path(), "test", "rules", "alerts_test.yml"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode != 0
    for alert in ALERTS:
        assert f"alertname: {alert}," in out.stdout + out.stderr, alert


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    rules = yaml.safe_load((PROM / "alerts.yml").read_text())
    names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert names == ALERTS
    tests = yaml.safe_load((PROM / "alerts_test.yml").read_text())
    assert tests["rule_files"] == ["alerts.yml"]
    cases = [c for t in tests["tests"] for c in t["alert_rule_test"]]
    for alert in ALERTS:
        mine = [c for c in cases if c["alertname"] == alert]
        assert any(c["exp_alerts"] for c in mine), f"{alert} never shown firing"
        assert any(not c["exp_alerts"] for c in mine), f"{alert} never shown quiet"


def test_scrape_targets_are_the_compose_services() -> None:
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    services = strip_tags(load_compose(REPO / "compose.yaml"))["services"]
    jobs = {j["job_name"]: [t for s in j["static_configs"] for t in s["targets"]]
            for j in config["scrape_configs"]}
    for role, port in (("scheduler", 10815), ("node", 10816), ("router", 18081),
                       ("gateway", 8081)):
        assert jobs[f"nebula-{role}"] == [f"{role}:{port}"]
        assert services[role]["environment"]["NEBULA_LISTEN"].endswith(f":{port}")
    assert jobs["nebula-engine"] == ["node:10814"]
    for targets in jobs.values():
        for target in targets:
            host = target.split(":")[0]
            assert host == "localhost" or host in services, target
