"""placement.place replaces replicas whose restart budget is spent: elsewhere, with backoff."""

from __future__ import annotations

from nebula_common.records import Endpoint, EndpointState, PlacementPlan
from nebula_scheduler.placement import ReplacePolicy, place
from tests.unit.scheduler.test_placement import gpu_node, nodes_of, ready_all, sim, where

POLICY = ReplacePolicy(backoff_initial=5.0, backoff_max=40.0, memory=600.0, keep=3)


def failed(plan: PlacementPlan, replica_id: str, reason: str = "engine exited with code 1"
           ) -> dict[tuple[str, str], Endpoint]:
    """Every replica of ``plan`` ready, except ``replica_id``, which spent its restart budget."""
    eps = ready_all({plan.model_uid: plan})
    ep = eps[(plan.model_uid, replica_id)]
    ep.status, ep.reason = EndpointState.FAILED, reason
    return eps


def test_failed_replica_is_replaced_on_another_node_at_once_and_recorded() -> None:
    nodes = nodes_of(gpu_node("a"), gpu_node("b"))
    first = place({"m": sim(replicas=1)}, nodes, {}, now=100).plans["m"]
    broken = first.assignments[0].node_id
    result = place({"m": sim(replicas=1)}, nodes, {"m": first}, failed(first, "r0"),
                   now=110, replace=POLICY)
    plan = result.plans["m"]
    # r0 is still registered (failed) on its node: the replacement takes another id.
    assert where(plan) == {"r1": "b" if broken == "a" else "a"}
    assert [f.to_dict() for f in plan.failures] == [{
        "replica_id": "r0", "node_id": broken, "reason": "engine exited with code 1",
        "failed_at": 110, "replaced_by": "r1", "schema": 1}]
    assert result.changed == {"m"} and not plan.unplaced
    reasons = {(d.action, d.replica_id): d.reason for d in result.decisions}
    assert reasons[("remove", "r0")].startswith("restart budget spent")
    assert reasons[("add", "r1")] == f"replaces r0 (failed on {broken})"
    assert first.failures == [], "the caller's plan is not changed"


def test_later_failures_wait_longer_and_the_wait_is_listed_with_its_reason() -> None:
    nodes = nodes_of(gpu_node("a"), gpu_node("b"))
    plan = place({"m": sim()}, nodes, {}, now=0).plans["m"]
    plan = place({"m": sim()}, nodes, {"m": plan}, failed(plan, "r0"), now=10,
                 replace=POLICY).plans["m"]
    assert len(plan.assignments) == 1  # the first replacement did not wait
    rid = plan.assignments[0].replica_id
    # The replacement fails too: the second one waits 5 s, listed as unplaced meanwhile.
    waiting = place({"m": sim()}, nodes, {"m": plan}, failed(plan, rid), now=20,
                    replace=POLICY).plans["m"]
    assert waiting.assignments == []
    assert [u.reason for u in waiting.unplaced] == [
        f"replaces {rid} (failed on {plan.assignments[0].node_id}) after a 5s backoff"]
    again = place({"m": sim()}, nodes, {"m": waiting}, {}, now=24, replace=POLICY)
    assert "m" not in again.changed, "still waiting: the plan is not rewritten"
    placed = place({"m": sim()}, nodes, {"m": waiting}, {}, now=25, replace=POLICY).plans["m"]
    assert len(placed.assignments) == 1 and not placed.unplaced
    assert [f.replaced_by for f in placed.failures] == ["r1", placed.assignments[0].replica_id]
    assert [POLICY.delay(n) for n in (1, 2, 3, 4, 5)] == [0, 5, 10, 20, 40]


def test_with_no_other_node_the_replacement_goes_to_the_same_node() -> None:
    nodes = nodes_of(gpu_node("a"))
    plan = place({"m": sim()}, nodes, {}, now=0).plans["m"]
    plan = place({"m": sim()}, nodes, {"m": plan}, failed(plan, "r0"), now=1,
                 replace=POLICY).plans["m"]
    assert where(plan) == {"r1": "a"}, "no other node: capacity comes back where it can"


def test_old_failures_are_forgotten_and_at_most_keep_are_kept() -> None:
    nodes = nodes_of(gpu_node("a"), gpu_node("b"))
    plan = place({"m": sim()}, nodes, {}, now=0).plans["m"]
    now = 0.0
    for _ in range(4):  # each replacement fails in turn, once its backoff is over
        now += 100
        plan = place({"m": sim()}, nodes, {"m": plan},
                     failed(plan, plan.assignments[0].replica_id), now=now,
                     replace=POLICY).plans["m"]
        if not plan.assignments:
            now += 100
            plan = place({"m": sim()}, nodes, {"m": plan}, {}, now=now,
                         replace=POLICY).plans["m"]
    assert len(plan.failures) == POLICY.keep
    later = place({"m": sim()}, nodes, {"m": plan}, ready_all({"m": plan}),
                  now=now + POLICY.memory + 1, replace=POLICY).plans["m"]
    assert later.failures == [] and where(later) == where(plan)


def test_a_failed_endpoint_of_an_old_copy_on_another_node_is_not_this_assignment() -> None:
    nodes = nodes_of(gpu_node("a"), gpu_node("b"))
    plan = place({"m": sim()}, nodes, {}, now=0).plans["m"]
    eps = failed(plan, "r0")
    other = "b" if plan.assignments[0].node_id == "a" else "a"
    eps[("m", "r0")].node_id = other
    result = place({"m": sim()}, nodes, {"m": plan}, eps, now=5, replace=POLICY)
    assert "m" not in result.changed
