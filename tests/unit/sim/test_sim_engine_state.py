"""Admission queue, fault settings and stats of the sim engine (no network)."""

from __future__ import annotations

import asyncio

import pytest

from nebula_node.sim.admission import Admission
from nebula_node.sim.engine import SimEngine
from nebula_node.sim.faults import Faults


def make_engine(**faults: object) -> SimEngine:
    return SimEngine(model="m", served_names=["m", "alias"], max_model_len=1000,
                     output_tokens=4, faults=Faults(**faults), prefix_cache_blocks=16,
                     prefix_block_chars=64, kv_cache_tokens=100, embedding_dim=8, seed=1)


async def test_admission_queues_beyond_the_limit_in_fifo_order() -> None:
    adm = Admission(2)
    await adm.acquire()
    await adm.acquire()
    order: list[int] = []

    async def waiter(i: int) -> None:
        await adm.acquire()
        order.append(i)

    tasks = [asyncio.create_task(waiter(i)) for i in range(3)]
    await asyncio.sleep(0)
    assert (adm.running, adm.waiting) == (2, 3)
    adm.release()
    await asyncio.sleep(0)
    assert order == [0] and (adm.running, adm.waiting) == (2, 2)
    adm.set_limit(0)  # unlimited: everyone waiting gets in
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2] and (adm.running, adm.waiting) == (4, 0)


async def test_cancelled_waiter_leaves_the_queue_and_never_leaks_a_slot() -> None:
    adm = Admission(1)
    await adm.acquire()
    waiter = asyncio.create_task(adm.acquire())
    await asyncio.sleep(0)
    assert adm.waiting == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert (adm.running, adm.waiting) == (1, 0)
    # A slot handed over in the same tick as the cancel is given back.
    waiter = asyncio.create_task(adm.acquire())
    await asyncio.sleep(0)
    adm.release()  # hands the slot to the waiter...
    waiter.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert (adm.running, adm.waiting) == (0, 0)


def test_fault_patches_are_validated() -> None:
    faults = Faults()
    assert faults.validated({"fail_rate": 0.5, "hang": True, "crash_after": 3}) == \
        {"fail_rate": 0.5, "hang": True, "crash_after": 3}
    for bad in ({"fail_rate": 2}, {"hang": 1}, {"crash_after": 1.5}, {"nope": 1},
                {"ttft_ms": -1}, {"itl_ms": "5"}):
        with pytest.raises(ValueError):
            faults.validated(bad)
    with pytest.raises(ValueError):
        faults.validated([1])  # type: ignore[arg-type]


def test_runtime_crash_after_counts_from_now() -> None:
    engine = make_engine(crash_after=0)
    engine.requests_total = 10
    engine.update_faults({"crash_after": 2})
    assert engine.crash_at == 12
    engine.update_faults({"crash_after": 0})
    assert engine.crash_at == 0


def test_fail_rate_is_seeded_and_bounded() -> None:
    always, never = make_engine(fail_rate=1.0), make_engine(fail_rate=0.0)
    assert all(always.should_fail() for _ in range(50))
    assert not any(never.should_fail() for _ in range(50))
    half_a, half_b = make_engine(fail_rate=0.5), make_engine(fail_rate=0.5)
    seq_a = [half_a.should_fail() for _ in range(200)]
    assert seq_a == [half_b.should_fail() for _ in range(200)]  # same seed, same faults
    assert 60 < sum(seq_a) < 140


def test_stats_shape_and_kv_usage() -> None:
    engine = make_engine()
    engine.running_tokens = 50
    stats = engine.stats()
    for key in ("requests_total", "requests_cancelled", "requests_failed", "running",
                "waiting", "by_path", "last_request_headers"):
        assert key in stats
    assert stats["prefix_cache"]["queries"] == 0 and stats["prefix_cache"]["hits"] == 0
    assert stats["kv_cache_usage"] == 0.5
    engine.running_tokens = 500
    assert engine.kv_usage() == 1.0
    assert engine.serves("alias") and engine.serves(None) and not engine.serves("other")
