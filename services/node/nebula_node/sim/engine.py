"""Sim engine state: settings and faults, admission queue, stats and vLLM metrics."""

from __future__ import annotations

import asyncio
import random
from collections import deque
from dataclasses import asdict, dataclass, fields
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .prefix_cache import PrefixCache


@dataclass
class Faults:
    """Latency settings and injected faults; all changeable at run time (POST /sim/faults)."""

    ttft_ms: float = 0.0
    itl_ms: float = 0.0
    prefill_ms_per_token: float = 0.0
    fail_rate: float = 0.0
    crash_after: int = 0  # 0 = never; else exit when that request arrives
    hang: bool = False
    hang_health: bool = False
    stream_cut_after: int = 0  # 0 = never; else drop the connection after N frames
    max_concurrency: int = 0  # 0 = unlimited

    _FLOATS = ("ttft_ms", "itl_ms", "prefill_ms_per_token", "fail_rate")
    _INTS = ("crash_after", "stream_cut_after", "max_concurrency")
    _BOOLS = ("hang", "hang_health")

    def validated(self, patch: dict[str, Any]) -> dict[str, Any]:
        """Check a partial update; returns the typed values or raises ValueError."""
        if not isinstance(patch, dict):
            raise ValueError("body must be a JSON object")
        names = {f.name for f in fields(self)}
        out: dict[str, Any] = {}
        for key, value in patch.items():
            if key not in names:
                raise ValueError(f"unknown fault {key!r}; known: {sorted(names)}")
            if key in self._BOOLS:
                if not isinstance(value, bool):
                    raise ValueError(f"{key} must be true or false")
                out[key] = value
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{key} must be a non-negative number")
            if key in self._INTS:
                if int(value) != value:
                    raise ValueError(f"{key} must be an integer")
                out[key] = int(value)
            else:
                out[key] = float(value)
        if out.get("fail_rate", 0.0) > 1.0:
            raise ValueError("fail_rate must be between 0 and 1")
        return out

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Admission:
    """At most ``limit`` running requests (0 = unlimited); the rest wait in FIFO order.

    A slot freed by :meth:`release` is handed straight to the oldest waiter, so a
    burst of arrivals cannot overtake a request that has been waiting.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def _has_room(self) -> bool:
        return self.limit <= 0 or self.running < self.limit

    async def acquire(self) -> None:
        if not self._waiters and self._has_room():
            self.running += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the slot was handed to us just as we were cancelled
            else:
                self._waiters.remove(fut)
            raise

    def release(self) -> None:
        self.running -= 1
        self._wake()

    def set_limit(self, limit: int) -> None:
        self.limit = limit
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._has_room():
            fut = self._waiters.popleft()
            if not fut.done():
                self.running += 1
                fut.set_result(None)


class SimMetrics:
    """vLLM's metric names on a private registry (rendered at the sim's /metrics)."""

    def __init__(self, model: str, engine: SimEngine) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        labels = {"model_name": model, "engine": "0"}
        names = list(labels)

        def gauge(name: str, doc: str, fn: Any) -> None:
            Gauge(name, doc, names, registry=reg).labels(**labels).set_function(fn)

        gauge("vllm:num_requests_running", "Requests in model execution batches.",
              lambda: engine.admission.running)
        gauge("vllm:num_requests_waiting", "Requests waiting to be processed.",
              lambda: engine.admission.waiting)
        gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
              engine.kv_usage)
        gauge("vllm:gpu_cache_usage_perc", "GPU KV-cache usage (pre-v0.10 name).",
              engine.kv_usage)

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> Any:
            c = Counter(name, doc, [*names, *extra], registry=reg)
            return c if extra else c.labels(**labels)

        self.prompt_tokens = counter("vllm:prompt_tokens", "Prefill tokens processed.")
        self.generation_tokens = counter("vllm:generation_tokens",
                                         "Generation tokens processed.")
        self._success = counter("vllm:request_success", "Successful requests.",
                                ("finished_reason",))
        self.prefix_queries = counter("vllm:prefix_cache_queries",
                                      "Prefix cache queries, in tokens.")
        self.prefix_hits = counter("vllm:prefix_cache_hits", "Prefix cache hits, in tokens.")
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds", "Time to first token.", names, registry=reg,
            buckets=(0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                     2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)).labels(**labels)
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds", "End-to-end request latency.", names,
            registry=reg, buckets=(0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0,
                                   30.0, 40.0, 50.0, 60.0, 120.0)).labels(**labels)
        self._labels = labels

    def success(self, finished_reason: str) -> None:
        self._success.labels(**self._labels, finished_reason=finished_reason).inc()

    def aborted(self) -> None:
        """A request whose client went away: vLLM counts it with finished_reason=abort."""
        self.success("abort")


class SimEngine:
    """Everything the HTTP layer shares: settings, faults, queue, cache, counters."""

    def __init__(self, *, model: str, served_names: list[str], max_model_len: int,
                 output_tokens: int, faults: Faults, prefix_cache_blocks: int,
                 prefix_block_chars: int, kv_cache_tokens: int, embedding_dim: int,
                 seed: int) -> None:
        self.model = model
        self.served_names = served_names
        self.max_model_len = max_model_len
        self.output_tokens = output_tokens
        self.faults = faults
        self.embedding_dim = embedding_dim
        self.kv_cache_tokens = max(1, kv_cache_tokens)
        self.cache = PrefixCache(prefix_cache_blocks, prefix_block_chars)
        self.admission = Admission(faults.max_concurrency)
        self.rng = random.Random(seed)
        self.crash_at = faults.crash_after  # request number that kills the process
        self.running_tokens = 0
        self.requests_total = 0
        self.requests_cancelled = 0
        self.requests_failed = 0
        self.requests_success = 0
        self.by_path: dict[str, int] = {}
        self.last_request_headers: dict[str, str] = {}
        self.metrics = SimMetrics(model, self)

    def kv_usage(self) -> float:
        return min(1.0, self.running_tokens / self.kv_cache_tokens)

    def serves(self, name: Any) -> bool:
        return name is None or name in self.served_names

    def update_faults(self, patch: dict[str, Any]) -> None:
        values = self.faults.validated(patch)
        for key, value in values.items():
            setattr(self.faults, key, value)
        if "crash_after" in values:
            # At run time "crash after N" counts from now, not from the start.
            n = values["crash_after"]
            self.crash_at = self.requests_total + n if n else 0
        if "max_concurrency" in values:
            self.admission.set_limit(values["max_concurrency"])

    def should_fail(self) -> bool:
        rate = self.faults.fail_rate
        return rate > 0 and (rate >= 1.0 or self.rng.random() < rate)

    def stats(self) -> dict[str, Any]:
        cache = self.cache
        return {
            "model": self.model,
            "requests_total": self.requests_total,
            "requests_success": self.requests_success,
            "requests_cancelled": self.requests_cancelled,
            "requests_failed": self.requests_failed,
            "running": self.admission.running,
            "waiting": self.admission.waiting,
            "kv_cache_usage": self.kv_usage(),
            "prefix_cache": {
                "queries": cache.queries, "hits": cache.hits,
                "hit_rate": cache.hits / cache.queries if cache.queries else 0.0,
                "blocks": len(cache), "capacity": cache.capacity,
                "block_chars": cache.block_chars,
            },
            "by_path": dict(self.by_path),
            "last_request_headers": dict(self.last_request_headers),
            "faults": self.faults.as_dict(),
        }
