"""The overload bench's pure parts: the seeded arrival plan and the table."""

from __future__ import annotations

from collections import Counter

from bench.load import StreamTiming
from bench.overload import TENANTS, TenantResult, arrivals, summarize


def test_arrivals_are_seeded_bounded_and_follow_the_shares() -> None:
    plan = arrivals(50.0, 40.0, TENANTS, seed=1)
    assert plan == arrivals(50.0, 40.0, TENANTS, seed=1)
    assert all(0 < a.at < 40.0 for a in plan)
    assert [a.at for a in plan] == sorted(a.at for a in plan)
    assert 1700 < len(plan) < 2300
    counts = Counter(a.tenant.name for a in plan)
    assert 8 < counts["heavy"] / counts["light-i"] < 12.5


def test_summarize_counts_ok_shed_and_errors() -> None:
    r = TenantResult()
    for t in (StreamTiming(200, 0.1, 1.0), StreamTiming(200, 0.3, 1.0),
              StreamTiming(429, float("nan"), 0.0, "HTTP 429"),
              StreamTiming(503, float("nan"), 0.0, "HTTP 503"),
              StreamTiming(0, float("nan"), 0.0, "reset")):
        r.add(t)
    (row,) = summarize({"a": r}, 2.0)
    assert row[:4] == ["a", "5", "2", "1.00"]
    assert row[4] == "200" and row[5] == "298"
    assert row[6] == "1x429, 1x503" and row[7] == "1"
