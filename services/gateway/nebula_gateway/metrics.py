"""The gateway's Prometheus metrics (``nebula_gateway_*``), labels bounded.

``model`` is always a placed model (or ``"unknown"``), ``key`` a key's
configured name or hash prefix (or ``"anonymous"``), ``endpoint`` one of the
fixed public paths.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from nebula_common.metric_children import Batched

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

REQUESTS = Counter("nebula_gateway_requests_total", "Requests answered, by final status",
                   ["endpoint", "model", "status"])
DURATION = Histogram("nebula_gateway_request_duration_seconds",
                     "Time from request received to last byte sent", ["endpoint", "model"],
                     buckets=_LATENCY_BUCKETS)
TTFT = Histogram("nebula_gateway_time_to_first_token_seconds",
                 "Time from request received to the first streamed chunk sent",
                 ["endpoint", "model"], buckets=_LATENCY_BUCKETS)
PROMPT_TOKENS = Counter("nebula_gateway_prompt_tokens_total",
                        "Prompt tokens counted by the engines", ["model", "key"])
COMPLETION_TOKENS = Counter("nebula_gateway_completion_tokens_total",
                            "Completion tokens counted by the engines", ["model", "key"])
RATE_LIMITED = Counter("nebula_gateway_rate_limited_total",
                       "Requests refused with 429 by a per-key limit", ["key", "reason"])
AUTH_FAILURES = Counter("nebula_gateway_auth_failures_total",
                        "Requests refused for a missing or unknown API key", ["reason"])
ROUTER_FAILOVERS = Counter("nebula_gateway_router_failovers_total",
                           "Requests retried on another router after a router failed")
IN_FLIGHT = Gauge("nebula_gateway_in_flight_requests", "Requests being served right now",
                  multiprocess_mode="livesum")
TOKENS_RESERVED = Counter("nebula_gateway_tokens_reserved_total",
                          "Tokens held at admission by keys with a tpm or a budget", ["key"])
STATE_DEGRADED = Gauge("nebula_gateway_state_degraded",
                       "1 while the shared state store (Redis) is unreachable and this "
                       "gateway serves on local state", multiprocess_mode="livemax")
STATE_ERRORS = Counter("nebula_gateway_state_errors_total",
                       "Calls to the state store that failed", ["backend", "op"])
STATE_RECONCILED = Counter("nebula_gateway_state_reconciled_tokens_total",
                           "Tokens counted locally during an outage, added to the shared "
                           "store once it was back")
USAGE_PENDING = Gauge("nebula_gateway_usage_pending_rows",
                      "Usage rows (key, model) counted but not yet written to the state store",
                      multiprocess_mode="livesum")
KEYS_LOADED = Gauge("nebula_gateway_api_keys", "API keys accepted now", ["source"],
                    multiprocess_mode="livemax")

# Every request's children, looked up once per label set and updated in batches
# (metric_children). The other metrics are updated as they come.
requests_c = Batched(REQUESTS)
duration_h = Batched(DURATION)
ttft_h = Batched(TTFT)
prompt_tokens_c = Batched(PROMPT_TOKENS)
completion_tokens_c = Batched(COMPLETION_TOKENS)
in_flight_g = Batched(IN_FLIGHT)()
