"""The results-to-markdown script (pure: no cluster)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.chaos import report


def record(name: str, **kw) -> dict:
    base = {"scenario": name, "title": name.replace("_", " "), "sent": 10, "succeeded": 9,
            "failed_clear": 1, "lost": 0, "stream": {"failed_clear": 1},
            "non_stream": {"failed_clear": 0}, "orphans": 0, "converged_s": 2.5,
            "converge_bound_s": 30, "at": "2026-01-01T00:00:00Z", "machine": "2 CPUs"}
    return {**base, **kw}


def test_latest_record_per_scenario_in_suite_order() -> None:
    recs = [record("kill_router", sent=1), record("kill_engine"), record("kill_router", sent=2)]
    names = [(r["scenario"], r["sent"]) for r in report.latest(recs)]
    assert names == [("kill_engine", 10), ("kill_router", 2)]


def test_table_and_write(tmp_path: Path) -> None:
    recs = [record("kill_engine", endpoint_gone_s=0.1), record("engine_hang", converged_s=None)]
    text = report.table(recs)
    assert "| kill engine | 10 | 9 | 1 (0 / 1) | 0 | 0 | 2.5 | endpoint_gone_s=0.1 |" in text
    assert "NO (bound 30)" in text
    doc = tmp_path / "doc.md"
    doc.write_text(f"intro\n{report.BEGIN}\nold\n{report.END}\noutro\n")
    results = tmp_path / "r.json"
    results.write_text(json.dumps(recs))
    assert report.main([str(results), "--write", str(doc)]) == 0
    out = doc.read_text()
    assert "old" not in out and "intro" in out and "outro" in out
    assert "Last run: 2026-01-01T00:00:00Z on 2 CPUs." in out
