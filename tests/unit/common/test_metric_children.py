"""Batched metric updates: what a scrape shows equals what direct updates would show."""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from quart import Quart

from nebula_common.metric_children import BATCH, Batched, MetricBatch
from nebula_common.service import add_basic_routes

BUCKETS = (0.001, 0.01, 0.1, 1.0, 10.0)
# Every side of every bound, zero, a negative and past the last finite bound.
VALUES = [-1.0, 0.0, 0.0005, 0.001, 0.0011, 0.01, 0.05, 0.1, 0.1000001, 1.0, 3.0, 10.0, 11.0,
          1e9]

_names = itertools.count()


def _samples(metric: Counter | Gauge | Histogram, registry: CollectorRegistry
             ) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name.split("_", 2)[-1], tuple(sorted(s.labels.items()))): s.value
            for family in registry.collect() for s in family.samples
            if not s.name.endswith("_created")}


def _histograms() -> tuple[CollectorRegistry, Histogram, CollectorRegistry, Histogram]:
    n = next(_names)
    direct_reg, batched_reg = CollectorRegistry(), CollectorRegistry()
    direct = Histogram(f"t{n}_direct", "h", ["model"], buckets=BUCKETS, registry=direct_reg)
    batched = Histogram(f"t{n}_batched", "h", ["model"], buckets=BUCKETS,
                        registry=batched_reg)
    return direct_reg, direct, batched_reg, batched


def test_a_batch_of_observations_shows_as_one_observe_each() -> None:
    direct_reg, direct, batched_reg, batched = _histograms()
    batch = MetricBatch()
    for value in VALUES * 3:
        direct.labels("a").observe(value)
        batch.observe(batched.labels("a"), value)  # outside a loop: applied at once
    for value in VALUES[::2]:
        direct.labels("b").observe(value)

    async def inside() -> None:  # in a loop: held, then applied together
        for value in VALUES[::2]:
            batch.observe(batched.labels("b"), value)
        assert batched.labels("b")._sum.get() == 0  # not applied yet
        batch.flush()

    asyncio.run(inside())
    assert _samples(direct, direct_reg) == _samples(batched, batched_reg)
    assert _samples(direct, direct_reg)[("count", (("model", "a"),))] == len(VALUES) * 3


def test_counters_and_gauges_add_up_and_apply_after_the_interval() -> None:
    n = next(_names)
    registry = CollectorRegistry()
    counter = Counter(f"t{n}_requests", "c", ["status"], registry=registry)
    gauge = Gauge(f"t{n}_in_flight", "g", registry=registry)
    batch = MetricBatch(interval=0.05)
    child = counter.labels("200")

    async def run() -> list[float]:
        seen = []
        for _ in range(5):
            batch.add(child, 1)
            batch.add(gauge, 1)
        batch.add(gauge, -4)
        seen += [child._value.get(), gauge._value.get()]  # held
        for _ in range(100):  # bounded: the interval is 0.05 s
            if child._value.get():
                break
            await asyncio.sleep(0.01)
        seen += [child._value.get(), gauge._value.get()]
        return seen

    assert asyncio.run(run()) == [0, 0, 5, 1]
    assert batch.amounts == {} and batch.observed == []


def test_a_full_batch_is_applied_at_once() -> None:
    *_, batched = _histograms()
    batch = MetricBatch(interval=60, max_pending=4)

    async def run() -> float:
        for value in VALUES[:4]:
            batch.observe(batched.labels("a"), value)
        return batched.labels("a")._sum.get()

    assert asyncio.run(run()) == sum(VALUES[:4])
    assert batch.observed == []


def test_batched_children_and_the_scrape() -> None:
    """``/metrics`` applies what the requests left pending before it renders."""
    n = next(_names)
    counter = Counter(f"t{n}_scraped_total", "c", ["model"])  # the default registry
    requests = Batched(counter)
    app = Quart("t")
    add_basic_routes(app)

    async def run() -> tuple[bytes, float]:
        requests("m1").inc()
        requests("m1").inc(2)
        assert requests("m1") is requests("m1")  # looked up once
        pending = counter.labels("m1")._value.get()
        body = await (await app.test_client().get("/metrics")).get_data()
        return body, pending

    body, pending = asyncio.run(run())
    assert pending == 0
    assert f't{n}_scraped_total{{model="m1"}} 3.0'.encode() in body
    assert BATCH.amounts == {}


def test_a_worker_s_pending_counts_reach_the_multiprocess_files_at_exit(tmp_path: Path
                                                                         ) -> None:
    """A worker of --workers N that exits within the interval loses no count."""
    script = textwrap.dedent("""
        import asyncio
        from prometheus_client import Counter
        from nebula_common.metric_children import Batched

        requests = Batched(Counter("t_exit_requests_total", "c", ["model"]))

        async def main() -> None:
            for _ in range(3):
                requests("m").inc()  # pending: the loop ends before the interval

        asyncio.run(main())
    """)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(tmp_path))  # type: ignore[no-untyped-call]
    assert registry.get_sample_value("t_exit_requests_total", {"model": "m"}) == 3.0
