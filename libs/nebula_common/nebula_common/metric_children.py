"""Labelled metric children looked up once, and the request path's updates in batches.

The request paths count per label set. :class:`Labelled` caches the children;
:class:`Batched` also defers what is done to them: a request adds to a plain dict, and the
batch is applied to the Prometheus values every :data:`FLUSH_S` (and before every scrape,
:func:`flush_metrics`). Each Prometheus update takes a lock, and a histogram's walks its
buckets in Python; nine of them per proxied request were about a tenth of the router's
CPU (``make bench``: ``bench/findings.md``). Applied together they are one update per label
set and bucket, not one per request.
"""

from __future__ import annotations

import asyncio
import atexit
from bisect import bisect_left
from typing import Any, Generic, TypeVar

from prometheus_client.metrics import MetricWrapperBase

M = TypeVar("M", bound=MetricWrapperBase)
C = TypeVar("C")

FLUSH_S = 0.05
"""How long a batched update waits at most (a scrape applies it at once)."""
MAX_PENDING = 4096
"""Observations held at most; the next one applies the batch."""


class _Children(Generic[M, C]):
    """A metric's children of type ``C``, made once per label set by :meth:`_child`."""

    def __init__(self, metric: M):
        self.metric = metric
        self.children: dict[tuple[str, ...], C] = {}

    def __call__(self, *values: str) -> C:
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = self._child(values)
        return child

    def _child(self, values: tuple[str, ...]) -> C:
        raise NotImplementedError


class Labelled(_Children[M, M]):
    """Caches labelled children: ``labels()`` takes a lock and builds tuples each call.

    For label values from bounded sets only (models, statuses, key names), and for
    metrics whose children are never removed.
    """

    def _child(self, values: tuple[str, ...]) -> M:
        return self.metric.labels(*values)


class MetricBatch:
    """Counter and gauge amounts and histogram observations not applied yet.

    Everything runs on the event loop's thread, so nothing here takes a lock; outside a
    running loop an update is applied at once.
    """

    def __init__(self, interval: float = FLUSH_S, max_pending: int = MAX_PENDING) -> None:
        self.interval = interval
        self.max_pending = max_pending
        self.amounts: dict[Any, float] = {}
        """Counter or gauge child -> what to add to it."""
        self.observed: list[tuple[Any, float]] = []
        """(histogram child, value), in the order observed."""
        self._timer: asyncio.TimerHandle | None = None

    def add(self, child: Any, amount: float) -> None:
        amounts = self.amounts
        amounts[child] = amounts.get(child, 0.0) + amount
        if self._timer is None:
            self._schedule()

    def observe(self, child: Any, value: float) -> None:
        observed = self.observed
        observed.append((child, value))
        if self._timer is None or len(observed) >= self.max_pending:
            self._schedule()

    def _schedule(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or len(self.observed) >= self.max_pending:
            self.flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.interval, self.flush)

    def flush(self) -> None:
        """Apply everything pending to the Prometheus values."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        amounts, self.amounts = self.amounts, {}
        observed, self.observed = self.observed, []
        for child, amount in amounts.items():
            if amount:  # a gauge's +1 and -1 of one request cancel out
                child.inc(amount)
        by_child: dict[Any, list[float]] = {}
        for child, value in observed:
            values = by_child.get(child)
            if values is None:
                by_child[child] = [value]
            else:
                values.append(value)
        for child, values in by_child.items():
            _observe_all(child, values)


def _observe_all(histogram: Any, values: list[float]) -> None:
    """``histogram.observe(v)`` for every value, with one update per bucket and one of the
    sum. prometheus_client has no call for that, so this uses the child's own bucket
    bounds and values (``_upper_bounds``, ``_buckets``, ``_sum``, what ``observe`` itself
    updates; pinned in ``requirements``, and ``test_metric_children`` compares the result
    with ``observe``'s)."""
    bounds = histogram._upper_bounds
    per_bucket: dict[int, int] = {}
    for value in values:
        index = bisect_left(bounds, value)  # the first bound >= value, as observe() finds
        per_bucket[index] = per_bucket.get(index, 0) + 1
    histogram._sum.inc(sum(values))
    buckets = histogram._buckets
    for index, count in per_bucket.items():
        buckets[index].inc(count)


BATCH = MetricBatch()
atexit.register(BATCH.flush)  # a worker's last counts reach the multiprocess files


def flush_metrics() -> None:
    """Apply this process's pending updates (``/metrics`` calls it before rendering)."""
    BATCH.flush()


class BatchedChild:
    """One label set of a :class:`Batched` metric: ``inc``, ``dec`` and ``observe`` go into
    :data:`BATCH`."""

    __slots__ = ("child",)

    def __init__(self, child: Any) -> None:
        self.child = child

    def inc(self, amount: float = 1.0) -> None:
        BATCH.add(self.child, amount)

    def dec(self, amount: float = 1.0) -> None:
        BATCH.add(self.child, -amount)

    def observe(self, value: float) -> None:
        BATCH.observe(self.child, value)


class Batched(_Children[M, BatchedChild]):
    """:class:`Labelled` whose children's updates are applied in batches (:data:`BATCH`).

    For the request path's counters, gauges and histograms; without labels, call it with
    no values. A reader of the values in the same process calls :func:`flush_metrics`
    first.
    """

    def _child(self, values: tuple[str, ...]) -> BatchedChild:
        return BatchedChild(self.metric.labels(*values) if values else self.metric)
