"""The reconcile loop: keep every PlacementPlan true to its ModelSpec and the live nodes.

Level-triggered: any change under the watched prefixes (and a periodic tick,
which is what notices a grace period running out) wakes the loop, which looks
at the whole picture, runs :func:`placement.place`, and writes only the plans
that changed, each with compare-and-swap on its mod_revision. A lost CAS means
someone else wrote the plan: re-read it, place again, retry (bounded).
Every write (and orphan delete) is fenced: its transaction also requires the
election key to hold this scheduler's identity under the lease it won with, so
a leader that stalled past its lease writes nothing once a follower took over
(the pass stops at :class:`~nebula_common.store.FenceLost`). Each plan records
its ``writer``.
Running it twice in a row writes nothing the second time. A model whose stored
plan is not a valid record is left alone (see :mod:`.view`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry.context import Context

from nebula_common.errors import error_text
from nebula_common.keys import Keys
from nebula_common.records import PlacementPlan, decode_or_skip, ready_replicas
from nebula_common.store import EtcdStore, Fence, FenceLost, PrefixMirror
from nebula_common.tasks import TaskSet

from . import metrics
from .autoscaler import Autoscaler
from .placement import PlacementResult, place
from .view import ClusterView, ViewDecoder

log = logging.getLogger(__name__)
tracer = trace.get_tracer("nebula.scheduler")

CAS_ATTEMPTS = 4


@dataclass
class WriteOutcome:
    """What one reconcile pass wrote."""

    result: PlacementResult
    written: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    conflicts: int = 0


def unfenced_writer() -> str:
    """``writer`` of a plan written outside the election (the seed's one-shot placement)."""
    return f"{socket.gethostname()}:{os.getpid()} (unfenced)"


async def _cas_plan(store: EtcdStore, key: str, plan: PlacementPlan,
                    expected: bytes | None, fence: Fence | None) -> tuple[bool, bytes | None]:
    """Write ``plan`` only if the stored value is still ``expected`` (and ``fence`` holds).

    Returns (written, current stored value when not written); raises FenceLost.
    """
    current = await store.get(key)
    current_raw = current.value if current else None
    if current_raw != expected:
        return False, current_raw
    revision = current.mod_revision if current else 0
    if await store.put_if_revision(key, plan.to_json(), revision, fence=fence):
        return True, None
    latest = await store.get(key)
    return False, latest.value if latest else None


async def reconcile_view(
    store: EtcdStore,
    keys: Keys,
    view: ClusterView,
    *,
    now: float,
    last_seen: dict[str, float],
    grace: float,
    delete_orphans: bool = True,
    only: set[str] | None = None,
    fence: Fence | None = None,
    writer: str = "",
) -> WriteOutcome:
    """Place and write. ``only`` limits writes to some model uids (the seed form).

    With ``fence`` every write and delete requires it (raises FenceLost when it no
    longer holds) and plans record the fence's identity as their ``writer``;
    without one, ``writer`` (default :func:`unfenced_writer`).

    A pass that changes nothing records no span (the loop ticks every second); one
    that does is a ``scheduler.reconcile`` trace with a ``scheduler.place`` child per
    placement attempt, a ``scheduler.placement_decision`` span per decision and a
    ``scheduler.write_plan`` span per compare-and-swap write.
    """
    started_ns = time.time_ns()
    writer = fence.value.decode() if fence is not None else (writer or unfenced_writer())
    conflicts = 0
    written: list[str] = []
    root: trace.Span | None = None
    try:
        for attempt in range(CAS_ATTEMPTS):
            place_ns = time.time_ns()
            # A model whose plan cannot be read is not placed again: writing a fresh plan
            # over it could undo what a newer scheduler wrote.
            specs = {u: s for u, s in view.specs.items() if u not in view.invalid_plans}
            result = place(specs, view.nodes, view.plans, view.endpoints,
                           view.cordoned, now, last_seen, grace)
            placed_ns = time.time_ns()
            relevant = {u for u in result.changed if only is None or u in only}
            orphans = _orphans(view) if delete_orphans else set()
            if not relevant and not orphans and root is None:
                return WriteOutcome(result=result)
            if root is None:
                root = tracer.start_span("scheduler.reconcile", start_time=started_ns)
                root.set_attribute("nebula.specs", len(view.specs))
                root.set_attribute("nebula.nodes", len(view.nodes))
            ctx = trace.set_span_in_context(root)
            _trace_placement(result, relevant, attempt, ctx, place_ns, placed_ns)
            lost_any = False
            for uid in sorted(relevant):
                plan = result.plans[uid]
                plan.writer = writer
                with tracer.start_as_current_span("scheduler.write_plan", context=ctx) as ws:
                    ws.set_attribute("nebula.model_uid", uid)
                    ws.set_attribute("nebula.plan_version", plan.version)
                    try:
                        ok, current = await _cas_plan(store, keys.placement(uid), plan,
                                                      view.plan_raw.get(uid), fence)
                    except FenceLost:
                        ws.set_attribute("nebula.result", "fenced")
                        metrics.PLAN_WRITES.labels("fenced").inc()
                        raise
                    ws.set_attribute("nebula.result", "ok" if ok else "conflict")
                if ok:
                    metrics.PLAN_WRITES.labels("ok").inc()
                    written.append(uid)
                    view.plans[uid] = plan
                    view.plan_raw[uid] = plan.to_json()
                    log.info("wrote plan model_uid=%s version=%d replicas=%d unplaced=%d",
                             uid, plan.version, len(plan.assignments), len(plan.unplaced),
                             extra={"model_uid": uid, "plan_version": plan.version})
                    continue
                # Someone else wrote it (another scheduler, an older leader): re-read, retry.
                metrics.PLAN_WRITES.labels("conflict").inc()
                conflicts += 1
                lost_any = True
                _adopt(view, uid, keys.placement(uid), current)
            if not lost_any:
                break
        deleted: list[str] = []
        for uid in sorted(_orphans(view)) if delete_orphans else []:
            key = keys.placement(uid)
            stored = await store.get(key)
            if stored is None:
                continue
            if await store.delete_if_revision(key, stored.mod_revision, fence=fence):
                deleted.append(uid)
                metrics.forget_model(uid)
                log.info("deleted plan of undeployed model model_uid=%s", uid,
                         extra={"model_uid": uid})
        if root is not None:
            root.set_attribute("nebula.plans_written", len(written))
            root.set_attribute("nebula.plans_deleted", len(deleted))
            root.set_attribute("nebula.plan_conflicts", conflicts)
        return WriteOutcome(result=result, written=written, deleted=deleted,
                            conflicts=conflicts)
    except Exception as exc:
        if root is not None:
            root.record_exception(exc)
            root.set_status(trace.Status(trace.StatusCode.ERROR, str(exc)))
        raise
    finally:
        if root is not None:
            root.end()


def _orphans(view: ClusterView) -> set[str]:
    """Plans of undeployed models, readable or not: the spec's removal is the instruction."""
    return (set(view.plans) | view.invalid_plans) - set(view.specs)


def _adopt(view: ClusterView, uid: str, key: str, current: bytes | None) -> None:
    """Take the plan someone else stored as the new starting point."""
    view.plans.pop(uid, None)
    view.plan_raw.pop(uid, None)
    if current is None:
        return
    plan = decode_or_skip(PlacementPlan, key, current)
    if plan is None:
        view.invalid_plans.add(uid)
        return
    view.plans[uid] = plan
    view.plan_raw[uid] = current


def _trace_placement(result: PlacementResult, relevant: set[str], attempt: int,
                     ctx: Context, start_ns: int, end_ns: int) -> None:
    """A ``scheduler.place`` span with one child per decision, and a log line each."""
    span = tracer.start_span("scheduler.place", context=ctx, start_time=start_ns)
    span.set_attribute("nebula.attempt", attempt)
    span.set_attribute("nebula.changed_plans", len(relevant))
    span.set_attribute("nebula.unplaced_replicas", len(result.unplaced))
    place_ctx = trace.set_span_in_context(span)
    for d in result.decisions:
        if d.model_uid not in relevant:
            continue
        ds = tracer.start_span("scheduler.placement_decision", context=place_ctx,
                               start_time=start_ns)
        ds.set_attribute("nebula.model_uid", d.model_uid)
        ds.set_attribute("nebula.replica_id", d.replica_id)
        ds.set_attribute("nebula.action", d.action)
        ds.set_attribute("nebula.node_id", d.node_id)
        ds.set_attribute("nebula.reason", d.reason)
        ds.end(end_time=end_ns)
        log_fn = log.warning if d.action == "unplaced" else log.info
        log_fn("placement %s model_uid=%s replica_id=%s node_id=%s reason=%s",
               d.action, d.model_uid, d.replica_id, d.node_id or "-", d.reason,
               extra={"model_uid": d.model_uid, "replica_id": d.replica_id,
                      "node_id": d.node_id, "action": d.action, "reason": d.reason})
    span.end(end_time=end_ns)


class Reconciler:
    """Mirrors of the cluster state plus the loop that reconciles while we lead."""

    def __init__(self, store: EtcdStore, keys: Keys, *, grace: float,
                 is_leader: Callable[[], bool], interval: float = 1.0,
                 debounce: float = 0.05, tasks: TaskSet | None = None,
                 fence: Callable[[], Fence | None] | None = None,
                 autoscaler: Autoscaler | None = None):
        self.store = store
        self.autoscaler = autoscaler if autoscaler is not None else Autoscaler()
        """Sets the count of models with ``max_replicas`` > 0 from /queues/ (docs/overload.md)."""
        self.keys = keys
        self.grace = grace
        self.is_leader = is_leader
        self.fence = fence
        """The election's fence for every write (``Election.fence``); None writes unfenced."""
        self.fenced = 0
        """Passes stopped because etcd refused a write: this scheduler no longer leads."""
        self.interval = interval
        self.debounce = debounce
        self.models = PrefixMirror(store, keys.models, "models", tasks)
        self.nodes = PrefixMirror(store, keys.nodes, "nodes", tasks)
        self.placements = PrefixMirror(store, keys.placements, "placements", tasks)
        self.endpoints = PrefixMirror(store, keys.endpoints, "endpoints", tasks)
        self.cordons = PrefixMirror(store, keys.cordons, "cordons", tasks)
        self.queues = PrefixMirror(store, keys.queues, "queues", tasks)
        self.mirrors = [self.models, self.nodes, self.placements, self.endpoints, self.cordons,
                        self.queues]
        self.last_seen: dict[str, float] = {}
        self._present: set[str] = set()
        # Plans we wrote that our placements mirror may not show yet: uid -> (value,
        # mod_revision). Without this a pass triggered right after a write would see
        # the old plan, lose its compare-and-swap and count a spurious conflict.
        self._own_writes: dict[str, tuple[bytes, int]] = {}
        self._decoder = ViewDecoder(keys)
        self._wake = asyncio.Event()
        self.passes = 0
        self.last_error = ""

    @property
    def synced(self) -> bool:
        return all(m.synced.is_set() for m in self.mirrors)

    def kick(self) -> None:
        self._wake.set()

    def _on_nodes(self) -> None:
        # A node that just vanished was present until now: its grace starts now.
        now = time.time()
        present = {Keys.tail(k, self.keys.nodes) for k in self.nodes.items}
        for node_id in present | self._present:
            self.last_seen[node_id] = now
        self._present = present
        self.kick()

    def start(self) -> None:
        for mirror in self.mirrors:
            mirror.subscribe(self._on_nodes if mirror is self.nodes else self.kick)
            mirror.start()

    async def stop(self) -> None:
        for mirror in self.mirrors:
            await mirror.stop()

    def view(self) -> ClusterView:
        plans = dict(self.placements.items)
        for uid, (raw, revision) in list(self._own_writes.items()):
            if self.placements.revision >= revision:
                del self._own_writes[uid]  # the mirror caught up (or moved past it)
            else:
                plans[self.keys.placement(uid)] = raw
        return self._decoder.decode(self.models.items, self.nodes.items, plans,
                                    self.endpoints.items, self.cordons.items)

    async def _remember_writes(self, view: ClusterView, written: list[str]) -> None:
        for uid in written:
            raw = view.plan_raw.get(uid)
            kv = await self.store.get(self.keys.placement(uid))
            if kv is not None and raw is not None and kv.value == raw:
                self._own_writes[uid] = (raw, kv.mod_revision)

    async def run(self, stop: asyncio.Event) -> None:
        """Reconcile on every change (debounced) and every ``interval`` seconds, until stop."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except TimeoutError:
                pass
            await asyncio.sleep(self.debounce)
            self._wake.clear()
            if stop.is_set() or not self.is_leader() or not self.synced:
                continue
            await self.reconcile_once()

    async def reconcile_once(self) -> WriteOutcome | None:
        fence = self.fence() if self.fence is not None else None
        if self.fence is not None and fence is None:
            return None  # not the leader (any more)
        started = time.perf_counter()
        now = time.time()
        view = self.view()
        for node_id in view.nodes:
            self.last_seen[node_id] = now
        self.autoscaler.apply(view, self.autoscaler.signals(self.queues.items),
                              time.monotonic(), now)
        for plan in view.plans.values():
            for a in plan.assignments:
                # First time we hear of a node only through a plan: its grace starts now.
                self.last_seen.setdefault(a.node_id, now)
        try:
            outcome = await reconcile_view(self.store, self.keys, view, now=now,
                                           last_seen=self.last_seen, grace=self.grace,
                                           fence=fence)
        except FenceLost as exc:
            # Our belief that we lead is stale (we were paused or cut off past our lease):
            # write nothing more; the election notices the lost lease and steps down.
            self.fenced += 1
            self.last_error = f"plan write refused, no longer the leader: {exc}"
            log.warning("%s", self.last_error)
            return None
        except Exception as exc:  # etcd trouble: the next pass retries
            metrics.RECONCILES.labels("error").inc()
            self.last_error = error_text(exc)
            log.warning("reconcile failed: %s", self.last_error)
            return None
        finally:
            metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
        try:
            await self._remember_writes(view, outcome.written)
        except Exception as exc:  # only an optimisation; the mirror catches up anyway
            log.debug("could not read back written plans: %s", exc)
        await self._write_decisions()
        self.passes += 1
        self.last_error = ""
        metrics.RECONCILES.labels("ok").inc()
        if outcome.conflicts:
            self.kick()  # our mirror was behind: look again once it caught up
        self._update_metrics(view, outcome.result)
        return outcome

    async def _write_decisions(self) -> None:
        """Store the autoscaler's new decisions for ``nebula status``. Unfenced: a record a
        deposed leader writes late only shows an older reason, it moves no replica."""
        pending = self.autoscaler.unwritten
        for uid, decision in list(pending.items()):
            try:
                await self.store.put(self.keys.scale_decision(uid), decision.to_json())
            except Exception as exc:  # etcd trouble: the next pass retries
                log.debug("could not store the autoscale decision of %s: %s", uid, exc)
                return
            if pending.get(uid) is decision:
                del pending[uid]

    def _update_metrics(self, view: ClusterView, result: PlacementResult) -> None:
        metrics.SPECS.set(len(view.specs))
        metrics.UNPLACEABLE.set(len(result.unplaced))
        for uid, spec in view.specs.items():
            plan = result.plans.get(uid)
            placed = len(plan.assignments) if plan else 0
            ready = len(ready_replicas(plan, view.endpoints)) if plan else 0
            metrics.set_model_replicas(uid, spec.replicas, placed, ready)
