"""The etcd store against a real etcd: CAS, leases that survive loss, watches that resume."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable

import aetcd.exceptions as etcd_errors
import grpc
import pytest

from devtools.cluster import Cluster, free_port
from nebula_common.store import EtcdConfig, EtcdStore, LeaseKeeper, PrefixMirror, StoreUnavailable


async def until(predicate: Callable[[], bool | Awaitable[bool]], timeout: float = 10) -> None:
    """Poll ``predicate`` (sync or async) until true; fail the test after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout}s")


def store_for(cluster: Cluster, *extra: str) -> EtcdStore:
    return EtcdStore(EtcdConfig(endpoints=(*extra, cluster.etcd_endpoint), timeout=2))


async def test_cas_and_failover_to_a_live_endpoint(cluster: Cluster) -> None:
    dead = f"127.0.0.1:{free_port()}"
    store = store_for(cluster, dead)  # the first endpoint refuses connections
    await store.wait_until_ready(10)
    assert await store.put_if_revision("/t/k", b"1", 0)
    assert not await store.put_if_revision("/t/k", b"2", 0), "create-only must fail on existing"
    kv = await store.get("/t/k")
    assert kv is not None and kv.value == b"1"
    assert await store.put_if_revision("/t/k", b"2", kv.mod_revision)
    assert not await store.put_if_revision("/t/k", b"3", kv.mod_revision), "stale revision"
    assert (await store.get("/t/k")).value == b"2"
    await store.close()


async def test_a_try_on_a_silent_endpoint_is_cut_at_per_try_and_the_next_one_answers(
        cluster: Cluster) -> None:
    """A member that takes the connection and never answers (partitioned mid-way, or
    without a leader) holds a call for the client's whole timeout; ``per_try`` cuts it
    there and the call goes on to the next endpoint."""
    with socket.create_server(("127.0.0.1", 0), backlog=8) as silent:  # never accepts
        host, port = silent.getsockname()[:2]
        store = EtcdStore(EtcdConfig(endpoints=(f"{host}:{port}", cluster.etcd_endpoint),
                                     timeout=30))
        started = time.monotonic()
        status = await store.call(lambda c: c.status(), per_try=0.5)
        took = time.monotonic() - started
        assert status is not None and store.endpoint == cluster.etcd_endpoint
        assert took < 5, f"{took:.1f}s: the silent endpoint held the call"
        await store.close()


async def test_unreachable_etcd_is_a_clear_error() -> None:
    store = EtcdStore(EtcdConfig(endpoints=(f"127.0.0.1:{free_port()}",), timeout=1))
    with pytest.raises(StoreUnavailable, match="etcd unreachable"):
        await store.wait_until_ready(1.5)
    await store.close()


async def test_lost_lease_is_regranted_and_keys_put_again(cluster: Cluster) -> None:
    store = store_for(cluster)
    keeper = LeaseKeeper(store, ttl=2)
    await keeper.start()
    await keeper.put("/t/leased", b"v")
    first = keeper.lease_id
    other = store_for(cluster)
    await other.revoke(first)  # what etcd does when the lease expires during a partition
    assert await other.get("/t/leased") is None
    await until(lambda: keeper.regrants == 1)
    assert keeper.lease_id != first
    kv = await other.get("/t/leased")
    assert kv is not None and kv.lease == keeper.lease_id
    await keeper.stop()
    assert await other.get("/t/leased") is None, "revoking on stop removes the keys at once"
    await store.close()
    await other.close()


async def test_a_lease_outlives_an_etcd_outage_longer_than_its_ttl(cluster: Cluster) -> None:
    """etcd restores its leases on restart with their whole TTL: a keeper that dials again
    at once keeps its lease. gRPC's default reconnect backoff (1 s x 1.6 per failure,
    shared by every channel of the process) had it refused for up to 5 s after etcd was
    back, past a 3 s TTL: nodes re-registered and the scheduler moved their replicas.
    The watches share the channel, as in the scheduler (its seven mirrors and its lease):
    their failing re-watches are what drove the shared backoff up."""
    store = EtcdStore(EtcdConfig(endpoints=(cluster.etcd_endpoint,)))  # the roles' timeout
    keeper = LeaseKeeper(store, ttl=3)
    await keeper.start()
    mirrors = [PrefixMirror(store, f"/outage/w{i}/", f"w{i}") for i in range(7)]
    for mirror in mirrors:
        mirror.start()
    await asyncio.wait_for(asyncio.gather(*(m.synced.wait() for m in mirrors)), 10)
    await keeper.put("/outage/node", b"n1")
    lease = keeper.lease_id
    cluster.procs["etcd"].stop()
    await until(lambda: not keeper.alive, timeout=10)
    await asyncio.sleep(20)  # the outage itself: long enough for gRPC's backoff to grow
    loop = asyncio.get_running_loop()
    await asyncio.to_thread(cluster.start_etcd)  # the keeper goes on meanwhile
    back = loop.time()
    other = store_for(cluster)
    await until(lambda: keeper.alive, timeout=3 * keeper.ttl)
    # A refresh every second at most (the keepalive's interval), each dialling again after
    # at most gRPC's capped backoff: 2 s, plus slack. Without the cap: 0.3 to 5 s.
    took = loop.time() - back
    assert took < 2.5, f"the lease was refreshed {took:.1f}s after etcd answered again"
    held_until = loop.time() + 2 * keeper.ttl  # a lease etcd had dropped would show by now
    while loop.time() < held_until:
        kv = await other.get("/outage/node")
        assert kv is not None and kv.lease == lease, "the key lost its lease after the outage"
        await asyncio.sleep(0.2)
    assert keeper.regrants == 0 and keeper.lease_id == lease
    await until(lambda: all(m.healthy for m in mirrors), timeout=10)
    for mirror in mirrors:
        await mirror.stop()
    await keeper.stop()
    await store.close()
    await other.close()


async def test_mirror_resumes_after_etcd_restart(cluster: Cluster) -> None:
    store = store_for(cluster)
    mirror = PrefixMirror(store, "/m/")
    await store.put("/m/a", b"1")
    mirror.start()
    await asyncio.wait_for(mirror.synced.wait(), 10)
    assert mirror.items == {"/m/a": b"1"}
    cluster.procs["etcd"].stop()
    await until(lambda: not mirror.healthy)
    assert mirror.items == {"/m/a": b"1"}, "last known content is kept while etcd is down"
    cluster.start_etcd()
    writer = store_for(cluster)
    await writer.put("/m/b", b"2")
    await writer.delete("/m/a")
    await until(lambda: mirror.items == {"/m/b": b"2"}, timeout=20)
    assert mirror.healthy
    await mirror.stop()
    await store.close()
    await writer.close()


async def test_mirror_relists_after_compaction(cluster: Cluster) -> None:
    store = store_for(cluster)
    mirror = PrefixMirror(store, "/c/")
    mirror.start()
    await asyncio.wait_for(mirror.synced.wait(), 10)
    # Stop the mirror, write past its revision and compact, then resume: the watch
    # from the old revision is refused as compacted and the mirror must re-list.
    await mirror.stop()
    for i in range(5):
        await store.put(f"/c/{i}", b"x")
    _, revision = await store.get_prefix("/c/")
    await store.call(lambda c: c.compact(revision))
    relists = mirror.relists
    mirror._task = None
    mirror.start()
    await until(lambda: len(mirror.items) == 5)
    assert mirror.relists > relists
    await mirror.stop()
    await store.close()


async def test_rotations_pass_over_an_endpoint_that_did_not_answer(cluster: Cluster) -> None:
    """A member that refused the connection is held; one that answered "etcdserver: ..." is
    not, and a rotation away from it skips the held one (round-robin went back to it)."""
    dead_a, dead_b = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    store = EtcdStore(EtcdConfig(endpoints=(dead_a, cluster.etcd_endpoint, dead_b), timeout=2))
    await store.put("/hold/a", b"1")  # dead_a refuses: held; the live member answers
    assert store.endpoint == cluster.etcd_endpoint
    election = etcd_errors.ConnectionFailedError("etcdserver: no leader")
    live = store._client
    assert live is not None
    await store._rotate(live, election)  # what a call refused during an election does
    assert store.endpoint == dead_b, "not held: dead_b never failed"
    await store.put("/hold/b", b"2")  # dead_b refuses: held; back to the live member
    assert store.endpoint == cluster.etcd_endpoint
    live = store._client
    assert live is not None
    await store._rotate(live, election)
    # Both others held: the one held longest ago, dead_a; the live member was never held.
    assert store.endpoint == dead_a
    await store.put("/hold/c", b"3")
    assert store.endpoint == cluster.etcd_endpoint
    assert (await store.get("/hold/c")) is not None
    await store.close()


async def test_a_rotation_cut_short_still_closes_the_old_channel(cluster: Cluster) -> None:
    """A re-grant cancels a role's hung write, which may be rotating away from a failed
    endpoint at that moment: the old channel is closed all the same, not left open."""
    store = store_for(cluster)
    await store.put("/close/a", b"1")
    client = store._client
    assert client is not None
    channel = client.channel
    rotation = asyncio.create_task(store._rotate(client, TimeoutError()))
    await asyncio.sleep(0)  # it is closing the channel now
    rotation.cancel()
    with pytest.raises(asyncio.CancelledError):
        await rotation
    await until(lambda: channel.get_state() == grpc.ChannelConnectivity.SHUTDOWN, timeout=5)
    await store.put("/close/b", b"2")  # on a new channel
    await store.close()
