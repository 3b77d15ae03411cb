"""Turn the chaos results file into the markdown table of docs/reliability.md.

    .venv/bin/python -m tests.chaos.report [RESULTS_JSON] [--write docs/reliability.md]

Reads the records the scenarios appended (``$NEBULA_CHAOS_RESULTS`` or
``.run/chaos-results.json``), keeps the latest record of each scenario, and prints
the table; with ``--write`` it replaces the table between the markers in the doc.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BEGIN = "<!-- chaos-table:begin -->"
END = "<!-- chaos-table:end -->"
ORDER = ("baseline", "kill_engine", "kill_node", "kill_node_agent", "etcd_outage", "kill_router",
         "disconnect_200", "rolling_drain", "engine_hang")
DETAIL_KEYS = ("endpoint_gone_s", "replicas_moved_s", "engine_groups_killed", "engines_orphaned",
               "node_restarted_s", "outage_s", "routers_reported_outage_s", "node_lease_regrants",
               "router_down_s", "gateway_failovers", "clients_dropped", "engine_cancelled",
               "idle_after_s", "drain_step_s", "ttfb_timeouts", "slowest_success_s")


def default_results() -> Path:
    return Path(os.environ.get("NEBULA_CHAOS_RESULTS") or REPO / ".run" / "chaos-results.json")


def latest(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last record of each scenario, in the suite's order."""
    by_name: dict[str, dict[str, Any]] = {}
    for rec in records:
        by_name[rec["scenario"]] = rec
    known = [by_name[n] for n in ORDER if n in by_name]
    return known + [r for n, r in by_name.items() if n not in ORDER]


def _split(rec: dict[str, Any], kind: str) -> str:
    s, n = rec.get("stream", {}), rec.get("non_stream", {})
    return f"{rec.get(kind, 0)} ({n.get(kind, 0)} / {s.get(kind, 0)})"


def _details(rec: dict[str, Any]) -> str:
    parts = []
    for key in DETAIL_KEYS:
        if rec.get(key) is not None:
            parts.append(f"{key}={rec[key]}")
    return ", ".join(parts)


def table(records: list[dict[str, Any]]) -> str:
    rows = ["| scenario | sent | succeeded | failed, clear (json / stream) | lost | orphans "
            "| converged (s) | details |",
            "|---|---:|---:|---:|---:|---:|---:|---|"]
    for rec in latest(records):
        converged = rec.get("converged_s")
        if converged is None:
            converged = f"NO (bound {rec.get('converge_bound_s')})"
        rows.append(
            f"| {rec['title']} | {rec['sent']} | {rec['succeeded']} "
            f"| {_split(rec, 'failed_clear')} | {rec['lost']} | {rec.get('orphans', 0)} "
            f"| {converged} | {_details(rec)} |")
    return "\n".join(rows)


def header(records: list[dict[str, Any]]) -> str:
    recs = latest(records)
    when = max((r.get("at", "") for r in recs), default="")
    machine = next((r.get("machine") for r in reversed(recs) if r.get("machine")), "unknown")
    return f"Last run: {when} on {machine}."


def write(doc: Path, records: list[dict[str, Any]]) -> None:
    text = doc.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    doc.write_text(text[:start] + "\n" + header(records) + "\n\n" + table(records) + "\n"
                   + text[end:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", type=Path, default=None)
    parser.add_argument("--write", type=Path, default=None, metavar="DOC")
    args = parser.parse_args(argv)
    path = args.results or default_results()
    try:
        records = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        print(f"report: cannot read {path}: {exc}", file=sys.stderr)
        return 2
    if args.write:
        write(args.write, records)
    print(header(records) + "\n\n" + table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
