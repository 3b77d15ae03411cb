"""Watches that cannot go silently stale, on real etcd: a frozen member, a leaderless member.

A frozen etcd (SIGSTOP: its connections stay open, nothing answers) and a member cut
off from its cluster's leader both used to leave a mirror "healthy" on old data
forever. Progress requests make the first visible, require-leader the second.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator

import pytest

from devtools.cluster import Cluster, etcd_binary, free_port, http_get, wait_for
from nebula_common.store import EtcdConfig, EtcdStore, PrefixMirror, WatchStream
from tests.integration.test_store import store_for, until

PROGRESS_S = 0.5
STALL_S = 2.0


@contextlib.contextmanager
def frozen(*pids: int) -> Iterator[None]:
    """SIGSTOP the processes, SIGCONT them on the way out whatever happens."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def mirror_of(store: EtcdStore, prefix: str) -> PrefixMirror:
    return PrefixMirror(store, prefix, progress_interval=PROGRESS_S, stall_after=STALL_S)


async def test_frozen_etcd_makes_the_mirror_unhealthy_and_it_recovers(cluster: Cluster) -> None:
    store, writer = store_for(cluster), store_for(cluster)
    mirror = mirror_of(store, "/live/")
    await writer.put("/live/a", b"1")
    mirror.start()
    await asyncio.wait_for(mirror.synced.wait(), 10)
    # Quiet prefix, etcd fine: progress answers keep the mirror fresh and healthy.
    await asyncio.sleep(STALL_S + PROGRESS_S)
    assert mirror.healthy and mirror.silent_for() < STALL_S
    with frozen(cluster.procs["etcd"].pid):
        await until(lambda: not mirror.healthy, timeout=STALL_S + 3)
        assert mirror.silent_for() >= STALL_S
        assert mirror.items == {"/live/a": b"1"}, "the last known content is kept"
    await until(lambda: mirror.healthy, timeout=20)
    await writer.put("/live/b", b"2")
    await until(lambda: mirror.items == {"/live/a": b"1", "/live/b": b"2"}, timeout=10)
    assert mirror.silent_for() < STALL_S
    await mirror.stop()
    await store.close()
    await writer.close()


class FreezesAfterWatch(EtcdStore):
    """A real store that SIGSTOPs etcd once its next watch is created: etcd took the watch
    and will answer nothing on it, as a member did right after an election."""

    def __init__(self, config: EtcdConfig, pid: int) -> None:
        super().__init__(config)
        self.pid = pid
        self.frozen = False

    async def watch_prefix(self, prefix: str, start_revision: int) -> WatchStream:
        watch = await super().watch_prefix(prefix, start_revision)
        if not self.frozen:
            os.kill(self.pid, signal.SIGSTOP)
            self.frozen = True
        return watch


async def test_a_new_watch_etcd_never_answers_is_given_up_before_the_stall_bound(
        cluster: Cluster) -> None:
    """A watch etcd never answered once is held to a few progress intervals, not to the
    whole stall bound (it used to wait out the bound: a router 7 to 9 s stale)."""
    stall = 8.0
    pid = cluster.procs["etcd"].pid
    store = FreezesAfterWatch(EtcdConfig(endpoints=(cluster.etcd_endpoint,), timeout=2), pid)
    mirror = PrefixMirror(store, "/new/", progress_interval=PROGRESS_S, stall_after=stall)
    mirror.start()
    try:
        await until(lambda: store.frozen, timeout=10)
        await until(lambda: mirror.healthy, timeout=1)  # it took the watch as good
        loop = asyncio.get_running_loop()
        frozen_at = loop.time()
        await until(lambda: not mirror.healthy, timeout=stall / 2)
        assert loop.time() - frozen_at < stall / 2
        assert "no answer from etcd" in mirror.last_error, mirror.last_error
    finally:
        os.kill(pid, signal.SIGCONT)
    await until(lambda: mirror.healthy, timeout=20)
    await mirror.stop()
    await store.close()


def start_etcd_cluster(cluster: Cluster, size: int = 3) -> list[tuple[str, int]]:
    """``size`` etcd members electing fast; returns (name, client port) of each."""
    members = [(f"m{i}", free_port(), free_port()) for i in range(size)]
    initial = ",".join(f"{name}=http://127.0.0.1:{peer}" for name, _, peer in members)
    for name, client, peer in members:
        cluster.spawn(f"etcd-{name}", [
            etcd_binary(), "--name", name, "--data-dir", str(cluster.run_dir / f"etcd-{name}"),
            "--listen-client-urls", f"http://127.0.0.1:{client}",
            "--advertise-client-urls", f"http://127.0.0.1:{client}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", initial, "--initial-cluster-state", "new",
            "--heartbeat-interval", "50", "--election-timeout", "500",
            "--listen-metrics-urls", ""],
            env={"ETCD_UNSUPPORTED_ARCH": os.environ.get("ETCD_UNSUPPORTED_ARCH", "")})
    for _, client, _ in members:
        wait_for(lambda c=client: http_get(f"http://127.0.0.1:{c}/health")[0] == 200, 60,
                 "etcd member health")
    return [(name, client) for name, client, _ in members]


@pytest.mark.timeout(120)
async def test_member_without_leader_makes_the_mirror_unhealthy(cluster: Cluster) -> None:
    members = start_etcd_cluster(cluster)
    (_, lonely), others = members[0], members[1:]
    # Only the member that is about to lose its leader: nowhere else to go.
    store = EtcdStore(EtcdConfig(endpoints=(f"127.0.0.1:{lonely}",), timeout=2))
    mirror = mirror_of(store, "/quorum/")
    await store.put("/quorum/a", b"1")
    mirror.start()
    await asyncio.wait_for(mirror.synced.wait(), 10)
    # The lonely member keeps running and would answer progress requests from its own
    # state: only require-leader tells the mirror that this state is no longer current.
    with frozen(*(cluster.procs[f"etcd-{name}"].pid for name, _ in others)):
        await until(lambda: not mirror.healthy, timeout=15)
        assert "leader" in mirror.last_error or "cancel" in mirror.last_error, mirror.last_error
        await asyncio.sleep(STALL_S)  # re-watching is refused while there is no leader
        assert not mirror.healthy
    await until(lambda: mirror.healthy, timeout=30)
    await store.put("/quorum/b", b"2")
    await until(lambda: len(mirror.items) == 2, timeout=10)
    await mirror.stop()
    await store.close()
