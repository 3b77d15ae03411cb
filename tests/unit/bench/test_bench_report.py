"""Aggregation across rounds, table formatting and target verdicts (bench/report.py)."""

from __future__ import annotations

import math

from bench.report import (
    Sample,
    aggregate,
    evaluate_targets,
    find_row,
    fmt_range,
    is_numeric,
    markdown_table,
    request_table_rows,
    text_table,
)
from bench.stats import spread


def sample(scenario, path, rnd, requests, p50, p99, router=0.0, gateway=0.0, duration=5.0):
    cpu = {}
    if path != "direct":
        cpu["router"] = router
    if path == "gateway":
        cpu["gateway"] = gateway
    return Sample(scenario, path, rnd, requests, duration, p50, p99, 0, cpu)


def three_paths(scenario, rnd, direct_p50, router_p50, gw_p50):
    return [
        sample(scenario, "direct", rnd, 50_000, direct_p50, direct_p50 * 4),
        sample(scenario, "router", rnd, 5_000, router_p50, router_p50 * 4, router=2.0),
        sample(scenario, "gateway", rnd, 2_000, gw_p50, gw_p50 * 4, router=1.0, gateway=1.0),
    ]


def test_aggregate_medians_and_per_round_added_latency():
    samples = (three_paths("chat c1", 0, 0.1, 0.6, 1.1) + three_paths("chat c1", 1, 0.5, 0.9, 2.5)
               + three_paths("chat c1", 2, 0.2, 0.5, 1.2))
    rows = aggregate(samples)
    assert [r.path for r in rows] == ["direct", "router", "gateway"]
    router = find_row(rows, "chat c1", "router")
    # per-round differences 0.5, 0.4, 0.3 -> median 0.4 (not median(router) - median(direct))
    assert router.added_p50.median == 0.4
    assert router.p50.median == 0.6
    assert router.rps.median == 1000
    assert router.per_cpu_router.median == 2500
    assert math.isnan(router.per_cpu_both.median)
    gw = find_row(rows, "chat c1", "gateway")
    assert gw.added_p50.median == 1.0
    assert gw.per_cpu_both.median == 1000
    assert gw.per_cpu_gateway.median == 2000
    direct = find_row(rows, "chat c1", "direct")
    assert direct.added_p50.n == 0 and math.isnan(direct.per_cpu_router.median)


def test_sample_per_cpu_requires_every_process_measured():
    s = sample("x", "router", 0, 100, 1, 2, router=0.5)
    assert s.per_cpu(["router"]) == 200
    assert math.isnan(s.per_cpu(["router", "gateway"]))


def test_text_table_aligns_columns_and_right_aligns_numbers():
    text = text_table(("name", "value"), [["a", "1,234"], ["longer", "5"]])
    lines = text.splitlines()
    assert lines[0].startswith("name    value")
    assert lines[1] == "------  -----"
    assert lines[2] == "a       1,234"
    assert lines[3] == "longer      5"


def test_is_numeric():
    for cell in ("1,258", "+0.49", "-1.21", "12%", "2.17x", "0.51 (0.50..0.60)", "-", "3 ms"):
        assert is_numeric(cell), cell
    for cell in ("chat c1", "10 ms-spaced streams", "gateway+router", "PASS"):
        assert not is_numeric(cell), cell


def test_fmt_range_and_request_rows_render_every_column():
    assert fmt_range(spread([1.0, 2.0, 3.0]), 1) == "2.0 (1.0..3.0)"
    assert fmt_range(spread([2.0]), 1) == "2.0"
    assert fmt_range(spread([]), 1) == "-"
    rows = aggregate(three_paths("chat c1", 0, 0.1, 0.6, 1.1))
    table = request_table_rows(rows)
    assert len(table) == 3 and all(len(r) == 14 for r in table)
    assert table[2][1] == "gateway+router"
    assert table[2][5] == "+1.00"


def test_markdown_table_escapes_pipes():
    md = markdown_table(("a", "b"), [["x|y", "1"]])
    assert "x\\|y" in md and md.splitlines()[1] == "|---|---|"


def test_targets_pass_and_miss():
    samples = (three_paths("chat c1", 0, 0.1, 0.6, 1.1) + three_paths("chat c64", 0, 1, 5, 9)
               + [sample("paced10ms c1000", "direct", 0, 1000, 640, 700),
                  sample("paced10ms c1000", "router", 0, 1000, 650, 720, router=1.0),
                  sample("paced10ms c1000", "gateway", 0, 1000, 700, 800, 1.0, 1.0)])
    rows = aggregate(samples)
    results = {t.key: t for t in evaluate_targets(
        rows, {"round_robin": 300.0, "prefix": 100.0}, chat="chat c1", stream="stream64 c1",
        paced_wide="paced10ms c1000")}
    assert results["added_p50:chat c1"].verdict == "PASS"     # +1.0 ms
    assert results["added_p99:chat c1"].verdict == "PASS"     # +4.0 ms
    assert results["added_p50:stream64 c1"].verdict == "n/a"  # not run
    assert results["router_per_cpu"].verdict == "PASS"        # 5000 / 2 s
    assert results["both_per_cpu"].verdict == "PASS"          # 2000 / 2 s
    assert results["paced_p99:router"].verdict == "PASS"      # +2.9 %
    assert results["paced_p99:gateway"].verdict == "MISS"     # +14 %
    assert results["added_p50@17:chat c1"].verdict == "PASS"  # +1.0 ms <= 1 ms
    assert results["added_p99@17:chat c1"].verdict == "MISS"  # +4.0 ms > 3 ms
    assert results["paced_p99@17:router"].verdict == "PASS"   # +2.9 % <= 10 %
    assert results["paced_p99@17:gateway"].verdict == "PASS"  # +14 % <= 20 %
    assert results["prefix_ttft"].verdict == "PASS" and results["prefix_ttft"].measured == "3.00x"
    slow = evaluate_targets(rows, {"round_robin": 150.0, "prefix": 100.0}, chat="chat c1",
                            stream="stream64 c1", paced_wide="paced10ms c1000")
    assert next(t for t in slow if t.key == "prefix_ttft").verdict == "MISS"
