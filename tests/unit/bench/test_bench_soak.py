"""The soak benchmark: its pure parts (reading /proc and /metrics, rows, verdict, doc section)
and one short real run of ``python -m bench.soak`` on a loopback cluster."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from bench import soakstats as ss
from devtools.cluster import REPO
from tests.support import needs


def proc(rss_mib: float, fds: int = 20, tasks: float = 30) -> ss.ProcSample:
    return ss.ProcSample(int(rss_mib * 1024), fds, tasks)


def test_vmrss_is_read_from_a_real_status_file() -> None:
    rss = ss.parse_vmrss_kib(Path(f"/proc/{os.getpid()}/status").read_text())
    assert 10 * 1024 < rss < 4 * 1024 * 1024  # a pytest process: tens to hundreds of MiB
    assert ss.parse_vmrss_kib("Name:\tx\nVmRSS:\t  81744 kB\n") == 81744
    try:
        ss.parse_vmrss_kib("Name:\tkthreadd\n")
    except ValueError:
        pass
    else:
        raise AssertionError("a status without VmRSS must be an error")


def test_gauge_is_read_unlabelled_and_nan_when_absent() -> None:
    text = ("# TYPE nebula_common_asyncio_tasks gauge\nnebula_common_asyncio_tasks 42.0\n"
            "nebula_common_asyncio_tasks_other 7.0\n")
    assert ss.parse_gauge(text, ss.TASKS_METRIC) == 42.0
    assert math.isnan(ss.parse_gauge("nebula_router_in_flight 3\n", ss.TASKS_METRIC))


def test_answers_are_classified() -> None:
    done = b'data: {"choices":[{"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
    assert ss.stream_kind(done) == ss.OK
    assert ss.stream_kind(b'data: {"choices":[]}\n\n') == "truncated"
    assert ss.stream_kind(b'data: {"error": {"message": "x"}}\n\ndata: [DONE]\n\n') \
        == "stream_error"
    assert ss.body_kind(b'{"choices":[{"finish_reason":"length"}]}') == ss.OK
    assert ss.body_kind(b'{"choices":[{"finish_reason":null}]}') == "bad_body"
    assert ss.body_kind(b"<html>") == "bad_body"


def test_a_window_row_counts_ok_hang_ups_and_errors_apart() -> None:
    done = [ss.Finished(1.0, ss.OK, float(ms), True) for ms in range(1, 101)]
    done += [ss.Finished(2.0, ss.DISCONNECT, math.nan, True),
             ss.Finished(2.5, "http_502", math.nan, False),
             ss.Finished(2.6, "http_502", math.nan, False),
             ss.Finished(2.7, "timeout", math.nan, True)]
    row = ss.window_row(30, "load", done, {"router": proc(70)}, restarts=1)
    assert row.ok == 100 and row.disconnects == 1
    assert row.p50_ms == 50.5 and round(row.p99_ms, 2) == 99.01
    assert row.errors == {"http_502": 2, "timeout": 1}
    assert ss.error_text(row.errors) == "http_502=2 timeout=1"
    empty = ss.window_row(60, "load", [], {})
    assert empty.ok == 0 and math.isnan(empty.p99_ms) and ss.error_text(empty.errors) == "-"


def test_comparison_windows_follow_the_warm_up_and_never_overlap() -> None:
    assert ss.windows(300, 1800, 300) == ((300, 600), (1500, 1800))
    assert ss.windows(10, 40, 300) == ((10, 25), (25, 40))  # a smoke run: half each


def rows_with(router_rss: list[float], gateway_rss: list[float]) -> list[ss.Row]:
    out = [ss.window_row(10, "warm-up", [], {"router": proc(50), "gateway": proc(60)})]
    for i, (r, g) in enumerate(zip(router_rss, gateway_rss, strict=True)):
        out.append(ss.window_row(20 + 10 * i, "load", [], {"router": proc(r),
                                                           "gateway": proc(g)}))
    return out


def latencies(start: float, end: float, ms: float) -> list[ss.Finished]:
    return [ss.Finished(start + (end - start) * i / 200, ss.OK, ms + i % 10, False)
            for i in range(200)]


def by_key(targets: list[ss.TargetResult]) -> dict[str, bool | None]:
    return {t.key: t.passed for t in targets}


def test_verdict_passes_a_flat_run() -> None:
    base = {"router": proc(70, 20, 30), "gateway": proc(80, 15, 12)}
    final = {"router": proc(71, 19, 30), "gateway": proc(81, 15, 12)}
    finished = latencies(10, 25, 100) + latencies(45, 60, 110)
    targets = ss.verdict(rows_with([70, 71, 72], [80, 80.5, 83.9]), finished, base, final,
                         warmup_s=10, duration_s=60, window_s=15)
    assert all(by_key(targets).values()), [(t.key, t.measured) for t in targets]
    assert any("+4.9 %" in t.measured for t in targets if t.key == "rss:gateway")


def test_verdict_misses_growth_leaks_and_drift() -> None:
    base = {"router": proc(70, 20, 30), "gateway": proc(80, 15, 12)}
    final = {"router": proc(71, 23, 30), "gateway": proc(81, 15, 14)}
    finished = latencies(10, 25, 100) + latencies(45, 60, 125)
    targets = by_key(ss.verdict(rows_with([70, 71, 74], [80, 80, 80]), finished, base, final,
                                warmup_s=10, duration_s=60, window_s=15))
    assert targets == {"rss:router": False, "rss:gateway": True, "fds:router": False,
                       "tasks:router": True, "fds:gateway": True, "tasks:gateway": False,
                       "p99": False}


def test_verdict_says_not_measured_without_data() -> None:
    base = {"router": proc(70, 20, math.nan), "gateway": proc(80)}
    targets = by_key(ss.verdict(rows_with([70], [80]), [], base, base,
                                warmup_s=10, duration_s=60, window_s=15))
    assert targets["rss:router"] is None and targets["tasks:router"] is None
    assert targets["p99"] is None and targets["fds:router"] is True


def test_the_doc_section_is_replaced_in_place_or_appended() -> None:
    rows = rows_with([70, 71], [80, 81])
    section = ss.render_section(rows, [], about="A run.", plot="soak.png")
    assert section.startswith(ss.SECTION_BEGIN) and section.endswith(ss.SECTION_END)
    assert "![RSS and latency over the soak run](soak.png)" in section
    assert "| 20 | load |" in section
    once = ss.replace_section("# Findings\n\n## Overload\ntext\n", section)
    assert once.startswith("# Findings\n\n## Overload\ntext\n\n" + ss.SECTION_BEGIN)
    again = ss.replace_section(once + "\n## Later\n", section.replace("A run.", "B run."))
    assert again.count(ss.SECTION_BEGIN) == 1 and "B run." in again and "A run." not in again
    assert again.endswith("\n## Later\n")


def test_a_short_soak_runs_end_to_end(tmp_path: Path) -> None:
    """A real cluster (etcd, scheduler, node + 2 sims, router, gateway) for 16 s with engine
    kills: rows every 4 s, every role's resources read, the plot and the JSON written."""
    needs.module("matplotlib", "run make venv (requirements/dev.lock pins it)")
    plot, out = tmp_path / "soak.png", tmp_path / "soak.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--duration", "16", "--warmup", "4", "--sample",
         "4", "--restart-every", "6", "--settle", "12", "--rate", "20", "--no-doc",
         "--plot", str(plot), "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert [r["phase"] for r in rows] == ["warm-up", "load", "load", "load", "end"]
    assert all(r["ok"] > 20 for r in rows[:-1]), rows
    for role in ("router", "gateway"):
        assert all(r["procs"][role]["rss_kib"] > 0 and r["procs"][role]["fds"] > 0
                   and r["procs"][role]["tasks"] > 0 for r in rows), rows
    assert data["restarts"], "no engine was killed"
    assert "verdict" in done.stdout and "PASS" in done.stdout
