"""The node agent: watches placements, runs this node's replicas, publishes its status."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
from opentelemetry import trace

from nebula_common.keys import Keys
from nebula_common.records import (
    Endpoint,
    GpuInfo,
    NodeStatus,
    PlacementPlan,
    RecordCache,
    decode_or_skip,
)
from nebula_common.store import EtcdStore, LeaseKeeper, PrefixMirror
from nebula_common.tasks import TaskSet, cancel_task

from . import node_metrics as m
from .context import NodeContext, NodeSettings
from .engines import EngineAdapter
from .gpus import query_gpus
from .process import reap_stale_engines
from .reconcile import ReplicaKey, diff_replicas, replicas_for_node
from .supervisor import ReplicaSupervisor

log = logging.getLogger(__name__)

GPU_REFRESH_S = 10.0
RESYNC_S = 5.0


class NodeAgent:
    """Runs this node's share of the placements and keeps its etcd records true.

    Every long-running task lives in :attr:`tasks`: the reconcile and housekeeping
    loops and the replicas' own loops restart when they crash; boot and the lease
    keepalive must not die (``main`` exits non-zero when ``tasks.failed`` fires).
    """

    def __init__(self, settings: NodeSettings, store: EtcdStore, keys: Keys, lease_ttl: int,
                 adapters: dict[str, EngineAdapter], engines_available: list[str],
                 tracer: trace.Tracer, nvidia_smi: str = "nvidia-smi"):
        self.settings = settings
        self.store = store
        self.keys = keys
        self.tasks = TaskSet("node")
        self._loops: list[asyncio.Task[None]] = []
        """Boot and the node's own loops: the first to go at shutdown."""
        self.lease = LeaseKeeper(store, ttl=lease_ttl, registration=self._registration,
                                 tasks=self.tasks)
        self.adapters = adapters
        self.engines_available = engines_available
        self.tracer = tracer
        self.nvidia_smi = nvidia_smi
        self.mirror = PrefixMirror(store, keys.placements, "placements", self.tasks)
        self.plans = RecordCache(PlacementPlan)
        self.replicas: dict[ReplicaKey, ReplicaSupervisor] = {}
        self.stopping: dict[ReplicaKey, asyncio.Task[None]] = {}
        self.stopping_sups: dict[ReplicaKey, ReplicaSupervisor] = {}
        self.gpus: list[GpuInfo] = []
        self.started_at = time.time()
        self.ctx: NodeContext | None = None
        self._wake = asyncio.Event()
        self._shutting_down = False
        self.reaped: list[str] = []
        m.bind_replica_gauge(self.count_in_state)
        m.ETCD_UP.set_function(lambda: 1 if self.store.healthy and self.lease.alive else 0)

    # -- introspection -----------------------------------------------------------------
    def count_in_state(self, state: str) -> int:
        return sum(1 for s in [*self.replicas.values(), *self.stopping_sups.values()]
                   if s.state == state)

    def describe(self) -> list[dict[str, Any]]:
        """Every replica, including those being drained and stopped."""
        sups = {**self.stopping_sups, **self.replicas}
        return [s.describe() for _, s in sorted(sups.items())]

    def ready(self) -> tuple[bool, str]:
        if not self.lease.alive:
            return False, "etcd lease not held"
        if not self.mirror.synced.is_set():
            return False, "placements not read yet"
        return True, "ready"

    def find(self, model_uid: str, replica_id: str) -> ReplicaSupervisor | None:
        return self.replicas.get((model_uid, replica_id))

    # -- start / stop ----------------------------------------------------------------------
    async def start(self) -> None:
        """Reap what a previous run left, then connect to etcd in the background.

        The HTTP server comes up at once (``/healthz`` answers, ``/readyz`` says what
        is missing) even when etcd is not reachable yet, as when every service of a
        compose file starts at the same time.
        """
        self.reaped = await reap_stale_engines(self.settings.state_dir, self.settings.stop_grace)
        # Without boot the node would answer /healthz forever and never run a replica.
        self._loops.append(self.tasks.supervise("boot", self._boot, restart=False))

    async def _boot(self) -> None:
        while True:
            try:
                await self.store.wait_until_ready(deadline_s=10)
                await self.lease.start()
                break
            except Exception as exc:
                log.warning("etcd not reachable yet (%s); retrying", exc)
                await asyncio.sleep(1.0)
        self.lease.on_regrant.append(m.LEASE_REGRANTS.inc)
        session = aiohttp.ClientSession()
        self.ctx = NodeContext(settings=self.settings, keys=self.keys,
                               publisher=self.lease, session=session,
                               adapters=self.adapters, tracer=self.tracer)
        await self._clear_stale_keys()
        self.gpus = await query_gpus(self.nvidia_smi)
        m.record_gpus(self.gpus)
        await self._publish_status()
        self.mirror.subscribe(self._wake.set)
        self.mirror.start()
        self._loops += [self.tasks.supervise("reconcile", self._reconcile_loop),
                        self.tasks.supervise("housekeeping", self._housekeeping_loop)]
        log.info("node %s started (advertise host %s, engines %s, %d GPUs)",
                 self.settings.node_id, self.settings.advertise_host,
                 ",".join(self.engines_available), len(self.gpus))

    async def shutdown(self, timeout: float | None = None) -> None:
        """Drain and stop every replica, deregister, revoke the lease (bounded time)."""
        self._shutting_down = True
        timeout = timeout if timeout is not None else (
            self.settings.drain_timeout + self.settings.stop_grace + 10)
        # The lease stays kept while replicas drain: their "draining" keys must not expire.
        for task in self._loops:
            await cancel_task(task)
        await self.mirror.stop()
        for key in list(self.replicas):
            self._begin_stop(key)
        if self.stopping:
            _done, pending = await asyncio.wait(list(self.stopping.values()), timeout=timeout)
            if pending:
                log.error("%d replicas did not stop in %.0fs", len(pending), timeout)
        if self.ctx is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ctx.publisher.delete(self.keys.node(
                    self.settings.node_id)), 3)
            await self.ctx.session.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.lease.stop(revoke=True), 5)
        await self.tasks.close()  # what is left: stops past their timeout, announcements
        await self.store.close()
        log.info("node %s stopped", self.settings.node_id)

    async def _clear_stale_keys(self) -> None:
        """Delete endpoint and stats keys a previous run of this node left under its old lease.

        Their engines were just reaped, so routers must not wait for the old lease's
        TTL to stop sending to them.
        """
        node_id = self.settings.node_id
        try:
            kvs, _ = await self.store.get_prefix(self.keys.endpoints)
        except Exception as exc:
            log.warning("could not look for stale endpoints: %s", exc)
            return
        for kv in kvs:
            ep = decode_or_skip(Endpoint, kv.key, kv.value)
            if ep is not None and ep.node_id == node_id and kv.lease != self.lease.lease_id:
                log.warning("removing stale endpoint %s left by a previous run of this node",
                            kv.key)
                with contextlib.suppress(Exception):
                    await self.store.delete(kv.key)
                    await self.store.delete(self.keys.endpoint_stats(ep.model_uid, ep.replica_id))

    async def _registration(self, last: Mapping[str, bytes]) -> dict[str, bytes]:
        """What to register under a re-granted lease: what this node runs now, per the plan now.

        ``last`` is the last value of each key the lost lease held. The plans are read
        again first, since the watch lags after a partition: a replica the scheduler
        moved elsewhere meanwhile gets no key back (its new node may hold the same
        replica's key already) and the reconcile pass that this read wakes stops it.
        """
        await self.mirror.resync()
        plans, bad_keys = self.plans.decode(self.mirror.items)
        desired = replicas_for_node(plans.values(), self.settings.node_id)
        protected = {k[len(self.keys.placements):] for k in bad_keys}
        wanted = {self.keys.node(self.settings.node_id): self.node_status().to_json()}
        for key, sup in {**self.stopping_sups, **self.replicas}.items():
            if key in desired or key[0] in protected:
                wanted.update({k: last[k] for k in (sup.endpoint_key, sup.stats_key)
                               if k in last})
            else:
                sup.registered = False  # its keys went with the lost lease and stay gone
        return wanted

    # -- reconcile -------------------------------------------------------------------------
    async def _reconcile_loop(self) -> None:
        """A pass on every placement change and every RESYNC_S; a crash restarts it (backoff)."""
        await self.mirror.synced.wait()
        while True:
            self._wake.clear()
            self.reconcile()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), RESYNC_S)

    def reconcile(self) -> None:
        """One level-triggered pass: make the running replicas match the placements."""
        if self._shutting_down or self.ctx is None:
            return
        with self.tracer.start_as_current_span("node.reconcile") as span:
            plans, bad_keys = self.plans.decode(self.mirror.items)
            desired = replicas_for_node(plans.values(), self.settings.node_id)
            protected = {k[len(self.keys.placements):] for k in bad_keys}
            current = {key: sup.spec for key, sup in self.replicas.items()}
            diff = diff_replicas(desired, current, busy=self.stopping, protected_models=protected)
            span.set_attribute("nebula.node_id", self.settings.node_id)
            span.set_attribute("nebula.replicas_desired", len(desired))
            span.set_attribute("nebula.replicas_start", len(diff.start))
            span.set_attribute("nebula.replicas_stop", len(diff.stop))
            for key in diff.stop:
                log.info("assignment %s/%s removed or changed; draining", *key)
                self._begin_stop(key)
            for spec in diff.version_only:
                self.tasks.spawn(self.replicas[spec.key].update_plan_version(spec),
                                 f"plan-version:{spec.name}")
            for spec in diff.start:
                if spec.engine not in self.adapters:
                    log.error("unknown engine %r for %s/%s", spec.engine, *spec.key)
                    continue
                log.info("starting replica %s/%s (engine %s, port %d)", spec.model_uid,
                         spec.replica_id, spec.engine, spec.port)
                sup = ReplicaSupervisor(spec, self.ctx, self.tasks)
                self.replicas[spec.key] = sup
                sup.start()

    def _begin_stop(self, key: ReplicaKey) -> None:
        sup = self.replicas.pop(key, None)
        if sup is None or key in self.stopping:
            return

        async def stop() -> None:
            try:
                await sup.drain_and_stop(self.settings.drain_timeout)
            except Exception:
                log.exception("stopping %s/%s failed", *key)
                with contextlib.suppress(Exception):
                    await sup.engine.stop(self.settings.stop_grace)
            finally:
                self.stopping.pop(key, None)
                self.stopping_sups.pop(key, None)
                self._wake.set()  # a changed replica can start now

        self.stopping_sups[key] = sup
        self.stopping[key] = self.tasks.spawn(stop(), f"stop:{key[0]}/{key[1]}")

    # -- status, retries, GPUs -------------------------------------------------------------
    def node_status(self) -> NodeStatus:
        return NodeStatus(node_id=self.settings.node_id,
                          advertise_host=self.settings.advertise_host, gpus=self.gpus,
                          engines=list(self.engines_available), started_at=self.started_at,
                          port_range=list(self.settings.port_range))

    async def _publish_status(self) -> None:
        # Claimed: the key is this node's by name, even while a previous run's lease holds it.
        await self.lease.put(self.keys.node(self.settings.node_id), self.node_status().to_json(),
                             claim=True)

    async def _housekeeping_loop(self) -> None:
        """Refresh the GPU inventory; a crash restarts it (backoff).

        Failed etcd writes are retried by the lease keeper itself, on every keepalive.
        """
        while True:
            await asyncio.sleep(GPU_REFRESH_S)
            gpus = await query_gpus(self.nvidia_smi)
            m.record_gpus(gpus)
            if gpus != self.gpus:
                self.gpus = gpus
                await self._publish_status()
