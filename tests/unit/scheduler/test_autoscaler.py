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
    ScaleDecision,
)
from nebula_scheduler.autoscale import Load, ScaleConfig
from nebula_scheduler.autoscaler import Autoscaler, load_of
from nebula_scheduler.cli import (
    CliError,
    _scale_bounds,
    render_status,
    scale_text,
    status_data,
)
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


def test_a_change_leaves_a_decision_to_store_and_a_pinned_model_drops_it() -> None:
    auto = ModelSpec(model_uid="a", model_name="A", engine="sim", replicas=1, min_replicas=1,
                     max_replicas=3)
    scaler = Autoscaler(ScaleConfig(out_after_s=5, out_cooldown_s=0))
    busy = [signal("r1", a=(10, 8))]
    for t in range(0, 6):
        scaler.apply(view([auto]), busy, float(t), wall=1000.0 + t)
    assert scaler.unwritten == {"a": ScaleDecision(
        "a", 1, 3, "10 waiting for 5s, 8 running, 8 per replica", 1005.0)}
    scaler.apply(view([ModelSpec(model_uid="a", model_name="A", engine="sim")]), busy, 7.0)
    assert scaler.unwritten == {}


@pytest.mark.parametrize("before,after,reason,text", [
    (1, 3, "10 waiting for 5s", "scaled out 1->3 2m ago: 10 waiting for 5s"),
    (2, 1, "0 running fit in 1 at 50% for 60s",
     "scaled in 2->1 2m ago: 0 running fit in 1 at 50% for 60s"),
    (1, 0, "idle for 300s", "scaled to zero 1->0 2m ago: idle for 300s"),
    (0, 1, "2 waiting at zero replicas", "woke from zero 0->1 2m ago: 2 waiting at zero replicas"),
])
def test_scale_text(before: int, after: int, reason: str, text: str) -> None:
    assert scale_text(ScaleDecision("m", before, after, reason, 100.0), 100.0 + 150) == text
    assert f"{before}->{after} 5s ago: " in scale_text(
        ScaleDecision("m", before, after, reason, 100.0), 105.0)


def test_status_shows_the_last_decision_of_autoscaled_models_only() -> None:
    auto = ModelSpec(model_uid="a", model_name="A", engine="sim", min_replicas=1,
                     max_replicas=3)
    fresh = ModelSpec(model_uid="f", model_name="F", engine="sim", min_replicas=1,
                      max_replicas=2)
    pinned = ModelSpec(model_uid="p", model_name="P", engine="sim", replicas=2)
    v = view([auto, fresh, pinned])
    v.decisions = {"a": ScaleDecision("a", 1, 2, "4 waiting for 30s", 40.0),
                   "p": ScaleDecision("p", 1, 2, "from before it was pinned", 40.0)}
    data = status_data(v, 100.0)
    shown = {m["model_uid"]: m["last_scale"] for m in data["models"]}
    assert shown == {"a": "scaled out 1->2 60s ago: 4 waiting for 30s", "f": None, "p": None}
    text = render_status(data)
    section = text.split("AUTOSCALE\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert section[0].split() == ["MODEL", "LAST", "DECISION"]
    assert section[1].split(None, 1) == ["a", "scaled out 1->2 60s ago: 4 waiting for 30s"]
    assert section[2].split(None, 1) == ["f", "no change yet"]
    assert len(section) == 3
    assert "AUTOSCALE" not in render_status(status_data(view([pinned]), 100.0))
