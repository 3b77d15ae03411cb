"""Load figures read from engines' Prometheus text."""

from __future__ import annotations

import pytest

from nebula_node.engines import parse_vllm_metrics, prefix_hit_rate

VLLM_TEXT = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="qwen"} 3.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="qwen"} 2.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="qwen"} 0.25
# HELP vllm:gpu_cache_usage_perc old name
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{engine="0",model_name="qwen"} 0.99
# HELP vllm:prefix_cache_queries Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries counter
vllm:prefix_cache_queries_total{engine="0",model_name="qwen"} 200.0
# HELP vllm:prefix_cache_hits Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits counter
vllm:prefix_cache_hits_total{engine="0",model_name="qwen"} 50.0
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{le="0.1",model_name="qwen"} 4.0
vllm:time_to_first_token_seconds_bucket{le="+Inf",model_name="qwen"} 5.0
vllm:time_to_first_token_seconds_count{model_name="qwen"} 5.0
vllm:time_to_first_token_seconds_sum{model_name="qwen"} 0.4
"""


def test_parse_vllm_metrics():
    sample = parse_vllm_metrics(VLLM_TEXT)
    assert sample.running == 3 and sample.waiting == 2
    assert sample.kv_cache_usage == pytest.approx(0.25)  # the current name wins
    assert sample.prefix_hits == 50 and sample.prefix_queries == 200
    assert prefix_hit_rate(sample, None) == pytest.approx(0.25)


def test_old_kv_cache_name_and_labels_summed():
    text = ("vllm:gpu_cache_usage_perc{model_name=\"a\"} 0.5\n"
            "vllm:num_requests_running{model_name=\"a\"} 1\n"
            "vllm:num_requests_running{model_name=\"b\"} 4\n")
    sample = parse_vllm_metrics(text)
    assert sample.kv_cache_usage == 0.5 and sample.running == 5
    assert sample.prefix_hits is None and prefix_hit_rate(sample, None) == 0.0


def test_prefix_hit_rate_between_scrapes():
    first = parse_vllm_metrics(VLLM_TEXT)
    later = parse_vllm_metrics(VLLM_TEXT.replace("} 200.0", "} 300.0").replace("} 50.0", "} 140.0"))
    assert prefix_hit_rate(later, first) == pytest.approx(0.9)  # 90 hits / 100 queries
    # No query since the last scrape: the cumulative rate, not zero.
    assert prefix_hit_rate(later, later) == pytest.approx(140 / 300)


def test_empty_and_garbage_metrics():
    assert parse_vllm_metrics("").running == 0
    with pytest.raises(ValueError):
        parse_vllm_metrics("this is { not prometheus")
