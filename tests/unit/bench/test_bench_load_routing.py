"""wrk output parsing, TTFT detection and the routing workload (bench/load.py, routing.py)."""

from __future__ import annotations

import math

import pytest

from bench.load import first_content_at, parse_wrk_output
from bench.routing import (
    Workload,
    cache_hit_rate,
    conversation_turns,
    parse_decisions,
    system_prompt,
)

WRK_OUT = """Running 5s test @ http://127.0.0.1:1/v1/chat/completions
  1 threads and 64 connections
BENCH_JSON {"requests":1000,"duration_us":5000000,"bytes":1,"p50_us":1500,"p90_us":2000,\
"p99_us":9000,"mean_us":1600.5,"max_us":12000,"errors":{"connect":0,"read":1,"write":0,\
"status":10,"timeout":2}}
"""


def test_parse_wrk_output_subtracts_non_2xx_and_counts_errors():
    res = parse_wrk_output(WRK_OUT)
    assert res.requests == 990
    assert res.rps == 198
    assert (res.p50_ms, res.p99_ms) == (1.5, 9.0)
    assert res.errors == 13


def test_parse_wrk_output_without_summary_fails_loudly():
    with pytest.raises(ValueError, match="BENCH_JSON"):
        parse_wrk_output("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_first_content_at_skips_role_only_chunk():
    role = b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n'
    token = b'data: {"choices":[{"delta":{"content":" the"}}]}\n\n'
    assert not first_content_at(role)
    assert first_content_at(role + token)
    assert first_content_at(b'data: {"choices":[{"text":" a"}]}\n\n')  # completions
    assert not first_content_at(b'data: {"choices":[],"usage":{}}\n\n')


def test_system_prompts_are_distinct_from_the_first_block_and_sized():
    a, b = system_prompt(0, 2000), system_prompt(1, 2000)
    assert len(a) == len(b) == 8000
    assert a[:64] != b[:64]
    assert system_prompt(0, 2000) == a  # deterministic


def test_conversation_turns_grow_the_history():
    w = Workload(conversations=2, turns=3, prompts=2, system_tokens=100)
    turns = conversation_turns(w, 1)
    assert [len(t) for t in turns] == [2, 4, 6]
    assert turns[2][:4] == turns[1] and turns[1][:2] == turns[0]  # each turn extends the last
    assert turns[0][0]["role"] == "system" and turns[2][3]["role"] == "user"
    assert conversation_turns(w, 3)[0][0] == turns[0][0]  # same system prompt (3 mod 2)


def test_cache_hit_rate_sums_over_replicas():
    stats = [{"prefix_cache": {"queries": 100, "hits": 50}},
             {"prefix_cache": {"queries": 300, "hits": 250}}]
    assert cache_hit_rate(stats) == 0.75
    assert math.isnan(cache_hit_rate([{}]))  # nothing was queried


def test_parse_decisions_from_prometheus_text():
    text = """# HELP nebula_router_policy_decisions_total Routing decisions by reason
# TYPE nebula_router_policy_decisions_total counter
nebula_router_policy_decisions_total{policy="prefix",reason="prefix_hit"} 83.0
nebula_router_policy_decisions_total{policy="prefix",reason="prefix_fallback_busy"} 13.0
nebula_router_policy_decisions_created{policy="prefix",reason="prefix_hit"} 1.7e+09
"""
    assert parse_decisions(text) == {"prefix_hit": 83, "prefix_fallback_busy": 13}
