"""Labelled metric children looked up once: the request paths count per label set."""

from __future__ import annotations

from typing import Generic, TypeVar

from prometheus_client.metrics import MetricWrapperBase

M = TypeVar("M", bound=MetricWrapperBase)


class Labelled(Generic[M]):
    """Caches labelled children: ``labels()`` takes a lock and builds tuples each call.

    For label values from bounded sets only (models, statuses, key names), and for
    metrics whose children are never removed.
    """

    def __init__(self, metric: M):
        self.metric = metric
        self.children: dict[tuple[str, ...], M] = {}

    def __call__(self, *values: str) -> M:
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = self.metric.labels(*values)
        return child
