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
        # the hold taken on Redis settles while it is down: owed, not lost (settlements
        # go behind the requests: the next batch, here the flush loop's persist, finds out)
        await state.settle("before", [c], 40, now)
        await state.persist()
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


def rpm(limit: int) -> Counter:
    return Counter("rpm", "r" * 64 + ":rpm:m1", limit, time.time() + 60)


async def test_requests_per_minute_count_once_and_never_hold(state: GatewayState) -> None:
    now = time.time()
    per_minute, tokens = rpm(3), counter(100)
    # a request that the token budget refuses does not count against the rpm
    assert await state.reserve("big", [per_minute, tokens], 101, now, now + 60) is not None
    granted = [await state.reserve(f"h{i}", [per_minute, tokens], 10, now, now + 60)
               for i in range(4)]
    assert granted[:3] == [None] * 3
    refusal = granted[3]
    assert refusal is not None and refusal.counter == per_minute
    assert (refusal.used, refusal.reserved) == (3, 0)
    assert "rate limit of 3 requests per minute" in refusal.message()
    assert await state.counter(tokens, now) == (0, 30)  # the token holds, as ever


async def test_settlements_go_behind_in_one_call_and_close_sends_them(
        redis_server: RedisServer) -> None:
    redis_server.flush()
    state = RedisState(redis_server.url, LIMITS, settle_delay=30.0, leases=False)
    now = time.time()
    c = counter(10_000)
    for i in range(50):
        assert await state.reserve(f"h{i}", [c], 100, now, now + 60) is None
    await state.client.config_resetstat()
    for i in range(50):
        await state.settle(f"h{i}", [c], 7, now)  # queued: no round trip yet
    stats = await state.client.info("commandstats")
    assert "cmdstat_evalsha" not in stats
    await state.close()  # a stopping gateway sends what it queued
    reader = RedisState(redis_server.url, LIMITS)
    assert await reader.counter(c, now) == (350, 0)
    stats = await reader.client.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 2  # the 50 settlements in one, and the read
    await reader.close()


async def test_the_request_path_link_selects_the_database(redis_server: RedisServer) -> None:
    redis_server.flush()
    url = redis_server.url.rsplit("/", 1)[0] + "/3"
    state = RedisState(url, LIMITS)
    now = time.time()
    c = counter(100)
    assert await state.reserve("h", [c], 10, now, now + 60) is None
    await state.settle("h", [c], 4, now)
    await state.close()
    import redis
    db3 = redis.Redis.from_url(url)
    assert [int(db3.get(k) or 0) for k in db3.scan_iter("nebula:gw:used:*")] == [4]
    assert list(redis.Redis.from_url(redis_server.url).scan_iter("nebula:gw:*")) == []


async def test_stored_responses_keep_their_session(state: GatewayState) -> None:
    now = time.time()
    assert await state.put_response("r1", "o", b"{}", b"[]", now, "chain_abc")
    assert await state.put_response("r2", "o", b"{}", b"[]", now)
    first, second = [await state.get_response(r, "o", now) for r in ("r1", "r2")]
    assert first is not None and first.session == "chain_abc"
    assert second is not None and second.session == ""


async def test_sqlite_file_from_before_sessions_opens(tmp_path: Path) -> None:
    import sqlite3
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE responses (id TEXT PRIMARY KEY, owner TEXT NOT NULL, expires "
               "REAL NOT NULL, size INTEGER NOT NULL, response BLOB NOT NULL, items BLOB "
               "NOT NULL)")
    db.execute("INSERT INTO responses VALUES ('old', 'o', ?, 300, x'7b7d', x'5b5d')",
               (time.time() + 60,))
    db.commit()
    db.close()
    state = SqliteState(path, LIMITS)
    now = time.time()
    old = await state.get_response("old", "o", now)
    assert old is not None and old.session == ""
    assert await state.put_response("new", "o", b"{}", b"[]", now, "s")
    new = await state.get_response("new", "o", now)
    assert new is not None and new.session == "s"
    await state.close()


def test_the_request_path_link_works_on_uvloop(redis_server: RedisServer) -> None:
    """The gateway serves on uvloop, whose transports are not asyncio's classes."""
    import uvloop
    redis_server.flush()

    async def run() -> tuple[int, int]:
        state = RedisState(redis_server.url, LIMITS)
        now = time.time()
        c = counter(100)
        try:
            assert await state.reserve("h", [c], 10, now, now + 60) is None
            await state.settle("h", [c], 6, now)
            return await state.counter(c, now)
        finally:
            await state.close()

    assert uvloop.run(run()) == (6, 0)


async def test_a_lease_admits_here_and_keeps_the_bound(redis_server: RedisServer) -> None:
    redis_server.flush()
    state = RedisState(redis_server.url, LIMITS)
    now = time.time()
    c = counter(100_000)
    assert await state.reserve("first", [c], 100, now, now + 60) is None  # and a lease
    await state.client.config_resetstat()
    for i in range(32):  # the lease covers 32 requests like the first: no round trip
        assert await state.reserve(f"h{i}", [c], 100, now, now + 60) is None
    assert "cmdstat_evalsha" not in await state.client.info("commandstats")
    for i in range(10):
        await state.settle(f"h{i}", [c], 7, now)
    # handed back: the finished requests' cost is counted, the running ones hold alone
    assert await state.counter(c, now) == (70, 100 + 22 * 100)
    for i in range(10, 32):
        await state.settle(f"h{i}", [c], 7, now)
    await state.settle("first", [c], 7, now)
    assert await state.counter(c, now) == (33 * 7, 0)
    await state.close()


async def test_leases_of_two_gateways_never_pass_the_limit(redis_server: RedisServer) -> None:
    redis_server.flush()
    a, b = RedisState(redis_server.url, LIMITS), RedisState(redis_server.url, LIMITS)
    now = time.time()
    c = counter(10_000)
    granted = 0
    for _ in range(10):  # waves of requests, each settling what it served
        results = await asyncio.gather(*(
            (a if i % 2 else b).reserve(f"w{granted}-{i}", [c], 137, now, now + 60)
            for i in range(40)))
        ids = [f"w{granted}-{i}" for i, r in enumerate(results) if r is None]
        granted += len(ids)
        for hold_id in ids:
            await (a if int(hold_id.rsplit("-", 1)[1]) % 2 else b).settle(hold_id, [c], 50, now)
        used, held = await a.counter(c, now)
        await b.persist()
        assert used + held <= 10_000
    b.hand_back_leases()
    await b.persist()
    used, held = await a.counter(c, now)
    assert (used, held) == (granted * 50, 0)
    assert granted > 10_000 // 137  # settled below their holds: more fit than 73
    await a.close()
    await b.close()
