"""Every metric the code defines is documented in docs/observability.md, and only those."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFINITION = re.compile(
    r"\b(Counter|Gauge|Histogram|Summary|Info|GaugeMetricFamily|CounterMetricFamily)"
    r"\(\s*[\"'](?P<name>nebula_[a-z0-9_]+)[\"']", re.S)
DOC_ROW = re.compile(r"^\|\s*`(?P<name>nebula_[a-z0-9_]+)`\s*\|\s*(?P<type>\w+)\s*\|", re.M)


def exported_name(kind: str, name: str) -> str:
    """prometheus_client exports a Counter ``x`` as ``x_total``."""
    return f"{name.removesuffix('_total')}_total" if kind.startswith("Counter") else name


def metric_type(kind: str) -> str:
    """``GaugeMetricFamily`` (a custom collector's gauge) is a gauge."""
    return kind.removesuffix("MetricFamily").lower()


def metrics_in_code() -> dict[str, str]:
    found: dict[str, str] = {}
    for root in ("libs", "services"):
        for path in (REPO / root).rglob("*.py"):
            for match in DEFINITION.finditer(path.read_text()):
                found[exported_name(match[1], match["name"])] = metric_type(match[1])
    return found


def metrics_in_docs() -> dict[str, str]:
    text = (REPO / "docs" / "observability.md").read_text()
    return {m["name"]: m["type"].lower() for m in DOC_ROW.finditer(text)}


def test_every_metric_in_code_is_documented() -> None:
    code, docs = metrics_in_code(), metrics_in_docs()
    assert code, "no metric definitions found: the scan is broken"
    missing = sorted(set(code) - set(docs))
    assert not missing, f"metrics defined in code but not in docs/observability.md: {missing}"


def test_every_documented_metric_exists_in_code() -> None:
    code, docs = metrics_in_code(), metrics_in_docs()
    stale = sorted(set(docs) - set(code))
    assert not stale, f"docs/observability.md lists metrics the code no longer has: {stale}"


def test_documented_types_match_the_code() -> None:
    code, docs = metrics_in_code(), metrics_in_docs()
    wrong = {n: (docs[n], code[n]) for n in set(code) & set(docs) if docs[n] != code[n]}
    assert not wrong, f"type in docs differs from code (docs, code): {wrong}"


def test_metric_names_follow_the_convention() -> None:
    roles = ("scheduler", "node", "router", "gateway", "common")
    bad = [n for n in metrics_in_code() if n.split("_")[1] not in roles]
    assert not bad, f"metric names must be nebula_<role>_...: {bad}"
