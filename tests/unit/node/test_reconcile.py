"""The reconcile diff: what to start, stop and leave alone."""

from __future__ import annotations

import json

from nebula_common.records import Assignment, PlacementPlan, RecordCache
from nebula_node.engines import ReplicaSpec
from nebula_node.reconcile import diff_replicas, replicas_for_node


def plan(uid: str, version: int, *assignments: Assignment, engine: str = "sim") -> PlacementPlan:
    return PlacementPlan(model_uid=uid, model_name=f"{uid}-name", engine=engine, version=version,
                         assignments=list(assignments))


def test_replicas_for_node_across_plans():
    plans = [
        plan("a", 3, Assignment("r0", "n1", 10814, [0]), Assignment("r1", "n2", 10814)),
        plan("b", 1, Assignment("r0", "n1", 10815, engine_args=["--ttft-ms", "1"])),
    ]
    desired = replicas_for_node(plans, "n1")
    assert sorted(desired) == [("a", "r0"), ("b", "r0")]
    assert desired[("a", "r0")] == ReplicaSpec("a", "a-name", "sim", "r0", 10814, (0,), (), 3)
    assert desired[("b", "r0")].engine_args == ("--ttft-ms", "1")
    assert replicas_for_node(plans, "n3") == {}


def test_diff_start_stop_unchanged_and_version_only():
    old = replicas_for_node([plan("a", 1, Assignment("r0", "n", 1), Assignment("r1", "n", 2)),
                             plan("b", 1, Assignment("r0", "n", 3))], "n")
    new = replicas_for_node([plan("a", 2, Assignment("r0", "n", 1), Assignment("r2", "n", 4)),
                             plan("b", 1, Assignment("r0", "n", 3))], "n")
    d = diff_replicas(new, old)
    assert [s.key for s in d.start] == [("a", "r2")]
    assert d.stop == [("a", "r1")]
    assert d.unchanged == [("b", "r0")]
    assert [s.key for s in d.version_only] == [("a", "r0")]


def test_changed_spec_is_stopped_now_and_started_once_not_busy():
    old = replicas_for_node([plan("a", 1, Assignment("r0", "n", 1))], "n")
    new = replicas_for_node([plan("a", 2, Assignment("r0", "n", 1, engine_args=["--x"]))], "n")
    d = diff_replicas(new, old)
    assert d.stop == [("a", "r0")] and d.start == []
    # Next pass: the old one is gone from current but still stopping -> not started yet.
    d = diff_replicas(new, {}, busy={("a", "r0")})
    assert d.start == []
    d = diff_replicas(new, {})
    assert [s.key for s in d.start] == [("a", "r0")]


def test_identical_desired_and_current_is_a_no_op():
    cur = replicas_for_node([plan("a", 1, Assignment("r0", "n", 1, [0, 1]))], "n")
    d = diff_replicas(cur, dict(cur))
    assert d.start == [] and d.stop == [] and d.version_only == []


def test_unreadable_plan_protects_its_replicas():
    good = plan("b", 1, Assignment("r0", "n", 3)).to_json()
    ill_typed = json.dumps({**json.loads(plan("c", 1).to_json()), "assignments": 5}).encode()
    plans, bad = RecordCache(PlacementPlan).decode(
        {"/placements/a": b"{not json", "/placements/b": good, "/placements/c": ill_typed})
    assert bad == {"/placements/a", "/placements/c"}
    assert [p.model_uid for p in plans.values()] == ["b"]
    cur = replicas_for_node([plan("a", 1, Assignment("r0", "n", 1)),
                             plan("c", 1, Assignment("r0", "n", 2))], "n")
    d = diff_replicas(replicas_for_node(plans.values(), "n"), cur,
                      protected_models={"a", "c"})
    assert d.stop == [] and [s.key for s in d.start] == [("b", "r0")]
