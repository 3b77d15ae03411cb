"""The sim's KV budget: requests wait while the running ones hold the KV cache (FIFO)."""

from __future__ import annotations

import asyncio

from nebula_node.sim.admission import Admission
from nebula_node.sim.engine import SimEngine
from nebula_node.sim.faults import Faults


async def test_budget_queues_in_fifo_order_and_a_large_request_runs_alone() -> None:
    adm = Admission(0, budget=100)
    await adm.acquire(60)
    order: list[str] = []

    async def waiter(name: str, cost: int) -> None:
        await adm.acquire(cost)
        order.append(name)

    big = asyncio.create_task(waiter("big", 500))   # over the whole budget
    small = asyncio.create_task(waiter("small", 10))  # would fit, but waits its turn
    await asyncio.sleep(0)
    assert (adm.running, adm.waiting, adm.used) == (1, 2, 60)
    adm.release(60)
    await asyncio.sleep(0)
    assert order == ["big"] and adm.used == 500  # alone, it runs however large
    adm.release(500)
    await asyncio.gather(big, small)
    assert order == ["big", "small"] and (adm.running, adm.used) == (1, 10)


async def test_engine_kv_admission_is_off_by_default_and_switchable() -> None:
    engine = SimEngine(model="m", served_names=["m"], max_model_len=1000, output_tokens=4,
                       faults=Faults(), prefix_cache_blocks=16, prefix_block_chars=64,
                       kv_cache_tokens=100, embedding_dim=8, seed=1)
    assert engine.admission.budget == 0
    engine.update_faults({"kv_admission": True})
    assert engine.admission.budget == 100
    engine.update_faults({"kv_admission": False})
    assert engine.admission.budget == 0
