"""The engine adapter interface: how the node builds, probes and reads one engine kind.

The node treats every engine the same way (spawn, wait ready, register,
health-check, drain, stop); what differs per engine lives behind
:class:`EngineAdapter`: the command line and environment, the readiness and
health probes, and how to read load from its metrics text.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from nebula_common.capabilities import Capability

from .args import ArgPolicy, refusal


@dataclass(frozen=True)
class ReplicaSpec:
    """One replica this node should run, flattened from a PlacementPlan's assignment."""

    model_uid: str
    model_name: str
    engine: str
    replica_id: str
    port: int
    gpu_indices: tuple[int, ...] = ()
    engine_args: tuple[str, ...] = ()
    plan_version: int = 0
    trust_remote_code: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return (self.model_uid, self.replica_id)

    @property
    def name(self) -> str:
        """``<model_uid>__<replica_id>``: file names of its pid file and log."""
        return f"{self.model_uid}__{self.replica_id}"

    def same_process(self, other: ReplicaSpec) -> bool:
        """True when ``other`` can be served by the engine already running for ``self``.

        Only the plan version may differ: a new version that leaves this replica as it
        was must not restart it.
        """
        return (self.model_uid, self.model_name, self.engine, self.replica_id,
                self.gpu_indices, self.engine_args, self.port, self.trust_remote_code) == (
                other.model_uid, other.model_name, other.engine, other.replica_id,
                other.gpu_indices, other.engine_args, other.port, other.trust_remote_code)


@dataclass
class MetricsSample:
    """The load figures Nebula reads from an engine's Prometheus text (vLLM names)."""

    running: float = 0.0
    waiting: float = 0.0
    kv_cache_usage: float = 0.0
    prefix_hits: float | None = None
    prefix_queries: float | None = None
    names: set[str] = field(default_factory=set)


def parse_vllm_metrics(text: str) -> MetricsSample:
    """Read vLLM's metric names from Prometheus exposition text.

    Values of one metric with several label sets (e.g. one per model name) are
    summed. ``vllm:kv_cache_usage_perc`` (current vLLM) wins over the older
    ``vllm:gpu_cache_usage_perc`` when both are there.
    """
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if math.isnan(sample.value):
                continue
            sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    kv = sums.get("vllm:kv_cache_usage_perc", sums.get("vllm:gpu_cache_usage_perc", 0.0))
    return MetricsSample(
        running=sums.get("vllm:num_requests_running", 0.0),
        waiting=sums.get("vllm:num_requests_waiting", 0.0),
        kv_cache_usage=kv,
        prefix_hits=sums.get("vllm:prefix_cache_hits_total",
                             sums.get("vllm:gpu_prefix_cache_hits_total")),
        prefix_queries=sums.get("vllm:prefix_cache_queries_total",
                                sums.get("vllm:gpu_prefix_cache_queries_total")),
        names=set(sums),
    )


def prefix_hit_rate(current: MetricsSample, previous: MetricsSample | None) -> float:
    """Prefix-cache hit rate over the last scrape interval (cumulative on the first scrape).

    When no query happened since the previous scrape the cumulative rate is
    returned, so the figure does not drop to zero whenever a replica is idle.
    """
    hits, queries = current.prefix_hits, current.prefix_queries
    if hits is None or not queries:
        return 0.0
    if previous is not None and previous.prefix_hits is not None and previous.prefix_queries:
        d_hits, d_queries = hits - previous.prefix_hits, queries - previous.prefix_queries
        if d_queries > 0 and d_hits >= 0:
            return max(0.0, min(1.0, d_hits / d_queries))
    return max(0.0, min(1.0, hits / queries))


async def http_ok(session: aiohttp.ClientSession, url: str, timeout: float) -> bool:
    """GET ``url``; True on a 200 answer."""
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            await resp.read()
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False


async def models_listed(session: aiohttp.ClientSession, url: str, names: set[str],
                        timeout: float) -> bool:
    """GET ``<url>/v1/models``; True when it answers 200 and lists one of ``names``."""
    try:
        async with session.get(f"{url}/v1/models",
                               timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            if resp.status != 200:
                return False
            body = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
        return False
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        return False
    listed = {item.get("id") for item in data if isinstance(item, dict)}
    return bool(listed & names)


class EngineAdapter(ABC):
    """Everything engine-specific the node needs."""

    name: str = ""
    has_metrics: bool = True
    """False when the engine serves no Prometheus /metrics (its stats stay zero)."""

    arg_policy: ArgPolicy
    """The engine arguments a plan may ask for (each adapter sets its own)."""

    def refusal(self, replica: ReplicaSpec) -> str | None:
        """Why ``replica`` must not be started here (its arguments), or None."""
        return refusal(self.arg_policy, replica.model_uid, replica.model_name,
                       replica.engine_args, replica.trust_remote_code)

    @abstractmethod
    def command(self, replica: ReplicaSpec, port: int, host: str) -> list[str]:
        """The argv that starts ``replica`` listening on ``host:port``."""

    @abstractmethod
    def capabilities(self, replica: ReplicaSpec) -> frozenset[Capability]:
        """What the engine started for ``replica`` serves (published with its endpoint)."""

    def concurrency(self, replica: ReplicaSpec) -> int:
        """Requests the engine started for ``replica`` runs at once, published with its
        endpoint for the router's admission queue (0: not declared, no limit)."""
        return 0

    def env(self, replica: ReplicaSpec, base: dict[str, str]) -> dict[str, str]:
        """The engine's environment: ``base`` (the node's) plus what this engine needs."""
        return dict(base)

    @abstractmethod
    async def ready(self, session: aiohttp.ClientSession, base_url: str,
                    replica: ReplicaSpec) -> bool:
        """True once the engine answers requests for ``replica``."""

    async def healthy(self, session: aiohttp.ClientSession, base_url: str,
                      replica: ReplicaSpec) -> bool:
        """Periodic liveness probe once ready (defaults to ``GET /health``)."""
        return await http_ok(session, f"{base_url}/health", timeout=3.0)

    def parse_metrics(self, text: str) -> MetricsSample:
        return parse_vllm_metrics(text)
