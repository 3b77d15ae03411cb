"""Prometheus metrics of the router (names ``nebula_router_*``, bounded labels).

Gauges that describe the table (in-flight per replica, endpoints by state, etcd
connection) are computed at scrape time by :class:`TableCollector`, so the
request path only touches counters and histograms.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from nebula_common.metric_children import Batched, Labelled
from nebula_common.records import EndpointState
from nebula_common.service import register_collector, unregister_collector

from .policy import Candidate

Snapshot = Callable[[], tuple[list[Candidate], bool, Callable[[Candidate, float], str]]]
"""Scrape-time view of the table: replicas, etcd connected, outlier state of a replica."""

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0, 120.0, 300.0)

REQUESTS = Counter("nebula_router_requests_total", "Requests answered, by model and status",
                   ["model", "status"])
DURATION = Histogram("nebula_router_request_duration_seconds",
                     "Time from request to last byte sent", ["model"], buckets=LATENCY_BUCKETS)
TTFB = Histogram("nebula_router_time_to_first_byte_seconds",
                 "Time from request to the first upstream body byte sent to the client",
                 ["model"], buckets=LATENCY_BUCKETS)
RETRIES = Counter("nebula_router_retries_total", "Attempts retried on another replica",
                  ["model"])
EJECTIONS = Counter("nebula_router_ejections_total",
                    "Replicas ejected after consecutive failures", ["model"])
DECISIONS = Counter("nebula_router_policy_decisions_total", "Routing decisions by reason",
                    ["policy", "reason"])
UPSTREAM_ERRORS = Counter("nebula_router_upstream_errors_total",
                          "Failed upstream attempts by kind", ["kind"])
STREAM_ERRORS = Counter("nebula_router_stream_errors_total",
                        "Responses cut after bytes reached the client (upstream died mid-stream)")
STREAM_RESUMES = Counter("nebula_router_stream_resumes_total",
                         "Streams broken after bytes reached the client, by what the router "
                         "did: resumed on another replica, failed (no replica took it), refused "
                         "(not exactly resumable), exhausted (--stream-failover-max reached)",
                         ["outcome"])
CLIENT_DISCONNECTS = Counter("nebula_router_client_disconnects_total",
                             "Requests whose client went away; the upstream call was cancelled")
QUEUE_LENGTH = Gauge("nebula_router_queue_length",
                     "Requests waiting in the admission queue, by model and priority class",
                     ["model", "class"], multiprocess_mode="livesum")
QUEUE_WAIT = Histogram("nebula_router_queue_wait_seconds",
                       "Time a dispatched request waited in the admission queue",
                       ["model", "class"], buckets=LATENCY_BUCKETS)
QUEUE_DISPATCHED = Counter("nebula_router_queue_dispatched_total",
                           "Requests the admission queue let through, by model and class",
                           ["model", "class"])
QUEUE_SHED = Counter("nebula_router_queue_shed_total",
                     "Requests that left the admission queue unserved, by reason: queue_full "
                     "(429), queue_timeout (503), cancelled (the client went away)",
                     ["model", "reason"])


# Once or more per request: applied in batches (metric_children). The rest as they come.
requests_c = Batched(REQUESTS)
duration_h = Batched(DURATION)
ttfb_h = Batched(TTFB)
decisions_c = Batched(DECISIONS)
retries_c = Labelled(RETRIES)
ejections_c = Labelled(EJECTIONS)
upstream_errors_c = Labelled(UPSTREAM_ERRORS)
resumes_c = Labelled(STREAM_RESUMES)
queue_length_g = Labelled(QUEUE_LENGTH)
queue_wait_h = Labelled(QUEUE_WAIT)
queue_dispatched_c = Labelled(QUEUE_DISPATCHED)
queue_shed_c = Labelled(QUEUE_SHED)


class TableCollector(Collector):
    """Scrape-time gauges over the endpoint table."""

    def __init__(self, snapshot: Snapshot):
        self.snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily]:
        replicas, connected, state_of = self.snapshot()
        now = time.monotonic()
        in_flight = GaugeMetricFamily("nebula_router_in_flight",
                                      "Requests in flight per replica", labels=["model", "replica"])
        states: dict[str, int] = {**dict.fromkeys(map(str, EndpointState), 0),
                                  "ejected": 0, "half_open": 0}
        for c in replicas:
            in_flight.add_metric([c.model_uid, c.replica_id], c.in_flight)
            st = state_of(c, now)
            if st == "closed":
                key = c.status if c.status in states else EndpointState.FAILED
            else:
                key = st
            states[key] += 1
        endpoints = GaugeMetricFamily("nebula_router_endpoints",
                                      "Replicas in the table by state", labels=["state"])
        for state, n in states.items():
            endpoints.add_metric([state], n)
        etcd = GaugeMetricFamily("nebula_router_etcd_connected",
                                 "1 while every etcd watch of the router is healthy")
        etcd.add_metric([], 1.0 if connected else 0.0)
        yield in_flight
        yield endpoints
        yield etcd

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


_collector: TableCollector | None = None


def install_collector(snapshot: Snapshot) -> None:
    global _collector
    if _collector is not None:
        unregister_collector(_collector)
    _collector = TableCollector(snapshot)
    register_collector(_collector)
