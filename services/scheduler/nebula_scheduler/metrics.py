"""Prometheus metrics of the scheduler (names ``nebula_scheduler_*``, bounded labels).

Per-model labels carry placed model uids only (operators choose them), never
anything a client sends.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

SPECS = Gauge("nebula_scheduler_specs", "ModelSpecs under /models/ (desired deployments)")
REPLICAS = Gauge(
    "nebula_scheduler_replicas",
    "Replicas per model: desired (spec), placed (in the plan), ready (ready endpoints)",
    ["model_uid", "state"],
)
UNPLACEABLE = Gauge(
    "nebula_scheduler_unplaceable_replicas", "Replicas no node can host right now"
)
RECONCILE_SECONDS = Histogram(
    "nebula_scheduler_reconcile_duration_seconds",
    "Time of one reconcile pass (placement and plan writes)",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
RECONCILES = Counter(
    "nebula_scheduler_reconcile_total", "Reconcile passes by result (ok, error)", ["result"]
)
PLAN_WRITES = Counter(
    "nebula_scheduler_plan_writes_total",
    "Plan writes by result (ok; conflict: the compare-and-swap lost and was retried; "
    "fenced: refused because this scheduler no longer holds the election key)",
    ["result"],
)
LEADER = Gauge("nebula_scheduler_leader", "1 while this scheduler is the elected leader")
AUTOSCALE_EVENTS = Counter(
    "nebula_scheduler_autoscale_events_total",
    "Replica count changes made by the autoscaler, by direction (out, in)", ["direction"])
AUTOSCALE_TARGET = Gauge(
    "nebula_scheduler_autoscale_target_replicas",
    "The autoscaler's replica count for each autoscaled model (max_replicas > 0)", ["model"])


def set_model_replicas(model_uid: str, desired: int, placed: int, ready: int) -> None:
    REPLICAS.labels(model_uid, "desired").set(desired)
    REPLICAS.labels(model_uid, "placed").set(placed)
    REPLICAS.labels(model_uid, "ready").set(ready)


def forget_model(model_uid: str) -> None:
    """Drop the series of an undeployed model so labels stay bounded."""
    for state in ("desired", "placed", "ready"):
        try:
            REPLICAS.remove(model_uid, state)
        except KeyError:
            pass
    try:
        AUTOSCALE_TARGET.remove(model_uid)
    except KeyError:
        pass


# Every label value exists from the start, so a rate() over them never sees a gap.
for _result in ("ok", "conflict", "fenced"):
    PLAN_WRITES.labels(_result)
for _result in ("ok", "error"):
    RECONCILES.labels(_result)
LEADER.set(0)
