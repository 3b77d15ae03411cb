"""placement.place as a pure function: no etcd, no clock."""

from __future__ import annotations

from collections import Counter

from nebula_common.records import (
    Endpoint,
    GpuInfo,
    ModelSpec,
    NodeStatus,
    PlacementPlan,
)
from nebula_scheduler.placement import place


def gpu_node(node_id: str, gpus: int = 0, total_mb: int = 80_000, used_mb: int = 0,
             engines: tuple[str, ...] = ("vllm", "llamacpp", "sim")) -> NodeStatus:
    return NodeStatus(node_id=node_id, advertise_host="127.0.0.1",
                      gpus=[GpuInfo(index=i, name="H100", memory_total_mb=total_mb,
                                    memory_used_mb=used_mb) for i in range(gpus)],
                      engines=list(engines))


def nodes_of(*nodes: NodeStatus) -> dict[str, NodeStatus]:
    return {n.node_id: n for n in nodes}


def sim(uid: str = "m", replicas: int = 1, **kw) -> ModelSpec:
    return ModelSpec(model_uid=uid, model_name=f"name-{uid}", engine="sim", replicas=replicas,
                     **kw)


def where(plan: PlacementPlan) -> dict[str, str]:
    return {a.replica_id: a.node_id for a in plan.assignments}


def ready_all(plans: dict[str, PlacementPlan]) -> dict[tuple[str, str], Endpoint]:
    return {
        (uid, a.replica_id): Endpoint(model_uid=uid, model_name=p.model_name,
                                      replica_id=a.replica_id, node_id=a.node_id,
                                      base_url=f"http://127.0.0.1:{a.port}", engine=p.engine)
        for uid, p in plans.items() for a in p.assignments
    }


def test_spread_across_nodes_and_stable_ids():
    nodes = nodes_of(gpu_node("a"), gpu_node("b"), gpu_node("c"))
    result = place({"m": sim(replicas=4)}, nodes, {})
    plan = result.plans["m"]
    assert [a.replica_id for a in plan.assignments] == ["r0", "r1", "r2", "r3"]
    per_node = Counter(where(plan).values())
    assert sorted(per_node.values()) == [1, 1, 2]
    assert plan.version == 1 and result.changed == {"m"} and not plan.unplaced


def test_spread_prefers_fewest_replicas_of_model_then_least_loaded():
    nodes = nodes_of(gpu_node("a"), gpu_node("b"))
    first = place({"x": sim("x", replicas=1)}, nodes, {})
    x_node = first.plans["x"].assignments[0].node_id
    second = place({"x": sim("x", replicas=1), "y": sim("y", replicas=1)}, nodes, first.plans)
    assert second.plans["y"].assignments[0].node_id != x_node  # least loaded
    assert second.changed == {"y"}


def test_scale_up_adds_one_moves_none_and_scale_down_removes_highest():
    nodes = nodes_of(gpu_node("a"), gpu_node("b"), gpu_node("c"))
    two = place({"m": sim(replicas=2)}, nodes, {}).plans
    three = place({"m": sim(replicas=3)}, nodes, two).plans
    assert {k: v for k, v in where(three["m"]).items() if k in ("r0", "r1")} == where(two["m"])
    assert set(where(three["m"])) == {"r0", "r1", "r2"}
    assert three["m"].version == 2
    ports_before = {a.replica_id: a.port for a in three["m"].assignments}
    down = place({"m": sim(replicas=1)}, nodes, three).plans
    assert where(down["m"]) == {"r0": where(two["m"])["r0"]}
    assert down["m"].assignments[0].port == ports_before["r0"]
    assert down["m"].version == 3


def test_unchanged_plan_is_not_rewritten():
    nodes = nodes_of(gpu_node("a"), gpu_node("b"))
    plans = place({"m": sim(replicas=2)}, nodes, {}).plans
    again = place({"m": sim(replicas=2)}, nodes, plans)
    assert again.changed == set()
    assert again.plans["m"].version == 1


def test_two_gpu_replica_gets_two_gpus_on_one_node():
    nodes = nodes_of(gpu_node("one", gpus=1), gpu_node("two", gpus=2))
    spec = ModelSpec(model_uid="big", model_name="big", engine="vllm", replicas=1,
                     gpus_per_replica=2)
    plan = place({"big": spec}, nodes, {}).plans["big"]
    (a,) = plan.assignments
    assert a.node_id == "two" and sorted(a.gpu_indices) == [0, 1]
    # A second one does not fit anywhere: GPUs already assigned are not free.
    spec2 = ModelSpec(model_uid="big", model_name="big", engine="vllm", replicas=2,
                      gpus_per_replica=2)
    plan2 = place({"big": spec2}, nodes, {"big": plan}).plans["big"]
    assert len(plan2.assignments) == 1
    assert plan2.unplaced[0].reason == "no node with 2 free GPUs"


def test_gpus_are_not_shared_between_models_on_a_node():
    nodes = nodes_of(gpu_node("g", gpus=2))
    specs = {"a": ModelSpec(model_uid="a", model_name="a", engine="vllm"),
             "b": ModelSpec(model_uid="b", model_name="b", engine="vllm"),
             "c": ModelSpec(model_uid="c", model_name="c", engine="vllm")}
    result = place(specs, nodes, {})
    used = [i for uid in ("a", "b") for i in result.plans[uid].assignments[0].gpu_indices]
    assert sorted(used) == [0, 1]
    assert result.plans["c"].unplaced[0].reason == "no node with 1 free GPU"


def test_gpu_memory_fit():
    nodes = nodes_of(gpu_node("full", gpus=1, total_mb=24_000, used_mb=20_000),
                     gpu_node("roomy", gpus=1, total_mb=80_000, used_mb=1_000))
    spec = ModelSpec(model_uid="m", model_name="m", engine="vllm", gpu_memory_mb=30_000)
    plan = place({"m": spec}, nodes, {}).plans["m"]
    assert where(plan) == {"r0": "roomy"}
    spec.replicas = 2
    plan2 = place({"m": spec}, nodes, {"m": plan}).plans["m"]
    assert plan2.unplaced[0].reason == "no node with 1 free GPU with 30000 MB free"


def test_cpu_engines_on_gpu_less_nodes_and_vllm_refused_there():
    nodes = nodes_of(gpu_node("cpu1"), gpu_node("cpu2"))
    result = place({"s": sim("s", replicas=2),
                    "v": ModelSpec(model_uid="v", model_name="v", engine="vllm")}, nodes, {})
    assert set(where(result.plans["s"]).values()) == {"cpu1", "cpu2"}
    assert all(a.gpu_indices == [] for a in result.plans["s"].assignments)
    assert result.plans["v"].assignments == []
    reason = result.plans["v"].unplaced[0].reason
    assert reason == "engine vllm needs a GPU and no live node has one"
    lc = ModelSpec(model_uid="l", model_name="l", engine="llamacpp")
    assert place({"l": lc}, nodes, {}).plans["l"].assignments[0].node_id in nodes


def test_engine_not_offered_by_node():
    nodes = nodes_of(gpu_node("a", engines=("sim",)))
    lc = ModelSpec(model_uid="l", model_name="l", engine="llamacpp")
    plan = place({"l": lc}, nodes, {}).plans["l"]
    assert plan.unplaced[0].reason == "no live node runs engine llamacpp"


def test_ports_never_collide_on_a_node():
    nodes = nodes_of(gpu_node("only"))
    specs = {"a": sim("a", replicas=3, port=9000), "b": sim("b", replicas=2, port=9001)}
    result = place(specs, nodes, {})
    ports = [a.port for p in result.plans.values() for a in p.assignments]
    assert len(ports) == len(set(ports)) == 5
    assert {a.port for a in result.plans["a"].assignments} >= {9000}
    # Adding a replica later still avoids every port in use.
    specs["b"] = sim("b", replicas=3, port=9001)
    later = place(specs, nodes, result.plans)
    ports2 = [a.port for p in later.plans.values() for a in p.assignments]
    assert len(ports2) == len(set(ports2)) == 6
    assert later.changed == {"b"}


def test_pinning():
    nodes = nodes_of(gpu_node("a"), gpu_node("b"), gpu_node("c"))
    plan = place({"m": sim(replicas=3, node_ids=["b"])}, nodes, {}).plans["m"]
    assert set(where(plan).values()) == {"b"}
    assert len({a.port for a in plan.assignments}) == 3


def test_pinned_node_not_registered_yet_is_placed_anyway():
    spec = ModelSpec(model_uid="q", model_name="Qwen/Qwen2.5-0.5B-Instruct", engine="vllm",
                     port=10814, node_ids=["host1"])
    plan = place({"q": spec}, {}, {}).plans["q"]
    (a,) = plan.assignments
    assert (a.node_id, a.port, a.gpu_indices) == ("host1", 10814, [0])
    # Long after, the node still has not registered: the assignment stays (pinned).
    later = place({"q": spec}, {}, {"q": plan}, now=1000.0, last_seen={"host1": 0.0}, grace=10)
    assert later.changed == set()


def test_no_live_node_then_placed_when_capacity_appears():
    plan = place({"m": sim(replicas=2)}, {}, {}).plans["m"]
    assert [u.reason for u in plan.unplaced] == ["no live node", "no live node"]
    assert [u.replica_id for u in plan.unplaced] == ["r0", "r1"]
    nodes = nodes_of(gpu_node("a"))
    placed = place({"m": sim(replicas=2)}, nodes, {"m": plan}).plans["m"]
    assert set(where(placed)) == {"r0", "r1"} and not placed.unplaced
    assert placed.version == plan.version + 1


def test_cordoned_nodes_get_no_new_replicas():
    nodes = nodes_of(gpu_node("a"), gpu_node("b"))
    plan = place({"m": sim(replicas=2)}, nodes, {}, cordoned={"a"}).plans["m"]
    assert set(where(plan).values()) == {"b"}
    all_cordoned = place({"m": sim()}, nodes, {}, cordoned={"a", "b"}).plans["m"]
    assert all_cordoned.unplaced[0].reason == "every live node is cordoned"


def test_drain_adds_replacement_before_removing():
    nodes = nodes_of(gpu_node("a"), gpu_node("b"), gpu_node("c"))
    specs = {"m": sim(replicas=3)}
    plans = place(specs, nodes, {}).plans
    old = where(plans["m"])
    drained_rid = next(r for r, n in old.items() if n == "a")
    # Cordon a: a replacement is added elsewhere, the old one stays until it is ready.
    step = place(specs, nodes, plans, endpoints=ready_all(plans), cordoned={"a"}).plans
    now = where(step["m"])
    assert now[drained_rid] == "a" and len(now) == 4
    new_rid = next(r for r in now if r not in old)
    assert now[new_rid] != "a"
    # Not ready yet: nothing changes.
    eps = ready_all(plans)
    again = place(specs, nodes, step, endpoints=eps, cordoned={"a"})
    assert again.changed == set()
    # Replacement ready: the drained replica goes.
    done = place(specs, nodes, step, endpoints=ready_all(step), cordoned={"a"}).plans
    assert "a" not in where(done["m"]).values() and len(done["m"].assignments) == 3
    # Uncordon: nothing moves back.
    after = place(specs, nodes, done, endpoints=ready_all(done))
    assert after.changed == set()


def test_node_loss_moves_only_after_grace_and_return_does_not_flap():
    nodes = nodes_of(gpu_node("a"), gpu_node("b"), gpu_node("c"))
    specs = {"m": sim(replicas=3)}
    plans = place(specs, nodes, {}, now=0.0).plans
    lost_rid = next(r for r, n in where(plans["m"]).items() if n == "c")
    survivors = nodes_of(gpu_node("a"), gpu_node("b"))
    seen = {"a": 5.0, "b": 5.0, "c": 1.0}
    within = place(specs, survivors, plans, now=5.0, last_seen=seen, grace=10)
    assert within.changed == set()
    past = place(specs, survivors, plans, now=12.0, last_seen=seen, grace=10)
    moved = where(past.plans["m"])
    assert "c" not in moved.values() and len(moved) == 3
    assert lost_rid in moved  # its endpoint expired with c's lease: the id is reused
    assert {r: n for r, n in moved.items() if r != lost_rid} == {
        r: n for r, n in where(plans["m"]).items() if r != lost_rid}
    # c comes back: nothing moves.
    back = place(specs, nodes, past.plans, now=13.0, last_seen={**seen, "c": 13.0}, grace=10)
    assert back.changed == set()


def test_version_increments_on_every_change():
    nodes = nodes_of(gpu_node("a"))
    p1 = place({"m": sim(replicas=1)}, nodes, {}).plans
    p2 = place({"m": sim(replicas=2)}, nodes, p1).plans
    p3 = place({"m": sim(replicas=2, engine_args=["--x"])}, nodes, p2).plans
    assert [p1["m"].version, p2["m"].version, p3["m"].version] == [1, 2, 3]
    assert all(a.engine_args == ["--x"] for a in p3["m"].assignments)


def test_removed_spec_yields_no_plan():
    nodes = nodes_of(gpu_node("a"))
    plans = place({"m": sim()}, nodes, {}).plans
    assert place({}, nodes, plans).plans == {}


def test_drain_of_two_replicas_releases_one_per_ready_replacement():
    nodes = nodes_of(gpu_node("a"), gpu_node("b"), gpu_node("c"))
    specs = {"m": sim(replicas=4)}
    plans = place(specs, nodes, {}).plans
    busy = Counter(where(plans["m"]).values()).most_common(1)[0][0]
    on_busy = sorted(r for r, n in where(plans["m"]).items() if n == busy)
    assert len(on_busy) == 2
    step = place(specs, nodes, plans, endpoints=ready_all(plans), cordoned={busy}).plans
    assert len(step["m"].assignments) == 6  # two replacements, both old ones still serving
    new = [a for a in step["m"].assignments if a.replica_id not in where(plans["m"])]
    assert all(a.node_id != busy for a in new)
    # One replacement ready: exactly one old replica may go, ready capacity stays 4.
    eps = ready_all(plans)
    eps.update(ready_all({"m": PlacementPlan("m", "name-m", "sim", assignments=new[:1])}))
    half = place(specs, nodes, step, endpoints=eps, cordoned={busy}).plans
    left_on_busy = [r for r, n in where(half["m"]).items() if n == busy]
    assert len(left_on_busy) == 1 and len(half["m"].assignments) == 5
    ready_now = sum(1 for a in half["m"].assignments if (("m", a.replica_id) in eps))
    assert ready_now >= 4
