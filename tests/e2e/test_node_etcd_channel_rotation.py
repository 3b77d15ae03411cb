"""What the node relies on from nebula_common.store when etcd's channel is replaced.

A failed call rotates the endpoint and closes the gRPC channel, and gRPC then
cancels every RPC in flight on it. Found while testing the node across an etcd
restart: that CancelledError killed the lease keepalive and the placements
watch of a process nobody had cancelled.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from devtools.cluster import Cluster
from nebula_common.store import EtcdConfig, EtcdStore, PrefixMirror, StoreUnavailable


def store_of(cluster: Cluster) -> EtcdStore:
    return EtcdStore(EtcdConfig(endpoints=(cluster.etcd_endpoint,), timeout=5))


async def until(pred, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def test_rpc_cancelled_by_channel_close_is_a_connection_error(cluster: Cluster):
    async def scenario() -> None:
        store = store_of(cluster)
        started = asyncio.Event()

        async def hanging_rpc(client) -> None:
            await client.connect()
            async def no_requests():
                started.set()
                await asyncio.sleep(3600)
                yield  # pragma: no cover

            # A keepalive stream with no request never answers: in flight until closed.
            async for _ in client.leasestub.LeaseKeepAlive(no_requests(), timeout=30):
                return

        call = asyncio.create_task(store.call(hanging_rpc))
        await asyncio.wait_for(started.wait(), 10)
        await store._rotate(store._client, TimeoutError())  # as a failing call elsewhere does
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(call, 10)
        # A real cancellation of the caller, with its RPC in flight, is still a cancellation.
        started.clear()
        call = asyncio.create_task(store.call(hanging_rpc))
        await asyncio.wait_for(started.wait(), 10)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await store.close()

    asyncio.run(scenario())


def test_mirror_survives_channel_close(cluster: Cluster):
    async def scenario() -> None:
        store = store_of(cluster)
        mirror = PrefixMirror(store, "/rot/")
        mirror.start()
        await asyncio.wait_for(mirror.synced.wait(), 10)
        await store.put("/rot/a", b"1")
        await until(lambda: "/rot/a" in mirror.items)
        await store._rotate(store._client, TimeoutError())
        await store.put("/rot/b", b"2")
        await until(lambda: "/rot/b" in mirror.items)
        assert mirror._task is not None and not mirror._task.done()
        await mirror.stop()
        await store.close()

    asyncio.run(scenario())
