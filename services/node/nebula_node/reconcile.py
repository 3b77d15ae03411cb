"""Pure reconcile logic: which replicas this node should run, and what to change."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from nebula_common.records import PlacementPlan

from .engines.base import ReplicaSpec

ReplicaKey = tuple[str, str]


def replicas_for_node(plans: Iterable[PlacementPlan],
                      node_id: str) -> dict[ReplicaKey, ReplicaSpec]:
    """Every assignment of ``node_id`` across all plans, keyed by (model_uid, replica_id).

    The plans were decoded with their field types checked, so values are used as they are.
    """
    desired: dict[ReplicaKey, ReplicaSpec] = {}
    for plan in plans:
        for a in plan.for_node(node_id):
            spec = ReplicaSpec(
                model_uid=plan.model_uid, model_name=plan.model_name, engine=plan.engine,
                replica_id=a.replica_id, port=a.port, gpu_indices=tuple(a.gpu_indices),
                engine_args=tuple(a.engine_args), plan_version=plan.version,
                trust_remote_code=plan.trust_remote_code)
            desired[spec.key] = spec
    return desired


@dataclass
class ReconcileDiff:
    start: list[ReplicaSpec] = field(default_factory=list)
    stop: list[ReplicaKey] = field(default_factory=list)
    unchanged: list[ReplicaKey] = field(default_factory=list)
    version_only: list[ReplicaSpec] = field(default_factory=list)
    """Unchanged replicas whose plan version moved: re-announce, never restart."""


def diff_replicas(desired: Mapping[ReplicaKey, ReplicaSpec],
                  current: Mapping[ReplicaKey, ReplicaSpec],
                  busy: Iterable[ReplicaKey] = (),
                  protected_models: Iterable[str] = ()) -> ReconcileDiff:
    """What to start and stop so that ``current`` becomes ``desired``.

    A replica whose spec changed (other than the plan version) is stopped now and
    started on a later pass, once its old engine is gone (the two would share
    their etcd keys). ``busy`` are keys still being stopped: not started again
    yet. Replicas of ``protected_models`` (whose plan could not be read) are
    left as they are.
    """
    busy = set(busy)
    protected = set(protected_models)
    out = ReconcileDiff()
    for key, spec in current.items():
        want = desired.get(key)
        if want is None:
            if key[0] not in protected:
                out.stop.append(key)
        elif not want.same_process(spec):
            out.stop.append(key)
        elif want.plan_version != spec.plan_version:
            out.version_only.append(want)
        else:
            out.unchanged.append(key)
    for key, spec in desired.items():
        if key not in current and key not in busy:
            out.start.append(spec)
    out.start.sort(key=lambda s: s.key)
    out.stop.sort()
    return out
