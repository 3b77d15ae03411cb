"""Percentiles, spread across rounds and CPU accounting parsing (bench/stats.py)."""

from __future__ import annotations

import math
import os

import pytest

from bench.stats import (
    busy_share,
    group_cpu_ticks,
    parse_cpu_totals,
    parse_proc_stat,
    per_cpu_second,
    percentile,
    spread,
    ticks_to_seconds,
)


def test_percentile_interpolates_between_ranks():
    values = [10.0, 20.0, 30.0, 40.0]
    assert percentile(values, 0) == 10.0
    assert percentile(values, 100) == 40.0
    assert percentile(values, 50) == 25.0
    assert percentile(values, 99) == pytest.approx(39.7)


def test_percentile_is_order_independent_and_handles_single_and_empty():
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_percentile_p99_of_uniform_1_to_100():
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile(values, 50) == pytest.approx(50.5)


def test_spread_median_range_and_nan_filtering():
    sp = spread([100.0, 80.0, float("nan"), 120.0])
    assert (sp.median, sp.low, sp.high, sp.n) == (100.0, 80.0, 120.0, 3)
    assert sp.rel_range == pytest.approx(0.4)
    empty = spread([float("nan")])
    assert empty.n == 0 and math.isnan(empty.median) and math.isnan(empty.rel_range)


STAT = ("4242 (nebula router (x)) S 1 4242 4242 0 -1 4194560 1234 0 0 0 "
        "1500 250 0 0 20 0 3 0 100 1000000 2000 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 "
        "17 1 0 0 0 0 0")


def test_parse_proc_stat_handles_parentheses_and_spaces_in_comm():
    st = parse_proc_stat(STAT)
    assert st.pid == 4242
    assert st.comm == "nebula router (x)"
    assert st.pgrp == 4242
    assert (st.utime, st.stime, st.ticks) == (1500, 250, 1750)


def test_parse_proc_stat_of_this_process_is_consistent_with_os_times():
    with open(f"/proc/{os.getpid()}/stat") as f:
        st = parse_proc_stat(f.read())
    assert st.pid == os.getpid()
    assert st.pgrp == os.getpgrp()
    # burn a little CPU so the counters are non-zero, then compare with os.times()
    sum(i * i for i in range(200_000))
    with open(f"/proc/{os.getpid()}/stat") as f:
        st = parse_proc_stat(f.read())
    times = os.times()
    assert ticks_to_seconds(st.ticks) == pytest.approx(times.user + times.system, abs=0.05)


def test_group_cpu_ticks_counts_our_process_group():
    assert group_cpu_ticks(os.getpgrp()) > 0
    assert group_cpu_ticks(2**22 + 12345) == 0  # no such group


def test_ticks_and_per_cpu_second():
    assert ticks_to_seconds(250, clk_tck=100) == 2.5
    assert per_cpu_second(5000, 2.0) == 2500
    assert math.isnan(per_cpu_second(10, 0.0))


def test_parse_cpu_totals_and_busy_share():
    before = parse_cpu_totals("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n")
    after = parse_cpu_totals("cpu  250 0 100 900 50 0 0 0 0 0\ncpu0 1 2 3 4\n")
    assert before == (150, 1000)
    assert busy_share(before, after) == pytest.approx(200 / 300)
    with pytest.raises(ValueError):
        parse_cpu_totals("intr 1 2 3\n")
