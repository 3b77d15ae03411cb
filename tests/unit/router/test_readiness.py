"""The router's /readyz verdict from its mirrors' state (no etcd: the mirrors are not started)."""

from __future__ import annotations

from nebula_common.keys import Keys
from nebula_common.store import EtcdConfig, EtcdStore
from nebula_router.app import readiness
from nebula_router.table import EndpointTable

NOW = 1000.0


def synced_table(silent: dict[str, float]) -> EndpointTable:
    """A table whose mirrors synced and last heard from etcd ``silent[name]`` seconds ago."""
    table = EndpointTable(EtcdStore(EtcdConfig()), Keys())
    for mirror in table.mirrors:
        mirror.synced.set()
        mirror.healthy = True
        mirror.last_progress = NOW - silent.get(mirror.name, 0.5)
    table.rebuilds = 1  # as after the first build from those mirrors
    return table


def test_ready_while_every_watch_was_answered_within_the_bound() -> None:
    assert readiness(synced_table({}), stale_after=5, now=NOW) == (True, "ready")


def test_not_ready_with_the_reason_when_one_watch_is_silent_past_the_bound() -> None:
    ok, detail = readiness(synced_table({"stats": 7.5, "endpoints": 6.0}), stale_after=5, now=NOW)
    assert not ok
    assert "stale" in detail and "stats watch for 7.5s" in detail and "bound 5s" in detail


def test_never_synced_says_so_rather_than_stale() -> None:
    table = EndpointTable(EtcdStore(EtcdConfig()), Keys())
    ok, detail = readiness(table, stale_after=5, now=NOW)
    assert not ok and "never synced" in detail


async def test_a_rebuild_waiting_for_the_next_loop_turn_keeps_a_loaded_table_ready() -> None:
    # The nodes rewrite /stats every few seconds, so a rebuild is often queued; a /readyz
    # answered in that loop turn used to say "never synced".
    table = synced_table({})
    table.rebuild()
    assert not table.synced  # the request path still treats an unknown model as "not yet"
    assert readiness(table, stale_after=5, now=NOW) == (True, "ready")


async def test_a_stale_table_is_not_ready_while_a_rebuild_waits() -> None:
    table = synced_table({"nodes": 9.0})
    table.rebuild()
    ok, detail = readiness(table, stale_after=5, now=NOW)
    assert not ok and "nodes watch for 9.0s" in detail
