"""The autoscaler in the reconcile loop: the routers' queue signals -> each model's count.

For every ModelSpec with ``max_replicas`` > 0 the leader decides a target
(:func:`.autoscale.decide`) on every pass and places the model as if its spec asked for that
many replicas (the stored spec is not rewritten: ``nebula scale`` pins a count by turning
autoscaling off). State lives in the leader's memory; a new leader starts from the count the
model's plan has, so a failover does not move replicas.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping

from nebula_common.records import QueueSignal, ScaleDecision, decode_or_skip

from . import metrics
from .autoscale import Load, ScaleConfig, ScaleState, decide
from .view import ClusterView

log = logging.getLogger(__name__)


def load_of(signals: Iterable[QueueSignal], model_uid: str) -> Load:
    """One model's load over every router's signal (pure)."""
    waiting = admitted = per_replica = 0
    for signal in signals:
        q = signal.models.get(model_uid)
        if q is not None:
            waiting += q.waiting
            admitted += q.admitted
            per_replica = max(per_replica, q.max_running_per_replica)
    return Load(waiting, admitted, per_replica)


class Autoscaler:
    """Per-model :class:`ScaleState` and the pass that applies the targets to a view."""

    def __init__(self, config: ScaleConfig | None = None):
        self.config = config or ScaleConfig()
        self.states: dict[str, ScaleState] = {}
        self.unwritten: dict[str, ScaleDecision] = {}
        """Decisions not yet stored in etcd for ``nebula status`` (the reconciler writes
        them after its pass; a failed write is retried on the next)."""

    def signals(self, items: Mapping[str, bytes]) -> list[QueueSignal]:
        return [s for k, v in items.items()
                if (s := decode_or_skip(QueueSignal, k, v)) is not None]

    def apply(self, view: ClusterView, signals: list[QueueSignal], now: float,
              wall: float = 0.0) -> None:
        """Replace each autoscaled spec in ``view`` by one asking for its target now
        (``now`` monotonic; ``wall``, epoch seconds, dates the decisions)."""
        for uid in list(self.states):
            spec = view.specs.get(uid)
            if spec is None or spec.max_replicas <= 0:
                del self.states[uid]  # undeployed or pinned: forget its history
                self.unwritten.pop(uid, None)
        for uid, spec in view.specs.items():
            if spec.max_replicas <= 0:
                continue
            state = self.states.get(uid)
            if state is None:
                plan = view.plans.get(uid)
                start = len(plan.assignments) + len(plan.unplaced) if plan else spec.replicas
                state = self.states[uid] = ScaleState(target=start)
            before = state.target
            target, reason = decide(state, spec.min_replicas, spec.max_replicas,
                                    load_of(signals, uid), now, self.config)
            if target != before:
                metrics.AUTOSCALE_EVENTS.labels(
                    "out" if target > before else "in").inc()
                log.info("autoscale model_uid=%s %d -> %d: %s", uid, before, target, reason,
                         extra={"model_uid": uid, "reason": reason})
                self.unwritten[uid] = ScaleDecision(uid, before, target, reason, wall)
            metrics.AUTOSCALE_TARGET.labels(uid).set(target)
            view.specs[uid] = dataclasses.replace(spec, replicas=target)

    def describe(self) -> dict[str, dict[str, object]]:
        return {uid: {"target": s.target, "reason": s.reason, "events": s.events}
                for uid, s in self.states.items()}
