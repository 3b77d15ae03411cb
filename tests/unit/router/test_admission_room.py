"""Each replica's room: the flag, else the engine's declared concurrency, and what the
engine reports waiting (pure: RoomEstimator, capacity)."""

from __future__ import annotations

import asyncio

from nebula_common.records import EndpointState
from nebula_router.admission import Admission, QueueConfig, RoomEstimator
from nebula_router.admission.room import UNBOUNDED, capacity
from nebula_router.admission.signal import queue_signal
from nebula_router.policy import Candidate
from nebula_router.table import ModelEntry


def replica(rid: str, declared: int = 0, **kw: float) -> Candidate:
    return Candidate("m", rid, max_concurrency=declared, **kw)


def test_declared_concurrency_is_each_replicas_capacity_without_a_flag() -> None:
    room = RoomEstimator()
    replicas = [replica("r0", 8), replica("r1", 4)]
    assert [capacity(c, 0) for c in replicas] == [8, 4]
    assert room.free(replicas, 0, admitted=0) == 12
    assert room.free(replicas, 0, admitted=12) == 0
    assert room.free(replicas, 0, admitted=13) == -1


def test_the_flag_overrides_what_engines_declare() -> None:
    room = RoomEstimator()
    replicas = [replica("r0", 8), replica("r1", 256), replica("r2")]
    assert [capacity(c, 2) for c in replicas] == [2, 2, 2]
    assert room.free(replicas, 2, admitted=1) == 5


def test_a_replica_that_declares_nothing_has_no_limit() -> None:
    room = RoomEstimator()
    assert room.free([replica("r0", 8), replica("r1")], 0, admitted=100) == UNBOUNDED
    # ...unless it is not ready: then only the declared one counts.
    undeclared = replica("r1")
    undeclared.status = EndpointState.DRAINING
    assert room.free([replica("r0", 8), undeclared], 0, admitted=3) == 5


def test_an_engine_reporting_waiting_is_full_at_what_it_runs() -> None:
    room = RoomEstimator()
    # Declared 8, but the engine queues at 6 (a KV budget): no room when the report comes...
    c = replica("r0", 8, running=6.0, waiting=1.0, stats_at=1.0)
    c.in_flight = 7  # all seven are this router's
    assert room.free([c], 0, admitted=7) == -1
    # ...and as this router's own requests on it finish, their slots come back (the report
    # lags): 6 is what it runs, 4 are ours now.
    c.in_flight = 4
    assert room.free([c], 0, admitted=4) == 2
    # A replica that declared nothing but queues is full too.
    u = replica("r1", running=3.0, waiting=2.0, stats_at=1.0)
    assert room.free([u], 0, admitted=0) == 0
    # Other routers' requests fill it: 6 running + 1 waiting, none ours.
    other = replica("r2", 8, running=6.0, waiting=1.0, stats_at=1.0)
    assert room.free([other], 0, admitted=0) == 0
    # The flag does not lift the engine's own limit either.
    assert room.free([replica("r3", 8, running=6.0, waiting=1.0, stats_at=1.0)], 16, 0) == 0


def test_the_queue_signal_reports_the_declared_capacity() -> None:
    e = ModelEntry("m", "M", "sim", [replica("r0", 8), replica("r1", 8)])
    known = {"m": e}
    adm = Admission(0, QueueConfig(10, (5.0, 5.0, 5.0), 0.0), known.get)

    async def go() -> None:
        gate = await adm.acquire("m", "t", None)
        assert queue_signal(adm, "rt", 0.0, 1.0).models["m"].max_running_per_replica == 8
        del known["m"]  # scaled to zero: the last capacity seen is kept
        assert adm.per_replica(gate) == 8
        adm.release(gate)

    asyncio.run(go())
    flagged = Admission(2, QueueConfig(10, (5.0, 5.0, 5.0), 0.0), {"m": e}.get)
    asyncio.run(flagged.acquire("m", "t", None))
    assert queue_signal(flagged, "rt", 0.0, 1.0).models["m"].max_running_per_replica == 2
    assert flagged.describe()["per_replica_from"] == "flag"
    assert adm.describe()["per_replica_from"] == "engine"
