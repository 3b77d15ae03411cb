"""vLLM's metric names for the sim, on a private registry (rendered at its /metrics)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST

Reading = Callable[[], float]


class SimMetrics:
    """vLLM's metric names on a private registry; the gauges read the engine when scraped."""

    def __init__(self, model: str, *, running: Reading, waiting: Reading,
                 kv_usage: Reading) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        labels = {"model_name": model, "engine": "0"}
        names = list(labels)

        def gauge(name: str, doc: str, fn: Reading) -> None:
            Gauge(name, doc, names, registry=reg).labels(**labels).set_function(fn)

        gauge("vllm:num_requests_running", "Requests in model execution batches.", running)
        gauge("vllm:num_requests_waiting", "Requests waiting to be processed.", waiting)
        gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
              kv_usage)
        gauge("vllm:gpu_cache_usage_perc", "GPU KV-cache usage (pre-v0.10 name).", kv_usage)

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> Counter:
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

    def text(self) -> bytes:
        """The exposition text of every metric (content type :data:`METRICS_CONTENT_TYPE`)."""
        return generate_latest(self.registry)
