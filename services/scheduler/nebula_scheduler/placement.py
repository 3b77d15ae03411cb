"""Placement: which replica of which model runs on which node. A pure function.

:func:`place` looks at the desired state (ModelSpecs), the cluster (live
NodeStatus records, cordons, when each node was last seen, ready endpoints)
and the current plans, and returns the plans that make the desired state true
while moving as little as possible:

* existing assignments stay where they are (scaling 2 -> 3 adds one, moves none);
* scaling down removes assignments on drained nodes first, then the highest ids;
* a node missing from ``/nodes/`` keeps its assignments until ``grace`` seconds
  after it was last seen; then they are placed elsewhere (and stay there when the
  node comes back: nothing flaps);
* a cordoned node (``nebula drain``) gets a replacement placed elsewhere first; its
  assignment is removed only once enough replacements answer ``ready``;
* a replica that spent its restart budget (its endpoint says ``failed``) is removed
  and replaced, on another node where one fits, recorded in ``plan.failures``;
  further failures of the model within a while wait longer each time (backoff),
  the wait listed in ``plan.unplaced`` with its reason;
* new replicas spread: fewest replicas of this model first, then least loaded node;
* a replica needing k GPUs gets k free GPUs on one node; GPU engines never land on
  GPU-less nodes; engine ports never collide on a node;
* a replica that fits nowhere is listed in ``plan.unplaced`` with the reason, and
  placed by a later call as soon as capacity appears.

No IO and no clock: everything comes in as arguments, so it is unit-tested as is.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from nebula_common.records import (
    GPU_ENGINES,
    Assignment,
    Endpoint,
    EndpointState,
    ModelSpec,
    NodeStatus,
    PlacementPlan,
    ReplicaFailure,
    Unplaced,
    serves,
)
from nebula_common.retry import backoff_delay

DEFAULT_GRACE_S = 10.0
REASON_CHARS = 200
"""A failure's reason is cut to this length in the plan (the node's endpoint has the log)."""


@dataclass(frozen=True)
class ReplacePolicy:
    """How replicas whose restart budget is spent on their node are replaced."""

    backoff_initial: float = 5.0
    """Wait before the second replacement of a model within ``memory``; doubles after."""
    backoff_max: float = 300.0
    memory: float = 600.0
    """Seconds a failure counts: for the backoff, and to keep replacements off its node."""
    keep: int = 10
    """Failures kept per plan (the newest)."""

    def delay(self, nth: int) -> float:
        """Wait before replacing the ``nth`` recent failure of a model: none for the first."""
        if nth <= 1:
            return 0.0
        return backoff_delay(nth - 1, initial=self.backoff_initial, maximum=self.backoff_max)


REPLACE = ReplacePolicy()


@dataclass(frozen=True)
class Decision:
    """One placement decision, for logs and trace spans."""

    model_uid: str
    replica_id: str
    action: str  # "add", "remove", "unplaced"
    node_id: str = ""
    reason: str = ""


@dataclass
class PlacementResult:
    """New plans keyed by model uid, the uids whose plan changed, and why."""

    plans: dict[str, PlacementPlan]
    changed: set[str] = field(default_factory=set)
    decisions: list[Decision] = field(default_factory=list)

    @property
    def unplaced(self) -> list[tuple[str, Unplaced]]:
        return [(uid, u) for uid, plan in sorted(self.plans.items()) for u in plan.unplaced]


def replica_number(replica_id: str) -> int:
    """``"r12"`` -> 12; ids not of that form sort last."""
    match = re.fullmatch(r"r(\d+)", replica_id)
    return int(match.group(1)) if match else 1 << 30


def gpus_needed(spec: ModelSpec) -> int:
    """GPUs one replica needs: GPU engines need at least one."""
    if spec.engine in GPU_ENGINES:
        return max(1, spec.gpus_per_replica)
    return max(0, spec.gpus_per_replica)


@dataclass
class _NodeUsage:
    """What is already taken on one node (by every plan), updated as replicas are placed."""

    ports: set[int] = field(default_factory=set)
    gpus: set[int] = field(default_factory=set)
    replicas: int = 0
    per_model: dict[str, int] = field(default_factory=dict)

    def take(self, model_uid: str, a: Assignment) -> None:
        self.ports.add(a.port)
        self.gpus.update(a.gpu_indices)
        self.replicas += 1
        self.per_model[model_uid] = self.per_model.get(model_uid, 0) + 1


def _free_port(start: int, used: set[int]) -> int:
    port = start
    while port in used:
        port += 1
    return port


def _free_gpus(node: NodeStatus | None, used: set[int], count: int, memory_mb: int) -> list[int]:
    """``count`` free GPU indices on ``node`` (fewest first), or [] when they do not fit.

    An unregistered node (``None``, a pinned node that has not announced itself yet)
    is assumed to have GPUs 0..count-1 free: the operator pinned it on purpose.
    """
    if count == 0:
        return []
    if node is None:
        free = [i for i in range(count + len(used)) if i not in used]
        return free[:count]
    free = [
        g.index for g in sorted(node.gpus, key=lambda g: g.index)
        if g.index not in used
        and (memory_mb <= 0 or g.memory_total_mb - g.memory_used_mb >= memory_mb)
    ]
    return free[:count] if len(free) >= count else []


def _same(a: PlacementPlan, b: PlacementPlan) -> bool:
    """Equal up to version, timestamp and writer: an unchanged plan is not written."""
    return (
        a.model_name == b.model_name
        and a.engine == b.engine
        and a.trust_remote_code == b.trust_remote_code
        and [x.to_dict() for x in a.assignments] == [x.to_dict() for x in b.assignments]
        and [x.to_dict() for x in a.unplaced] == [x.to_dict() for x in b.unplaced]
        and [x.to_dict() for x in a.failures] == [x.to_dict() for x in b.failures]
    )


def _failed(endpoints: Mapping[tuple[str, str], Endpoint], model_uid: str,
            a: Assignment) -> Endpoint | None:
    """The endpoint saying that ``a`` spent its restart budget where the plan put it."""
    ep = endpoints.get((model_uid, a.replica_id))
    if ep is not None and ep.node_id == a.node_id and ep.status == EndpointState.FAILED:
        return ep
    return None


def place(
    specs: Mapping[str, ModelSpec],
    nodes: Mapping[str, NodeStatus],
    plans: Mapping[str, PlacementPlan],
    endpoints: Mapping[tuple[str, str], Endpoint] | None = None,
    cordoned: Iterable[str] = (),
    now: float = 0.0,
    last_seen: Mapping[str, float] | None = None,
    grace: float = DEFAULT_GRACE_S,
    replace: ReplacePolicy = REPLACE,
) -> PlacementResult:
    """Compute the plan of every spec. See the module docstring for the rules.

    ``endpoints`` maps (model_uid, replica_id) to the registered Endpoint;
    ``last_seen`` maps node id -> time it was last present in ``/nodes/`` (a node
    absent from it counts as seen ``now``); ``now`` and ``last_seen`` share a clock
    and also stamp ``updated_at`` of changed plans.
    """
    endpoints = endpoints or {}
    last_seen = last_seen or {}
    cordon = set(cordoned)
    result = PlacementResult(plans={})
    usage: dict[str, _NodeUsage] = {}

    def lost(node_id: str) -> bool:
        return node_id not in nodes and now - last_seen.get(node_id, now) > grace

    # Pass 1: decide which existing assignments survive, for every model, so the
    # capacity they hold is known before any new replica is placed.
    kept: dict[str, list[Assignment]] = {}
    failures: dict[str, list[ReplicaFailure]] = {}
    for uid in sorted(specs):
        spec = specs[uid]
        old = plans.get(uid)
        current = list(old.assignments) if old else []
        pins = set(spec.node_ids)
        survivors: list[Assignment] = []
        # Copies: the replacement below is recorded in them, never in the caller's plan.
        history = [dataclasses.replace(f) for f in (old.failures if old else [])
                   if now - f.failed_at <= replace.memory]
        for a in current:
            if lost(a.node_id) and not (pins and _only_pinned_fallback(pins, nodes, cordon)):
                result.decisions.append(Decision(uid, a.replica_id, "remove", a.node_id,
                                                 "node lost past grace period"))
                continue
            ep = _failed(endpoints, uid, a)
            if ep is not None:
                reason = (ep.reason or "failed")[:REASON_CHARS]
                history.append(ReplicaFailure(replica_id=a.replica_id, node_id=a.node_id,
                                              reason=reason, failed_at=now))
                result.decisions.append(Decision(uid, a.replica_id, "remove", a.node_id,
                                                 f"restart budget spent: {reason}"))
                continue
            survivors.append(a)
        kept[uid] = survivors
        failures[uid] = history[-replace.keep:]

    # Scale-down and drain bookkeeping need the draining set per model.
    def draining(spec: ModelSpec, a: Assignment) -> bool:
        return a.node_id in cordon or bool(spec.node_ids and a.node_id not in spec.node_ids)

    for uid in sorted(specs):
        spec = specs[uid]
        survivors = kept[uid]
        active = [a for a in survivors if not draining(spec, a)]
        moving = [a for a in survivors if draining(spec, a)]
        desired = max(0, spec.replicas)
        # Scale down: highest ids first among active ones.
        if len(active) > desired:
            active.sort(key=lambda a: replica_number(a.replica_id))
            for a in active[desired:]:
                result.decisions.append(Decision(uid, a.replica_id, "remove", a.node_id,
                                                 "scaled down"))
            active = active[:desired]
        # Drain: remove the old replicas only once enough replacements are ready,
        # so serving capacity never drops; on scale-down they go first.
        ready_active = sum(1 for a in active if serves(endpoints, uid, a))
        keep_moving = []
        if ready_active < desired:
            # Keep as many draining replicas as are still needed to cover the gap.
            moving.sort(key=lambda a: replica_number(a.replica_id))
            keep_moving = moving[: desired - ready_active]
        for a in moving:
            if a not in keep_moving:
                result.decisions.append(Decision(uid, a.replica_id, "remove", a.node_id,
                                                 "drained"))
        kept[uid] = sorted(active + keep_moving, key=lambda a: replica_number(a.replica_id))
        for a in kept[uid]:
            usage.setdefault(a.node_id, _NodeUsage()).take(uid, a)

    # Pass 2: place the missing replicas, model by model.
    for uid in sorted(specs):
        spec = specs[uid]
        old = plans.get(uid)
        assignments = list(kept[uid])
        active_count = sum(1 for a in assignments if not draining(spec, a))
        missing = max(0, spec.replicas) - active_count
        unplaced: list[Unplaced] = []
        taken_ids = {a.replica_id for a in assignments}
        history = failures[uid]
        # Each missing replica first replaces a failed one (oldest first), once its backoff
        # is over, away from the nodes where the model failed when another node fits.
        waiting = [(n, f) for n, f in enumerate(history, 1) if not f.replaced_by]
        avoid = {f.node_id for f in history}
        for _ in range(missing):
            rid = _next_replica_id(uid, taken_ids, endpoints)
            taken_ids.add(rid)
            nth, failure = waiting.pop(0) if waiting else (0, None)
            if failure is not None and now < failure.failed_at + replace.delay(nth):
                reason = (f"replaces {failure.replica_id} (failed on {failure.node_id}) "
                          f"after a {replace.delay(nth):.0f}s backoff")
                unplaced.append(Unplaced(replica_id=rid, reason=reason))
                result.decisions.append(Decision(uid, rid, "unplaced", "", reason))
                continue
            node_id, reason = _choose_node(spec, nodes, cordon, usage, avoid)
            if node_id is None:
                unplaced.append(Unplaced(replica_id=rid, reason=reason))
                result.decisions.append(Decision(uid, rid, "unplaced", "", reason))
                continue
            if failure is not None:
                failure.replaced_by = rid
                reason = f"replaces {failure.replica_id} (failed on {failure.node_id})"
            node_usage = usage.setdefault(node_id, _NodeUsage())
            a = Assignment(
                replica_id=rid,
                node_id=node_id,
                port=_free_port(spec.port, node_usage.ports),
                gpu_indices=_free_gpus(nodes.get(node_id), node_usage.gpus,
                                       gpus_needed(spec), spec.gpu_memory_mb),
                engine_args=list(spec.engine_args),
            )
            node_usage.take(uid, a)
            assignments.append(a)
            result.decisions.append(Decision(uid, rid, "add", node_id, reason))
        # Engine args follow the spec (the node restarts a replica whose args changed).
        assignments = [_with_args(a, spec.engine_args) for a in assignments]
        assignments.sort(key=lambda a: replica_number(a.replica_id))
        plan = PlacementPlan(
            model_uid=uid,
            model_name=spec.model_name,
            engine=spec.engine,
            version=old.version if old else 1,
            assignments=assignments,
            unplaced=unplaced,
            updated_at=old.updated_at if old else now,
            failures=history,
            trust_remote_code=spec.trust_remote_code,
        )
        if old is None:
            result.changed.add(uid)
        elif not _same(old, plan):
            plan.version = old.version + 1
            plan.updated_at = now
            result.changed.add(uid)
        result.plans[uid] = plan
    return result


def _with_args(a: Assignment, args: list[str]) -> Assignment:
    if a.engine_args == list(args):
        return a
    return Assignment(replica_id=a.replica_id, node_id=a.node_id, port=a.port,
                      gpu_indices=list(a.gpu_indices), engine_args=list(args))


def _only_pinned_fallback(pins: set[str], nodes: Mapping[str, NodeStatus],
                          cordon: set[str]) -> bool:
    """True when no pinned node is live: the assignment has nowhere else to go, keep it."""
    return not any(n in nodes and n not in cordon for n in pins)


def _next_replica_id(uid: str, taken: set[str],
                     endpoints: Mapping[tuple[str, str], Endpoint]) -> str:
    """Lowest ``rN`` not in the plan and not still registered (a draining old replica)."""
    n = 0
    while f"r{n}" in taken or (uid, f"r{n}") in endpoints:
        n += 1
    return f"r{n}"


def _choose_node(
    spec: ModelSpec,
    nodes: Mapping[str, NodeStatus],
    cordon: set[str],
    usage: Mapping[str, _NodeUsage],
    avoid: set[str] | None = None,
) -> tuple[str | None, str]:
    """The best node for one more replica of ``spec``, or (None, why not).

    Nodes in ``avoid`` (where the model failed lately) are used only when no other fits.
    """
    need = gpus_needed(spec)
    pins = set(spec.node_ids)
    candidates = [n for n in nodes.values() if not pins or n.node_id in pins]
    if not candidates:
        if pins:
            # Pinned to nodes that have not registered (yet): the seed starts the
            # scheduler before the node. Place on the pinned node anyway.
            live_or_not = sorted(pins - cordon)
            if live_or_not:
                pinned = min(live_or_not, key=lambda n: _score(spec, n, usage))
                return pinned, "pinned node not registered yet"
            return None, f"every pinned node is cordoned ({', '.join(sorted(pins))})"
        return None, "no live node"
    candidates = [n for n in candidates if n.node_id not in cordon]
    if not candidates:
        return None, "every live node is cordoned"
    candidates = [n for n in candidates if spec.engine in n.engines]
    if not candidates:
        return None, f"no live node runs engine {spec.engine}"
    if need:
        with_gpus = [n for n in candidates if n.gpus]
        if not with_gpus:
            return None, f"engine {spec.engine} needs a GPU and no live node has one"
        candidates = [
            n for n in with_gpus
            if _free_gpus(n, usage.get(n.node_id, _NodeUsage()).gpus, need, spec.gpu_memory_mb)
        ]
        if not candidates:
            memory = f" with {spec.gpu_memory_mb} MB free" if spec.gpu_memory_mb > 0 else ""
            plural = "GPU" if need == 1 else "GPUs"
            return None, f"no node with {need} free {plural}{memory}"
    preferred = [n for n in candidates if n.node_id not in (avoid or ())]
    best = min(preferred or candidates, key=lambda n: _score(spec, n.node_id, usage))
    return best.node_id, "spread" if preferred else "spread (only nodes where it failed fit)"


def _score(spec: ModelSpec, node_id: str, usage: Mapping[str, _NodeUsage]) -> tuple[int, int, str]:
    """Spread: fewest replicas of this model, then least loaded, then by id (deterministic)."""
    u = usage.get(node_id)
    if u is None:
        return (0, 0, node_id)
    return (u.per_model.get(spec.model_uid, 0), u.replicas, node_id)
