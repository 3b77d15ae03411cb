"""The autoscaler over a ClusterView: signals summed per model, targets applied to specs,
pinned models untouched, `nebula deploy --min/--max` and `nebula status` (pure, no etcd)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import pytest

from nebula_common.keys import Keys
from nebula_common.records import (
    Assignment,
    ModelQueueLoad,
    ModelSpec,
    PlacementPlan,
    QueueSignal,
)
from nebula_scheduler.autoscale import Load, ScaleConfig
from nebula_scheduler.autoscaler import Autoscaler, load_of
from nebula_scheduler.cli import CliError, _scale_bounds, render_status, status_data
from nebula_scheduler.view import ClusterView

KEYS = Keys()


def view(specs: list[ModelSpec], plans: Sequence[PlacementPlan] = ()) -> ClusterView:
    return ClusterView.decode(
        KEYS, models={KEYS.model(s.model_uid): s.to_json() for s in specs}, nodes={},
        plans={KEYS.placement(p.model_uid): p.to_json() for p in plans}, endpoints={},
        cordons={})


def signal(router: str, **models: tuple[int, int]) -> QueueSignal:
    return QueueSignal(router_id=router, models={
        uid: ModelQueueLoad(waiting=w, admitted=a, max_running_per_replica=8)
        for uid, (w, a) in models.items()})


def test_load_is_summed_over_routers() -> None:
    signals = [signal("r1", m=(3, 8)), signal("r2", m=(1, 8), other=(9, 9))]
    assert load_of(signals, "m") == Load(waiting=4, admitted=16, per_replica=8)
    assert load_of(signals, "nope") == Load()


def test_apply_sets_autoscaled_counts_and_leaves_pinned_ones() -> None:
    auto = ModelSpec(model_uid="a", model_name="A", engine="sim", replicas=1, min_replicas=1,
                     max_replicas=3)
    pinned = ModelSpec(model_uid="p", model_name="P", engine="sim", replicas=2)
    plan = PlacementPlan(model_uid="a", model_name="A", engine="sim", version=1,
                         assignments=[Assignment("r0", "n", 1), Assignment("r1", "n", 2)])
    scaler = Autoscaler(ScaleConfig(out_after_s=5, out_cooldown_s=0))
    busy = [signal("r1", a=(10, 16), p=(50, 16))]
    for t in range(0, 6):
        v = view([auto, pinned], [plan])
        scaler.apply(v, busy, float(t))
    # Started from the plan's 2 (a new leader moves nothing), out to 3 after 5 s of queue.
    assert v.specs["a"].replicas == 3
    assert v.specs["p"].replicas == 2
    assert scaler.describe()["a"]["events"] == 1
    # Pinned by `nebula scale` (max 0): its state is forgotten, its count is the spec's.
    pinned_now = ModelSpec(model_uid="a", model_name="A", engine="sim", replicas=1)
    v = view([pinned_now])
    scaler.apply(v, busy, 10.0)
    assert v.specs["a"].replicas == 1 and "a" not in scaler.states


def test_signals_skip_invalid_records() -> None:
    scaler = Autoscaler()
    good = signal("r1", m=(1, 1))
    items = {KEYS.queue("r1"): good.to_json(), KEYS.queue("bad"): b"{"}
    assert scaler.signals(items) == [good]


def args(replicas: int | None = None, lo: int | None = None, hi: int = 0) -> argparse.Namespace:
    return argparse.Namespace(replicas=replicas, min_replicas=lo, max_replicas=hi)


def test_deploy_bounds() -> None:
    assert _scale_bounds(args()) == (1, 0, 0)
    assert _scale_bounds(args(replicas=4)) == (4, 0, 0)
    assert _scale_bounds(args(lo=1, hi=4)) == (1, 1, 4)
    assert _scale_bounds(args(lo=0, hi=2)) == (1, 0, 2)
    assert _scale_bounds(args(hi=3)) == (1, 1, 3)
    for bad in (args(lo=1), args(lo=3, hi=2), args(replicas=5, lo=1, hi=3), args(hi=-1)):
        with pytest.raises(CliError):
            _scale_bounds(bad)


def test_status_shows_autoscale_and_scaled_to_zero() -> None:
    spec = ModelSpec(model_uid="z", model_name="Z", engine="sim", replicas=1, min_replicas=0,
                     max_replicas=2)
    plan = PlacementPlan(model_uid="z", model_name="Z", engine="sim", version=3)
    data = status_data(view([spec], [plan]), 0.0)
    (model,) = data["models"]
    assert model["desired"] == 0 and model["autoscale"] == [0, 2]
    assert "(autoscale 0..2, scaled to zero)" in render_status(data)
