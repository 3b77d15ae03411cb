"""`nebula status` data and table from a ClusterView: pure, no etcd."""

from __future__ import annotations

from nebula_common.keys import Keys
from nebula_common.records import (
    Assignment,
    Cordon,
    Endpoint,
    GpuInfo,
    ModelSpec,
    NodeStatus,
    PlacementPlan,
    Unplaced,
)
from nebula_scheduler.cli import build_parser, render_status, status_data
from nebula_scheduler.view import ClusterView


def make_view() -> ClusterView:
    keys = Keys()
    spec = ModelSpec(model_uid="m", model_name="org/m", engine="sim", replicas=3)
    plan = PlacementPlan(model_uid="m", model_name="org/m", engine="sim", version=4,
                         assignments=[Assignment("r0", "a", 10814), Assignment("r1", "b", 10814)],
                         unplaced=[Unplaced("r2", "no node with 1 free GPU")])
    ep = Endpoint(model_uid="m", model_name="org/m", replica_id="r0", node_id="a",
                  base_url="http://127.0.0.1:10814", engine="sim")
    node_a = NodeStatus(node_id="a", advertise_host="10.0.0.1", started_at=100.0,
                        gpus=[GpuInfo(index=0, name="H100")])
    return ClusterView.decode(
        keys,
        models={keys.model("m"): spec.to_json(), keys.model("bad"): b"not json"},
        nodes={keys.node("a"): node_a.to_json()},
        plans={keys.placement("m"): plan.to_json()},
        endpoints={keys.endpoint("m", "r0"): ep.to_json()},
        cordons={keys.cordon("a"): Cordon(node_id="a", cordoned_at=150.0).to_json()},
    )


def test_status_data_states_and_counts() -> None:
    data = status_data(make_view(), now=160.0)
    assert data["nodes"] == [{
        "node_id": "a", "host": "10.0.0.1", "live": True, "gpus": 1, "gpu_names": ["H100"],
        "engines": ["vllm", "llamacpp", "sim"], "age_s": 60.0, "cordoned": True,
        "replicas": 1}]
    (model,) = data["models"]
    assert (model["desired"], model["placed"], model["ready"], model["plan_version"]) == \
        (3, 2, 1, 4)
    states = {r["replica_id"]: (r["state"], r["reason"]) for r in data["replicas"]}
    assert states["r0"] == ("ready", "node cordoned: replacement pending")
    assert states["r1"] == ("starting", "node not live")
    assert states["r2"] == ("unplaced", "no node with 1 free GPU")


def test_render_status_table() -> None:
    text = render_status(status_data(make_view(), now=160.0))
    assert text.startswith("NODES\nNODE")
    assert "3/2/1" in text and "m/r2" in text and "no node with 1 free GPU" in text


def test_cli_parser_commands() -> None:
    args = build_parser().parse_args(["deploy", "u", "--model", "x", "--engine", "sim",
                                      "--replicas", "4", "--node", "a", "--node", "b"])
    assert (args.command, args.replicas, args.node) == ("deploy", 4, ["a", "b"])
    assert build_parser().parse_args(["scale", "u", "2"]).replicas == 2
