"""Prometheus metrics of the node agent (names ``nebula_node_*``, bounded labels)."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

from prometheus_client import Counter, Gauge, Histogram

from nebula_common.records import EndpointState, GpuInfo


class ReplicaState(StrEnum):
    """Lifecycle of one replica on its node: ``/replicas`` and ``nebula_node_replicas{state}``.

    The three an endpoint record also carries are the records' own values.
    """

    STARTING = "starting"
    READY = EndpointState.READY.value
    RESTARTING = "restarting"
    DRAINING = EndpointState.DRAINING.value
    STOPPED = "stopped"
    FAILED = EndpointState.FAILED.value


REPLICA_STATES = tuple(ReplicaState)

REPLICAS = Gauge("nebula_node_replicas", "Replicas on this node by lifecycle state", ["state"])
ENGINE_RESTARTS = Counter("nebula_node_engine_restarts_total",
                          "Engine restarts after a crash or failed health checks", ["engine"])
ENGINE_START_SECONDS = Histogram(
    "nebula_node_engine_start_seconds", "Seconds from spawning an engine to it answering ready",
    ["engine"], buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200))
SCRAPE_ERRORS = Counter("nebula_node_scrape_errors_total",
                        "Failed scrapes of an engine's /metrics", ["engine"])
ETCD_UP = Gauge("nebula_node_etcd_up", "1 when the last etcd call of the node succeeded")
GPU_MEMORY_USED = Gauge("nebula_node_gpu_memory_used_bytes",
                        "GPU memory in use, from nvidia-smi", ["gpu"])
GPU_MEMORY_TOTAL = Gauge("nebula_node_gpu_memory_total_bytes",
                         "GPU memory in total, from nvidia-smi", ["gpu"])
LEASE_REGRANTS = Counter("nebula_node_lease_regrants_total",
                         "Times the node's etcd lease was lost and granted again")


def record_gpus(gpus: list[GpuInfo]) -> None:
    """Export the GPU memory read with the last ``nvidia-smi`` query (bounded: one per GPU)."""
    for gpu in gpus:
        GPU_MEMORY_USED.labels(gpu=str(gpu.index)).set(gpu.memory_used_mb * 1024 * 1024)
        GPU_MEMORY_TOTAL.labels(gpu=str(gpu.index)).set(gpu.memory_total_mb * 1024 * 1024)


def bind_replica_gauge(count_in_state: Callable[[str], int]) -> None:
    """Make ``nebula_node_replicas{state}`` read live counts at scrape time."""
    def reader(state: str) -> Callable[[], int]:
        return lambda: count_in_state(state)

    for state in REPLICA_STATES:
        REPLICAS.labels(state=state).set_function(reader(state))
