"""LeaseKeeper on a real etcd: re-registration that fails half-way, deletes racing it, owners.

etcd misbehaves on purpose here through :class:`FaultyStore`, a real store whose next
calls after a lease grant can be made to fail or to wait: the window in which a
re-grant puts its keys back is otherwise too short to hit from outside.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from devtools.cluster import Cluster
from nebula_common.store import EtcdConfig, EtcdStore, LeaseKeeper, StoreUnavailable
from tests.integration.test_store import store_for, until

T = TypeVar("T")


class FaultyStore(EtcdStore):
    """A real store; after each lease grant, call number ``fail_nth`` fails, or the first waits.

    A failing call raises StoreUnavailable, as a call does when etcd went away; so does
    every lease refresh while ``fail_refresh`` is set.
    """

    def __init__(self, config: EtcdConfig) -> None:
        super().__init__(config)
        self.fail_nth = 0
        self.hold: asyncio.Event | None = None
        self.holding = asyncio.Event()
        self.hold_grant: asyncio.Event | None = None
        self.grants = 0
        self._since_grant = 0
        self.fail_refresh = False
        self.refresh_failures = 0

    async def refresh(self, lease_id: int, per_try: float | None = None, attempts: int = 0
                      ) -> int:
        if self.fail_refresh:
            self.refresh_failures += 1
            raise StoreUnavailable("injected: etcd unreachable for the refresh")
        return await super().refresh(lease_id, per_try, attempts)

    async def grant(self, ttl: int) -> int:
        if self.hold_grant is not None and self.grants:
            hold, self.hold_grant = self.hold_grant, None
            self.holding.set()
            await hold.wait()
        lease = await super().grant(ttl)
        self.grants += 1
        self._since_grant = 0
        return lease

    async def call(self, op: Callable[[Any], Awaitable[T]], attempts: int = 0,
                   per_try: float | None = None) -> T:
        if self.grants > 1:  # a re-grant (the first grant is the keeper's start)
            self._since_grant += 1
            if self._since_grant == self.fail_nth:
                self.fail_nth = 0
                raise StoreUnavailable("injected: etcd went away in the middle of a re-grant")
            if self._since_grant == 1 and self.hold is not None:
                hold, self.hold = self.hold, None
                self.holding.set()
                await hold.wait()
        return await super().call(op, attempts, per_try)


class StuckWrites(EtcdStore):
    """A real store whose owned writes wait, once ``release`` is set, until it fires: a
    write sent to a member whose leader was just killed hangs for the client's timeout on
    each endpoint in turn."""

    def __init__(self, config: EtcdConfig) -> None:
        super().__init__(config)
        self.release: asyncio.Event | None = None
        self.waiting = 0
        self.leases: list[int] = []
        """The lease of every owned put tried, in order."""
        self.report_lost = False
        """The next refresh answers as if etcd had lost the lease (it has not)."""

    async def _stall(self) -> None:
        if self.release is not None:
            self.waiting += 1
            await self.release.wait()

    async def put_owned(self, key: str, value: bytes, lease: int, previous: int = 0) -> bool:
        self.leases.append(lease)
        await self._stall()
        return await super().put_owned(key, value, lease, previous)

    async def delete_owned(self, key: str, lease: int, previous: int = 0) -> None:
        await self._stall()
        await super().delete_owned(key, lease, previous)

    async def refresh(self, lease_id: int, per_try: float | None = None, attempts: int = 0
                      ) -> int:
        if self.report_lost:
            self.report_lost = False
            return 0
        return await super().refresh(lease_id, per_try, attempts)


def faulty(cluster: Cluster) -> FaultyStore:
    return FaultyStore(EtcdConfig(endpoints=(cluster.etcd_endpoint,), timeout=2))


async def lose_lease(other: EtcdStore, keeper: LeaseKeeper) -> int:
    """What etcd does when a lease expires during a partition: every key under it goes."""
    lost = keeper.lease_id
    await other.revoke(lost)
    return lost


async def values(store: EtcdStore, prefix: str) -> dict[str, tuple[bytes, int]]:
    kvs, _ = await store.get_prefix(prefix)
    return {kv.key: (kv.value, kv.lease) for kv in kvs}


async def test_regrant_that_fails_half_way_puts_every_key_back(cluster: Cluster) -> None:
    store, other = faulty(cluster), store_for(cluster)
    keeper = LeaseKeeper(store, ttl=2)
    await keeper.start()
    keys = {f"/half/{name}": name.encode() for name in ("endpoint", "node", "stats")}
    for key, value in keys.items():
        await keeper.put(key, value)
    store.fail_nth = 2  # the grant's next call lands, the one after fails
    await lose_lease(other, keeper)
    await until(lambda: store.grants == 2 and store.fail_nth == 0, timeout=10)
    # Half of the keys are back; the rest must follow without anyone doing anything.
    await until(lambda: keeper.alive, timeout=10)

    async def all_back() -> bool:
        found = await values(other, "/half/")
        return found == {k: (v, keeper.lease_id) for k, v in keys.items()}
    await until(all_back, timeout=10)
    await keeper.stop()
    await store.close()
    await other.close()


async def test_delete_racing_a_regrant_is_not_put_back(cluster: Cluster) -> None:
    store, other = faulty(cluster), store_for(cluster)
    keeper = LeaseKeeper(store, ttl=2)
    await keeper.start()
    await keeper.put("/race/kept", b"k")
    await keeper.put("/race/removed", b"r")
    store.hold = asyncio.Event()  # the re-grant's first put waits until released
    release = store.hold
    await lose_lease(other, keeper)
    await asyncio.wait_for(store.holding.wait(), 10)
    # The replica goes away while the re-grant is putting keys back.
    deleting = asyncio.create_task(keeper.delete("/race/removed"))
    await asyncio.wait([deleting], timeout=0.5)  # bounded: whether it can finish now or not
    release.set()
    await asyncio.wait_for(deleting, 10)
    await until(lambda: keeper.alive and keeper.regrants == 1, timeout=10)
    assert await values(other, "/race/") == {"/race/kept": (b"k", keeper.lease_id)}
    await keeper.stop()
    await store.close()
    await other.close()


async def test_a_write_waiting_out_the_regrant_is_not_undone_by_the_registration(
        cluster: Cluster) -> None:
    """A write that queued behind the re-grant lands under the new lease; the registration
    that follows must not put the lost lease's older value back, nor a deleted key."""
    store, other = faulty(cluster), store_for(cluster)
    keeper = LeaseKeeper(store, ttl=2)
    await keeper.start()
    await keeper.put("/gap/stats", b"old")
    await keeper.put("/gap/gone", b"g")
    store.hold_grant = release = asyncio.Event()
    await lose_lease(other, keeper)
    await asyncio.wait_for(store.holding.wait(), 10)  # the re-grant holds the write lock
    newer = asyncio.create_task(keeper.put("/gap/stats", b"new"))
    removed = asyncio.create_task(keeper.delete("/gap/gone"))
    await asyncio.wait([newer, removed], timeout=0.5)  # bounded: they queue on the lock
    release.set()
    await asyncio.wait_for(asyncio.gather(newer, removed), 10)
    await until(lambda: keeper.alive and keeper.regrants == 1, timeout=10)
    assert await values(other, "/gap/") == {"/gap/stats": (b"new", keeper.lease_id)}
    await keeper.stop()
    await store.close()
    await other.close()


async def test_keys_another_lease_holds_are_neither_overwritten_nor_deleted(
        cluster: Cluster) -> None:
    store, other = store_for(cluster), store_for(cluster)
    keeper = LeaseKeeper(store, ttl=2)
    await keeper.start()
    theirs = await other.grant(10)
    await other.put("/own/r0", b"new owner", lease=theirs)
    assert not await keeper.put("/own/r0", b"stale copy")
    await keeper.delete("/own/r0")
    assert await values(other, "/own/") == {"/own/r0": (b"new owner", theirs)}
    # Refused writes are retried: once the other owner lets go, ours lands.
    assert "/own/r0" not in keeper.pending, "a delete supersedes the refused put"
    assert not await keeper.put("/own/r0", b"ours now")
    await other.revoke(theirs)
    await keeper.flush()
    assert await values(other, "/own/") == {"/own/r0": (b"ours now", keeper.lease_id)}
    # A key named after this process can be claimed from a previous run's lease.
    previous = await other.grant(10)
    await other.put("/own/node", b"previous run", lease=previous)
    assert await keeper.put("/own/node", b"this run", claim=True)
    assert (await values(other, "/own/"))["/own/node"] == (b"this run", keeper.lease_id)
    await keeper.stop()
    await store.close()
    await other.close()


async def test_registration_comes_from_the_current_state(cluster: Cluster) -> None:
    store, other = store_for(cluster), store_for(cluster)
    running = {"/reg/r0", "/reg/r1"}

    async def current(last: Any) -> dict[str, bytes]:
        return {k: v for k, v in last.items() if k in running}

    keeper = LeaseKeeper(store, ttl=2, registration=current)
    await keeper.start()
    for key in sorted(running):
        await keeper.put(key, b"ready")
    running.discard("/reg/r1")  # moved away while the lease was being lost
    await lose_lease(other, keeper)
    await until(lambda: keeper.regrants == 1 and keeper.alive, timeout=10)
    assert await values(other, "/reg/") == {"/reg/r0": (b"ready", keeper.lease_id)}
    await keeper.stop()
    await store.close()
    await other.close()


async def test_keys_still_under_the_lost_lease_move_at_once(cluster: Cluster) -> None:
    """etcd can report a lease gone that still holds keys (a restart promotes the leases it
    restored): re-registration moves them to the new lease instead of waiting for the old
    one to expire and take them away, which left the router without endpoints for a tick."""
    store, other = store_for(cluster), store_for(cluster)
    keeper = LeaseKeeper(store, ttl=2)
    await keeper.start()
    await keeper.put("/moved/endpoint", b"e")
    old = keeper.lease_id
    await keeper._regrant()  # as if a refresh had said TTL 0 while the lease lived on
    assert keeper.lease_id != old
    assert await values(other, "/moved/") == {"/moved/endpoint": (b"e", keeper.lease_id)}
    await other.revoke(old)  # the old lease ending takes nothing of ours with it
    assert await values(other, "/moved/") == {"/moved/endpoint": (b"e", keeper.lease_id)}
    assert await keeper.delete("/moved/endpoint")
    assert await values(other, "/moved/") == {}
    await keeper.stop()
    await store.close()
    await other.close()


async def test_a_write_stuck_past_the_ttl_does_not_let_the_lease_expire(
        cluster: Cluster) -> None:
    """The refreshes go on while a write waits: they used to queue behind it (the
    keepalive retried pending writes under the write lock), so after an etcd leader kill
    a node's keys expired with its engines serving, and routers dropped them."""
    store = StuckWrites(EtcdConfig(endpoints=(cluster.etcd_endpoint,), timeout=2))
    other = store_for(cluster)
    keeper = LeaseKeeper(store, ttl=2)
    await keeper.start()
    assert await keeper.put("/stuck/endpoint", b"ready")
    lease = keeper.lease_id
    store.release = release = asyncio.Event()
    writing = asyncio.create_task(keeper.put("/stuck/stats", b"1"))
    await until(lambda: store.waiting == 1, timeout=5)
    loop = asyncio.get_running_loop()
    held_until = loop.time() + 3 * keeper.ttl  # the write is held for three TTLs
    while loop.time() < held_until:
        assert await values(other, "/stuck/") == {"/stuck/endpoint": (b"ready", lease)}
        await asyncio.sleep(0.2)
    assert keeper.regrants == 0 and keeper.alive and keeper.lease_id == lease
    release.set()
    store.release = None
    assert await asyncio.wait_for(writing, 10)
    assert await values(other, "/stuck/") == {"/stuck/endpoint": (b"ready", lease),
                                              "/stuck/stats": (b"1", lease)}
    await keeper.stop()
    await store.close()
    await other.close()


async def test_a_registration_completing_after_a_failed_refresh_is_not_alive(
        cluster: Cluster) -> None:
    """The keys went back under the new lease, but etcd stopped answering the refreshes
    meanwhile: the lease is in doubt, so ``alive`` (a node's /readyz, ``nebula_node_etcd_up``)
    stays False until a refresh succeeds again; it used to read True until the next tick.
    The new lease outlives the test's window (TTL 4 s): no second re-grant hides the path."""
    store, other = faulty(cluster), store_for(cluster)
    keeper = LeaseKeeper(store, ttl=4)
    await keeper.start()
    await keeper.put("/doubt/node", b"n")
    store.hold = release = asyncio.Event()  # the registration's first put waits
    await lose_lease(other, keeper)
    await asyncio.wait_for(store.holding.wait(), 10)
    store.fail_refresh = True
    await until(lambda: store.refresh_failures >= 1, timeout=5)
    release.set()
    await until(lambda: keeper.regrants == 1 and keeper._lost is None, timeout=5)
    failed = store.refresh_failures
    loop = asyncio.get_running_loop()
    deadline = loop.time() + keeper.ttl
    while store.refresh_failures <= failed:  # until the next refresh fails too
        assert not keeper.alive, "alive while every refresh fails"
        assert loop.time() < deadline, "no refresh was tried"
        await asyncio.sleep(0.02)
    assert not keeper.alive
    store.fail_refresh = False
    await until(lambda: keeper.alive, timeout=5)
    assert keeper.regrants == 1, "the lease expired: the refresh path was not what passed"
    assert await values(other, "/doubt/") == {"/doubt/node": (b"n", keeper.lease_id)}
    await keeper.stop()
    await store.close()
    await other.close()


async def test_a_lost_lease_does_not_wait_for_a_hung_retry_of_a_write(
        cluster: Cluster) -> None:
    """A write that did not land is retried beside the keepalive; when that retry hangs (a
    member that lost its leader holds it for the client's timeout on every endpoint) and
    the lease is lost meanwhile, the re-grant cancels the retry instead of queueing behind
    it, and the registration puts the retried value under the new lease."""
    store, other = StuckWrites(EtcdConfig(endpoints=(cluster.etcd_endpoint,), timeout=2)), \
        store_for(cluster)
    keeper = LeaseKeeper(store, ttl=2)
    await keeper.start()
    assert await keeper.put("/hung/endpoint", b"ready")
    theirs = await other.grant(30)
    await other.put("/hung/stats", b"theirs", lease=theirs)
    assert not await keeper.put("/hung/stats", b"ours"), "refused: another lease holds it"
    store.release = asyncio.Event()  # never set: the next retry hangs for good
    await other.revoke(theirs)
    await until(lambda: store.waiting == 1, timeout=5)
    store.release = None  # every later write goes through
    await lose_lease(other, keeper)
    await until(lambda: keeper.regrants == 1 and keeper.alive, timeout=3 * keeper.ttl)
    assert await values(other, "/hung/") == {"/hung/endpoint": (b"ready", keeper.lease_id),
                                             "/hung/stats": (b"ours", keeper.lease_id)}
    await keeper.stop()
    await store.close()
    await other.close()


async def test_a_lost_lease_does_not_wait_for_a_role_write_hung_on_the_lock(
        cluster: Cluster) -> None:
    """A role's own put holds the write lock while it hangs (a member without a leader),
    and another waits behind it; the lease is lost meanwhile. The re-grant cuts the hung
    put short (it answers False: not landed now), the queued one is deferred without
    trying etcd, and the registration puts both values under the new lease."""
    store, other = StuckWrites(EtcdConfig(endpoints=(cluster.etcd_endpoint,), timeout=2)), \
        store_for(cluster)
    keeper = LeaseKeeper(store, ttl=2)
    await keeper.start()
    assert await keeper.put("/held/endpoint", b"ready")
    old = keeper.lease_id
    store.release = hold = asyncio.Event()  # set at the end only: the next write hangs
    hung = asyncio.create_task(keeper.put("/held/stats", b"1"))
    await until(lambda: store.waiting == 1, timeout=5)
    queued = asyncio.create_task(keeper.put("/held/stats2", b"2"))
    await asyncio.sleep(0)  # it waits on the lock
    store.release = None  # every later write goes through
    await lose_lease(other, keeper)
    assert await asyncio.wait_for(hung, 3 * keeper.ttl) is False
    assert await asyncio.wait_for(queued, 3 * keeper.ttl) is False
    await until(lambda: keeper.regrants == 1 and keeper.alive, timeout=3 * keeper.ttl)
    # The endpoint and the hung write only: the queued one never went to the lost lease.
    assert store.leases.count(old) == 2, store.leases
    hold.set()
    lease = keeper.lease_id
    assert await values(other, "/held/") == {"/held/endpoint": (b"ready", lease),
                                             "/held/stats": (b"1", lease),
                                             "/held/stats2": (b"2", lease)}
    assert not keeper.pending
    await keeper.stop()
    await store.close()
    await other.close()


async def test_a_cancelled_caller_cancels_its_write_and_is_not_swallowed(
        cluster: Cluster) -> None:
    """Only a re-grant's cut turns into False: a role task cancelled in a hung put (its
    shutdown) is cancelled, and the write it left is still retried."""
    store, other = StuckWrites(EtcdConfig(endpoints=(cluster.etcd_endpoint,), timeout=2)), \
        store_for(cluster)
    keeper = LeaseKeeper(store, ttl=2)
    await keeper.start()
    store.release = hold = asyncio.Event()
    hung = asyncio.create_task(keeper.put("/gone/stats", b"1"))
    await until(lambda: store.waiting == 1, timeout=5)
    store.release = None  # a retry that a keepalive tick queued meanwhile goes through
    hung.cancel()
    with pytest.raises(asyncio.CancelledError):
        await hung
    hold.set()  # nothing waits on it now: what lands below is the kept write, retried
    await until(lambda: not keeper.pending, timeout=3 * keeper.ttl)
    assert await values(other, "/gone/") == {"/gone/stats": (b"1", keeper.lease_id)}
    assert keeper.regrants == 0
    await keeper.stop()
    await store.close()
    await other.close()


async def test_a_delete_cut_short_by_a_regrant_still_removes_the_key_from_the_old_lease(
        cluster: Cluster) -> None:
    """etcd can report a lease gone that lives on (across a restart). A delete that was
    hung when the re-grant came is carried over and run by the registration, under the old
    lease as ``previous``: the key does not linger until that lease expires."""
    store, other = StuckWrites(EtcdConfig(endpoints=(cluster.etcd_endpoint,), timeout=2)), \
        store_for(cluster)
    keeper = LeaseKeeper(store, ttl=6)  # the old lease outlives the test's checks
    await keeper.start()
    assert await keeper.put("/kd/kept", b"k")
    assert await keeper.put("/kd/gone", b"g")
    old = keeper.lease_id
    store.release = hold = asyncio.Event()
    deleting = asyncio.create_task(keeper.delete("/kd/gone"))
    await until(lambda: store.waiting == 1, timeout=5)
    store.release = None
    store.report_lost = True  # the next refresh: "lease gone"; it still holds both keys
    assert await asyncio.wait_for(deleting, 3 * keeper.ttl) is False
    await until(lambda: keeper.regrants == 1 and keeper._lost is None, timeout=3 * keeper.ttl)
    hold.set()
    assert await other.refresh(old) > 0, "the old lease is alive: it is what could keep the key"
    assert await values(other, "/kd/") == {"/kd/kept": (b"k", keeper.lease_id)}
    await keeper.stop()
    await other.revoke(old)
    await store.close()
    await other.close()
