"""The admission gate on asyncio: slots, wake on release, timeout, cancel, cap, room."""

from __future__ import annotations

import asyncio

import pytest

from nebula_common.records import EndpointState
from nebula_router.admission import Admission, QueueConfig, RoomEstimator, Shed
from nebula_router.policy import Candidate
from nebula_router.table import ModelEntry


def entry(replicas: int = 1) -> ModelEntry:
    return ModelEntry("m", "M", "sim", [Candidate("m", f"r{i}") for i in range(replicas)])


def admission(e: ModelEntry, cap: int = 1, max_queue: int = 10,
              timeouts: tuple[float, float, float] = (5.0, 5.0, 5.0)) -> Admission:
    return Admission(cap, QueueConfig(max_queue, timeouts, 0.0),
                     lambda uid: e if uid == "m" else None)


async def until(cond, bound: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + bound
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def test_release_wakes_waiters_in_priority_order() -> None:
    async def go() -> None:
        adm = admission(entry(), cap=1)
        gate = await adm.acquire("m", "t", None)
        order: list[str] = []

        async def one(name: str, prio: str) -> None:
            g = await adm.acquire("m", name, prio)
            order.append(name)
            await asyncio.sleep(0)
            adm.release(g)

        tasks = [asyncio.create_task(one("b", "batch")),
                 asyncio.create_task(one("d", "default")),
                 asyncio.create_task(one("i", "interactive"))]
        await until(lambda: len(gate.queue) == 3)
        assert gate.admitted == 1
        adm.release(gate)
        await asyncio.gather(*tasks)
        assert order == ["i", "d", "b"]
        assert gate.admitted == 0 and len(gate.queue) == 0

    asyncio.run(go())


def test_queue_full_is_429_and_timeout_is_503() -> None:
    async def go() -> None:
        adm = admission(entry(), cap=1, max_queue=1, timeouts=(0.05, 0.05, 0.05))
        gate = await adm.acquire("m", "t", None)
        waiter = asyncio.create_task(adm.acquire("m", "t", None))
        await until(lambda: len(gate.queue) == 1)
        with pytest.raises(Shed) as full:
            await adm.acquire("m", "t", None)
        assert (full.value.status, full.value.code) == (429, "queue_full")
        with pytest.raises(Shed) as late:
            await waiter
        assert (late.value.status, late.value.code) == (503, "queue_timeout")
        assert late.value.retry_after >= 1
        assert len(gate.queue) == 0 and gate.admitted == 1

    asyncio.run(go())


def test_pushed_out_waiter_gets_429() -> None:
    async def go() -> None:
        adm = admission(entry(), cap=1, max_queue=2)
        gate = await adm.acquire("m", "heavy", None)
        heavy = [asyncio.create_task(adm.acquire("m", "heavy", None)) for _ in range(2)]
        await until(lambda: len(gate.queue) == 2)
        light = asyncio.create_task(adm.acquire("m", "light", None))
        with pytest.raises(Shed) as out:
            await heavy[1]
        assert (out.value.status, out.value.code) == (429, "queue_full")
        adm.release(gate)
        adm.release(await heavy[0])
        adm.release(await light)
        assert gate.admitted == 0 and len(gate.queue) == 0

    asyncio.run(go())


def test_cancelled_waiter_leaves_the_queue_at_once() -> None:
    async def go() -> None:
        adm = admission(entry(), cap=1)
        gate = await adm.acquire("m", "t", None)
        waiter = asyncio.create_task(adm.acquire("m", "t", None))
        await until(lambda: len(gate.queue) == 1)
        waiter.cancel()
        await until(lambda: len(gate.queue) == 0)
        with pytest.raises(asyncio.CancelledError):
            await waiter
        adm.release(gate)
        assert gate.admitted == 0

    asyncio.run(go())


def test_no_ready_replica_holds_until_one_is_ready() -> None:
    async def go() -> None:
        e = entry()
        e.placed = True  # the scheduler has a plan for it: a replica is coming
        e.candidates[0].status = EndpointState.FAILED
        adm = admission(e, cap=2)
        waiter = asyncio.create_task(adm.acquire("m", "t", None))
        await until(lambda: "m" in adm.gates and len(adm.gates["m"].queue) == 1)
        e.candidates[0].status = EndpointState.READY
        adm.tick()
        gate = await waiter
        assert gate.admitted == 1

    asyncio.run(go())


def test_no_ready_replica_and_no_plan_goes_straight_on_to_the_proxys_503() -> None:
    async def go() -> None:
        e = entry()  # endpoints registered by hand: nothing will bring a replica
        e.candidates[0].status = EndpointState.DRAINING
        adm = admission(e, cap=2)
        gate = await asyncio.wait_for(adm.acquire("m", "t", None), 1.0)
        assert gate.admitted == 1 and len(gate.queue) == 0
        adm.release(gate)
        assert gate.admitted == 0

    asyncio.run(go())


def test_room_counts_other_routers_from_engine_reports() -> None:
    room = RoomEstimator()
    c = Candidate("m", "r0", running=5.0, stats_at=1.0)
    c.in_flight = 2  # two of the engine's five are this router's
    assert room.free([c], 8, admitted=2) == 8 - 3 - 2
    # Our requests finish before the next report: the stale report does not block us.
    c.in_flight = 0
    assert room.free([c], 8, admitted=0) == 5
    c.running, c.stats_at = 0.0, 2.0
    assert room.free([c], 8, admitted=0) == 8
    gone = Candidate("m", "r1", status=EndpointState.DRAINING)
    assert room.free([c, gone], 8, admitted=1) == 7


def test_tick_forgets_idle_gates_of_undeployed_models() -> None:
    async def go() -> None:
        e = entry()
        known = {"m": e}
        adm = Admission(1, QueueConfig(10, (5.0, 5.0, 5.0), 0.0), known.get)
        gate = await adm.acquire("m", "t", None)
        del known["m"]
        adm.tick()
        assert "m" in adm.gates  # a request still runs: kept
        adm.release(gate)
        adm.tick()
        assert "m" not in adm.gates

    asyncio.run(go())
