"""Fenced plan writes on a real etcd: a leader that stalled past its lease writes nothing.

In-process, so the stall is exact: the old leader's keepalive is stopped (its
belief that it leads stays true, as in a process that was paused), etcd expires
its lease, a follower wins, and the old leader then runs a reconcile pass that
wants to write. tests/e2e/test_scheduler_cluster.py does the same with real
processes and SIGSTOP.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from devtools.cluster import Cluster
from nebula_common.keys import Keys
from nebula_common.records import ModelSpec, PlacementPlan
from nebula_common.store import EtcdStore, LeaseKeeper
from nebula_common.tasks import TaskSet, cancel_task
from nebula_scheduler import metrics
from nebula_scheduler.election import Election
from nebula_scheduler.reconciler import Reconciler
from tests.integration.test_store import store_for, until

KEYS = Keys("/fence")


@dataclass
class Scheduler:
    """What a scheduler process runs, minus the loops: lease, election, mirrors."""

    store: EtcdStore
    keeper: LeaseKeeper
    election: Election
    reconciler: Reconciler
    tasks: TaskSet

    @classmethod
    async def start(cls, cluster: Cluster, identity: str) -> Scheduler:
        store, tasks = store_for(cluster), TaskSet(identity)
        keeper = LeaseKeeper(store, ttl=2, tasks=tasks)
        await keeper.start()
        election = Election(store, KEYS, keeper, identity=identity, tasks=tasks)
        reconciler = Reconciler(store, KEYS, grace=30, is_leader=lambda: election.leader,
                                tasks=tasks, fence=election.fence)
        reconciler.start()
        await until(lambda: reconciler.synced, timeout=10)
        return cls(store, keeper, election, reconciler, tasks)

    async def close(self) -> None:
        await self.reconciler.stop()
        await self.tasks.close()
        await self.store.close()


async def stored_plan(store: EtcdStore, uid: str) -> PlacementPlan:
    kv = await store.get(KEYS.placement(uid))
    assert kv is not None
    return PlacementPlan.from_json(kv.value)


async def scale(store: EtcdStore, replicas: int) -> None:
    spec = ModelSpec(model_uid="m", model_name="m", engine="sim", replicas=replicas,
                     node_ids=["n1"])  # pinned: placed before the node registers
    await store.put(KEYS.model("m"), spec.to_json())


async def test_stalled_leader_cannot_write_after_a_follower_won(cluster: Cluster) -> None:
    old = await Scheduler.start(cluster, "old-leader")
    new = await Scheduler.start(cluster, "new-leader")
    operator = store_for(cluster)
    try:
        assert await old.election.campaign()
        await scale(operator, 1)
        await until(lambda: old.reconciler.view().specs.keys() == {"m"}, timeout=10)
        assert (await old.reconciler.reconcile_once()) is not None
        first = await stored_plan(operator, "m")
        assert first.writer == "old-leader" and len(first.assignments) == 1

        # The old leader stalls: nothing refreshes its lease, it still believes it leads.
        await cancel_task(old.keeper._task)

        async def key_expired() -> bool:
            return await operator.get(KEYS.election) is None
        await until(key_expired, timeout=10)
        assert old.election.leader, "the stalled leader's belief is stale, as after SIGSTOP"
        await until(new.election.campaign, timeout=10)

        await scale(operator, 2)
        await until(lambda: new.reconciler.view().specs["m"].replicas == 2, timeout=10)
        assert (await new.reconciler.reconcile_once()) is not None
        second = await stored_plan(operator, "m")
        assert second.writer == "new-leader" and len(second.assignments) == 2

        # Another change; the old leader runs a pass first, on its stale belief.
        await scale(operator, 3)
        await until(lambda: old.reconciler.view().specs["m"].replicas == 3, timeout=10)
        fenced = metrics.PLAN_WRITES.labels("fenced")._value.get()
        assert (await old.reconciler.reconcile_once()) is None
        assert old.reconciler.fenced == 1
        assert metrics.PLAN_WRITES.labels("fenced")._value.get() == fenced + 1
        assert await stored_plan(operator, "m") == second, "the old leader wrote nothing"

        await until(lambda: new.reconciler.view().specs["m"].replicas == 3, timeout=10)
        assert (await new.reconciler.reconcile_once()) is not None
        third = await stored_plan(operator, "m")
        assert third.writer == "new-leader" and len(third.assignments) == 3
    finally:
        await operator.close()
        await asyncio.gather(old.close(), new.close())


async def test_fenced_delete_of_an_orphan_plan_is_refused_too(cluster: Cluster) -> None:
    old = await Scheduler.start(cluster, "old")
    operator = store_for(cluster)
    try:
        assert await old.election.campaign()
        await scale(operator, 1)
        await until(lambda: "m" in old.reconciler.view().specs, timeout=10)
        await old.reconciler.reconcile_once()
        await cancel_task(old.keeper._task)
        await operator.revoke(old.keeper.lease_id)  # the lease is gone; the belief is not
        await operator.delete(KEYS.model("m"))  # undeploy: the pass would delete the plan
        await until(lambda: "m" not in old.reconciler.view().specs, timeout=10)
        assert (await old.reconciler.reconcile_once()) is None
        assert await operator.get(KEYS.placement("m")) is not None
    finally:
        await operator.close()
        await old.close()
