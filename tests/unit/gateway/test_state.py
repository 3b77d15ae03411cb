"""The state backends on real stores: SQLite files and a real redis-server.

The same rules hold on both: reservations are all-or-none and exact under concurrency,
holds that are never settled expire, usage adds up, stored responses keep their owner,
TTL and caps; SQLite survives a reopen; Redis shared by two clients enforces one budget,
and the fail-open layer serves through an outage and reconciles after it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from nebula_gateway.budget import Counter
from nebula_gateway.state import GatewayState, ResponseLimits, open_state
from nebula_gateway.state.failover import FailoverState
from nebula_gateway.state.redis import RedisState
from nebula_gateway.state.sqlite import SqliteState
from tests.support.redis import RedisServer

LIMITS = ResponseLimits(capacity=3, max_bytes=1 << 20, max_entry_bytes=4096, ttl=60.0)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "redis"])
async def state(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[GatewayState]:
    if request.param == "sqlite":
        backend: GatewayState = SqliteState(tmp_path / "state.db", LIMITS)
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        server.flush()
        backend = RedisState(server.url, LIMITS)
    try:
        yield backend
    finally:
        await backend.close()


def counter(limit: int, name: str = "k" * 64 + ":budget:d1") -> Counter:
    return Counter("budget", name, limit, time.time() + 3600, "day")


async def test_reservation_is_all_or_none(state: GatewayState) -> None:
    now = time.time()
    big, small = counter(1000, "a" * 64 + ":tpm:m1"), counter(100)
    assert await state.reserve("h1", [big, small], 80, now, now + 60) is None
    refusal = await state.reserve("h2", [big, small], 30, now, now + 60)
    assert refusal is not None and refusal.counter == small
    assert (refusal.used, refusal.reserved, refusal.amount) == (0, 80, 30)
    # the refused hold took nothing from the counter that had room
    assert await state.counter(big, now) == (0, 80)
    await state.settle("h1", [big, small], 25, now)
    assert await state.counter(small, now) == (25, 0)
    assert await state.counter(big, now) == (25, 0)
    assert await state.reserve("h3", [big, small], 75, now, now + 60) is None


async def test_holds_never_settled_expire(state: GatewayState) -> None:
    now = time.time()
    c = counter(100)
    assert await state.reserve("dead-gateway", [c], 100, now, now + 5) is None
    assert await state.reserve("next", [c], 1, now + 1, now + 60) is not None
    assert await state.reserve("later", [c], 100, now + 6, now + 60) is None


async def test_concurrent_reservations_never_exceed_the_limit(state: GatewayState) -> None:
    now = time.time()
    c = counter(10_000)

    async def one(i: int) -> bool:
        return await state.reserve(f"h{i}", [c], 137, now, now + 60) is None

    granted = sum(await asyncio.gather(*(one(i) for i in range(200))))
    assert granted == 10_000 // 137
    assert await state.counter(c, now) == (0, granted * 137)


async def test_usage_adds_up(state: GatewayState) -> None:
    await state.add_usage({("team-a", "m1"): (2, 10, 20), ("team-b", "m1"): (1, 1, 1)})
    await state.add_usage({("team-a", "m1"): (1, 5, 5)})
    rows = {(r.key, r.model): (r.requests, r.prompt_tokens, r.completion_tokens)
            for r in await state.usage()}
    assert rows == {("team-a", "m1"): (3, 15, 25), ("team-b", "m1"): (1, 1, 1)}


async def test_stored_responses_keep_owner_ttl_and_caps(state: GatewayState) -> None:
    now = time.time()
    assert await state.put_response("r1", "alice", b'{"id":"r1"}', b"[]", now)
    got = await state.get_response("r1", "alice", now)
    assert got is not None and got.response == b'{"id":"r1"}' and got.input_items() == []
    assert await state.get_response("r1", "bob", now) is None  # another key: no such thing
    assert not await state.delete_response("r1", "bob")
    assert not await state.put_response("big", "alice", b"x" * 5000, b"[]", now)
    assert await state.delete_response("r1", "alice")
    assert await state.get_response("r1", "alice", now) is None


async def test_sqlite_expires_responses_and_keeps_the_newest(tmp_path: Path) -> None:
    state = SqliteState(tmp_path / "s.db", LIMITS)
    now = time.time()
    for i in range(5):
        assert await state.put_response(f"r{i}", "o", b"{}", b"[]", now)
    assert [await state.get_response(f"r{i}", "o", now) is not None for i in range(5)] == [
        False, False, True, True, True]
    assert await state.get_response("r4", "o", now + 61) is None
    await state.close()


async def test_sqlite_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "gw" / "state.db"
    first = open_state("", str(path.parent), LIMITS)
    now = time.time()
    c = counter(100)
    assert await first.reserve("h", [c], 10, now, now + 60) is None
    await first.settle("h", [c], 7, now)
    await first.add_usage({("k", "m"): (1, 3, 4)})
    assert await first.put_response("r", "o", b"{}", b"[]", now)
    await first.close()
    second = open_state("", str(path.parent), LIMITS)
    assert await second.counter(c, now) == (7, 0)
    assert [r.to_dict() for r in await second.usage()] == [
        {"key": "k", "model": "m", "requests": 1, "prompt_tokens": 3, "completion_tokens": 4}]
    assert await second.get_response("r", "o", now) is not None
    await second.close()


async def test_two_clients_on_one_redis_enforce_one_budget(redis_server: RedisServer) -> None:
    redis_server.flush()
    a, b = RedisState(redis_server.url, LIMITS), RedisState(redis_server.url, LIMITS)
    now = time.time()
    c = counter(1000)
    results = await asyncio.gather(*(
        (a if i % 2 else b).reserve(f"h{i}", [c], 100, now, now + 60) for i in range(40)))
    assert sum(r is None for r in results) == 10
    assert await b.put_response("r", "o", b"{}", b"[]", now)
    assert await a.get_response("r", "o", now) is not None  # any gateway sees it
    await a.close()
    await b.close()


async def test_fail_open_serves_through_an_outage_and_reconciles(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    try:
        state = open_state(server.url, None, LIMITS)
        assert isinstance(state, FailoverState)
        now = time.time()
        c = counter(1000)
        assert await state.reserve("before", [c], 100, now, now + 60) is None
        server.kill()
        # the hold taken on Redis settles while it is down: owed, not lost
        await state.settle("before", [c], 40, now)
        assert state.degraded
        assert await state.reserve("during", [c], 100, now, now + 60) is None  # local
        await state.settle("during", [c], 60, now)
        assert await state.put_response("r", "o", b"{}", b"[]", now)
        assert await state.get_response("r", "o", now) is not None
        assert not await state.recover_once()
        server.start()
        assert await state.recover_once()
        assert not state.degraded and not state.pending
        used, _ = await state.counter(c, now)
        assert used == 100  # 40 + 60: everything served was counted once
        await state.close()
    finally:
        server.stop()


async def test_fail_closed_refuses_while_redis_is_down(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    state = open_state(server.url, None, LIMITS, fail_open=False)
    server.kill()
    now = time.time()
    from nebula_gateway.state import StateError
    with pytest.raises(StateError):
        await state.reserve("h", [counter(10)], 1, now, now + 60)
    with pytest.raises(StateError):
        await state.get_response("r", "o", now)
    await state.close()


async def test_redis_that_lost_its_scripts_gets_them_again(redis_server: RedisServer) -> None:
    redis_server.flush()
    state = RedisState(redis_server.url, LIMITS)
    now = time.time()
    c = counter(100)
    assert await state.reserve("h1", [c], 10, now, now + 60) is None
    await state.client.script_flush()  # (as a restarted Redis without them)
    results = await asyncio.gather(*(state.reserve(f"h{i}", [c], 10, now, now + 60)
                                     for i in range(2, 6)))
    assert results == [None] * 4
    await state.settle("h1", [c], 3, now)
    assert await state.counter(c, now) == (3, 40)
    await state.close()


async def test_sqlite_writes_counters_behind_and_a_reader_sees_them(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    writer = SqliteState(path, LIMITS)
    now = time.time()
    c = counter(100)
    await writer.settle("h", [c], 9, now)
    assert await writer.counter(c, now) == (9, 0)  # exact for the next reservation at once
    assert await SqliteState(path, LIMITS).counter(c, now) == (0, 0)  # not yet on disk
    await writer.persist()  # (the gateway's flush loop, every second)
    assert await SqliteState(path, LIMITS).counter(c, now) == (9, 0)
    await writer.close()
