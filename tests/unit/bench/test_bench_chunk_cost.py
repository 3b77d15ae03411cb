"""CPU per forwarded chunk from the long and the short paced streams (bench/report.py)."""

from __future__ import annotations

import pytest

from bench.report import Sample, chunk_table_rows, chunk_targets, per_chunk_costs
from bench.run import SCENARIOS, scenario_groups

LONG, SHORT = "paced10ms c64", "paced10ms/16 c64"


def run(scenario: str, path: str, rnd: int, requests: int, **cpu: float) -> Sample:
    return Sample(scenario, path, rnd, requests, 5.0, 600.0, 650.0, 0, dict(cpu))


def rounds(path: str, per_chunk: dict[str, list[float]], once: float = 300.0) -> list[Sample]:
    """Samples whose processes spend ``once`` us per request plus the given us per chunk
    (one value per round), 100 requests of 64 and of 16 chunks."""
    out = []
    for rnd in range(len(next(iter(per_chunk.values())))):
        for scenario, chunks in ((LONG, 64), (SHORT, 16)):
            cpu = {p: 100 * (once + chunks * v[rnd]) / 1e6 for p, v in per_chunk.items()}
            out.append(run(scenario, path, rnd, 100, **cpu))
    return out


def test_the_per_request_part_cancels_and_each_round_counts() -> None:
    samples = (rounds("router", {"router": [20.0, 24.0, 22.0]}, once=900)
               + rounds("gateway", {"router": [20.0] * 3, "gateway": [30.0] * 3})
               + [run(LONG, "direct", r, 100) for r in range(3)])
    costs = {(c.path, c.proc): c.micros for c in per_chunk_costs(samples, LONG, SHORT, 48)}
    assert set(costs) == {("router", "router"), ("gateway", "gateway"), ("gateway", "router")}
    assert costs[("router", "router")].median == pytest.approx(22.0)
    assert (costs[("router", "router")].low, costs[("router", "router")].high) == (
        pytest.approx(20.0), pytest.approx(24.0))
    assert costs[("gateway", "gateway")].median == pytest.approx(30.0)


def test_a_round_without_its_short_run_is_left_out() -> None:
    samples = rounds("router", {"router": [20.0, 40.0]})
    samples = [s for s in samples if not (s.round == 1 and s.scenario == SHORT)]
    [cost] = per_chunk_costs(samples, LONG, SHORT, 48)
    assert cost.micros.n == 1 and cost.micros.median == pytest.approx(20.0)


def test_hypercorn_sets_the_stricter_bound_on_each_hop() -> None:
    samples = (rounds("router", {"router": [18.0]}) + rounds("router@hypercorn", {"router": [40.0]})
               + rounds("gateway", {"router": [19.0], "gateway": [30.0]})
               + rounds("gateway@hypercorn", {"router": [40.0], "gateway": [50.0]})
               + rounds("vllm-router", {"router": [10.0]}))
    costs = per_chunk_costs(samples, LONG, SHORT, 48)
    by_key = {t.key: t for t in chunk_targets(costs)}
    router, gateway = by_key["chunk_cost:router@hypercorn"], by_key["chunk_cost:gateway@hypercorn"]
    assert router.passed is True and router.measured.startswith("0.45x (18.0 vs 40.0 us)")
    assert gateway.passed is False and gateway.measured.startswith("0.60x")
    # no baseline ran: its bound reads n/a, not a pass
    assert by_key["chunk_cost:router@baseline"].passed is None
    rows = {(r[0], r[1]): r for r in chunk_table_rows(costs, "uvicorn")}
    assert rows[("router (uvicorn)", "router")][5:] == ["-", "0.45x", "1.80x", "-"]
    assert rows[("router (hypercorn)", "router")][6] == "-"  # not against itself
    assert rows[("gateway+router (uvicorn)", "gateway")][5:] == ["-", "0.60x", "-", "-"]
    assert rows[("vllm-router", "router")][5:] == ["-", "-", "-", "-"]


def test_the_baseline_code_sets_the_issues_own_bound_on_each_hop() -> None:
    samples = (rounds("router", {"router": [18.0]})
               + rounds("router@baseline", {"router": [45.0]})
               + rounds("gateway", {"router": [18.0], "gateway": [30.0]})
               + rounds("gateway@baseline", {"router": [40.0], "gateway": [50.0]}))
    costs = per_chunk_costs(samples, LONG, SHORT, 48)
    by_key = {t.key: t for t in chunk_targets(costs)}
    router, gateway = by_key["chunk_cost:router@baseline"], by_key["chunk_cost:gateway@baseline"]
    assert router.passed is True and router.measured.startswith("0.40x (18.0 vs 45.0 us)")
    assert "the baseline code's" in router.target
    assert gateway.passed is False and gateway.measured.startswith("0.60x (30.0 vs 50.0 us)")
    rows = {(r[0], r[1]): r for r in chunk_table_rows(costs)}
    assert rows[("router", "router")][5] == "0.40x"
    assert rows[("gateway+router", "router")][5] == "0.45x"  # each process against its own
    assert rows[("router (baseline)", "router")][5:7] == ["-", "-"]  # not against itself


def test_every_path_reads_against_the_byte_relay_of_the_same_rounds() -> None:
    samples = (rounds("router", {"router": [24.0, 26.0, 25.0]})
               + rounds("gateway", {"router": [20.0] * 3, "gateway": [21.0] * 3})
               + rounds("vllm-router", {"router": [17.0] * 3})
               + rounds("relay", {"router": [16.0, 20.0, 18.0]}))
    rows = {(r[0], r[1]): r for r in chunk_table_rows(per_chunk_costs(samples, LONG, SHORT, 48))}
    assert rows[("router", "router")][2] == "25.0" and rows[("router", "router")][8] == "+7.0"
    assert rows[("gateway+router", "gateway")][8] == "+3.0"
    assert rows[("vllm-router", "router")][8] == "-1.0"  # Rust, under the Python floor
    relay = rows[("byte relay (floor)", "router")]
    assert relay[2:5] == ["18.0", "16.0..20.0", "3"] and relay[7:] == ["1.06x", "-"]


def test_without_hypercorn_or_paced_runs_there_is_no_verdict() -> None:
    assert [t.passed for t in chunk_targets(per_chunk_costs(
        rounds("router", {"router": [20.0]}), LONG, SHORT, 48))] == [None] * 4
    assert per_chunk_costs([run(LONG, "router", 0, 100, router=1.0)], LONG, SHORT, 48) == []


def test_the_short_paced_streams_run_with_the_long_ones() -> None:
    names = [[s.name for s in g] for g in scenario_groups(SCENARIOS)]
    assert ["paced10ms c64", "paced10ms/16 c64"] in names
    assert [n for g in names for n in g] == [
        "chat c1", "chat c64", "stream64 c1", "stream64 c64", LONG, SHORT, "paced10ms c1000"]
    alone = [s for s in SCENARIOS if s.name != LONG]  # without its partner: on its own
    assert [[s.name for s in g] for g in scenario_groups(alone)] == [[s.name] for s in alone]
