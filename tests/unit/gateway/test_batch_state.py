"""The Batch API's store on both backends (real SQLite, a real redis-server): records
bound to owners, leases that exclude a second holder until they expire, line results
kept once, and what survives a reopen of the SQLite file."""

from __future__ import annotations

import asyncio
from pathlib import Path

from nebula_gateway.state import GatewayState
from nebula_gateway.state.sqlite import SqliteState
from tests.unit.gateway.test_state import LIMITS, redis_server, state  # noqa: F401


async def test_records_keep_owner_and_order(state: GatewayState) -> None:  # noqa: F811
    await state.put_record("file", "f1", "alice", b'{"id":"f1"}', 10.0)
    await state.put_record("file", "f2", "bob", b'{"id":"f2"}', 11.0)
    await state.put_record("file", "f3", "alice", b'{"id":"f3"}', 12.0)
    assert await state.get_record("file", "f1") == ("alice", b'{"id":"f1"}')
    assert await state.get_record("file", "nope") is None
    assert await state.get_record("batch", "f1") is None  # kinds are apart
    assert await state.list_records("file", "alice") == [b'{"id":"f3"}', b'{"id":"f1"}']
    assert len(await state.list_records("file", None)) == 3
    await state.put_record("file", "f1", "alice", b'{"id":"f1","v":2}', 99.0)  # replaced
    assert await state.list_records("file", "alice") == [b'{"id":"f3"}',
                                                         b'{"id":"f1","v":2}']
    assert await state.delete_record("file", "f1")
    assert not await state.delete_record("file", "f1")
    assert await state.list_records("file", "alice") == [b'{"id":"f3"}']


async def test_a_lease_has_one_holder_until_it_expires(state: GatewayState) -> None:  # noqa: F811
    import time
    now = time.time()
    assert await state.claim("batch:b1", "gw-a", now, 0.5)
    assert await state.claim("batch:b1", "gw-a", now, 0.5)  # renewed by its holder
    assert not await state.claim("batch:b1", "gw-b", now, 0.5)
    await state.release("batch:b1", "gw-b")  # not b's to give back
    assert not await state.claim("batch:b1", "gw-b", time.time(), 0.5)
    await asyncio.sleep(0.7)
    assert await state.claim("batch:b1", "gw-b", time.time(), 5)  # a's expired
    await state.release("batch:b1", "gw-b")
    assert await state.claim("batch:b1", "gw-a", time.time(), 5)


async def test_line_results_are_kept_once(state: GatewayState) -> None:  # noqa: F811
    assert await state.put_line_result("b1", 0, True, b"zero")
    assert await state.put_line_result("b1", 2, False, b"two")
    assert not await state.put_line_result("b1", 0, False, b"again")
    assert await state.put_line_result("b2", 0, True, b"other batch")
    assert await state.line_results("b1") == {0: (True, b"zero"), 2: (False, b"two")}
    assert await state.line_counts("b1") == (1, 1)
    await state.drop_line_results("b1")
    assert await state.line_results("b1") == {}
    assert await state.line_counts("b1") == (0, 0)
    assert await state.line_counts("b2") == (1, 0)


async def test_sqlite_keeps_batches_across_a_reopen(tmp_path: Path) -> None:
    first = SqliteState(tmp_path / "state.db", LIMITS)
    await first.put_record("batch", "b1", "alice", b"{}", 1.0)
    await first.put_line_result("b1", 3, True, b"three")
    await first.close()
    second = SqliteState(tmp_path / "state.db", LIMITS)
    try:
        assert await second.get_record("batch", "b1") == ("alice", b"{}")
        assert await second.line_results("b1") == {3: (True, b"three")}
    finally:
        await second.close()


async def test_batches_on_a_failover_store_use_the_shared_one_only() -> None:
    from devtools.cluster import free_port
    from nebula_gateway.state import StateError
    from nebula_gateway.state.failover import FailoverState
    from nebula_gateway.state.redis import RedisState

    local = SqliteState(":memory:", LIMITS)
    gone = FailoverState(RedisState(f"redis://127.0.0.1:{free_port()}/0", LIMITS,
                                    timeout=0.5), local)
    try:
        # no local fallback: a batch split between two stores would run lines twice
        for call in (gone.put_record("batch", "b", "o", b"{}", 1.0),
                     gone.claim("batch:b", "gw", 1.0, 5.0),
                     gone.put_line_result("b", 0, True, b"x")):
            try:
                await call
            except StateError:
                continue
            raise AssertionError("a batch call succeeded without the shared store")
        assert await local.list_records("batch", None) == []
    finally:
        await gone.close()
