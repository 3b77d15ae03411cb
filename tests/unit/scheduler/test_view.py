"""Decoding etcd values into a ClusterView: a bad value costs only itself."""

from __future__ import annotations

import json

from nebula_common.keys import Keys
from nebula_common.records import (
    INVALID_RECORDS,
    Assignment,
    Cordon,
    Endpoint,
    ModelSpec,
    NodeStatus,
    PlacementPlan,
)
from nebula_scheduler.cli import render_status, status_data
from nebula_scheduler.placement import place
from nebula_scheduler.view import ClusterView, ViewDecoder

KEYS = Keys()
GOOD = PlacementPlan("good", "org/good", "sim", version=3,
                     assignments=[Assignment("r0", "n1", 10814)], updated_at=1.0)
BAD_PLAN = json.dumps({**json.loads(GOOD.to_json()), "model_uid": "bad",
                       "assignments": 5}).encode()


def raw_state() -> dict[str, dict[str, bytes]]:
    """The same stored bytes on every call (timestamps fixed), as an unchanged etcd holds."""
    ep = Endpoint("good", "org/good", "r0", "n1", "http://h:10814", "sim", updated_at=1.0)
    bad_ep = json.dumps({**json.loads(ep.to_json()), "replica_id": "r1", "status": 7}).encode()
    return {
        "models": {KEYS.model("good"): ModelSpec("good", "org/good", "sim",
                                                 created_at=1.0).to_json(),
                   KEYS.model("bad"): ModelSpec("bad", "org/bad", "sim", created_at=1.0).to_json(),
                   KEYS.model("worse"): b'{"model_uid": "worse", "model_name": "w", '
                                        b'"replicas": "x"}'},
        "nodes": {KEYS.node("n1"): NodeStatus("n1", "127.0.0.1", started_at=1.0).to_json(),
                  KEYS.node("n2"): b'{"node_id": "n2", "advertise_host": "h", "gpus": 3}'},
        "plans": {KEYS.placement("good"): GOOD.to_json(), KEYS.placement("bad"): BAD_PLAN},
        "endpoints": {KEYS.endpoint("good", "r0"): ep.to_json(),
                      KEYS.endpoint("good", "r1"): bad_ep},
        "cordons": {KEYS.cordon("n3"): Cordon("n3", 5.0).to_json(),
                    KEYS.cordon("n4"): b"not json"},
    }


def decode(decoder: ViewDecoder | None = None) -> ClusterView:
    raw = raw_state()
    return (decoder or ViewDecoder(KEYS)).decode(raw["models"], raw["nodes"], raw["plans"],
                                                 raw["endpoints"], raw["cordons"])


def test_every_bad_value_is_skipped_and_every_good_one_kept() -> None:
    view = decode()
    assert set(view.specs) == {"good", "bad"}  # "worse" has replicas: "x"
    assert set(view.nodes) == {"n1"}  # n2's gpus is a number
    assert view.plans == {"good": GOOD} and view.invalid_plans == {"bad"}
    assert list(view.endpoints) == [("good", "r0")]  # r1's status is 7
    # A cordon key cordons its node even when its value is unreadable.
    assert view.cordoned == {"n3", "n4"}
    assert view.cordons["n3"] == Cordon("n3", 5.0) and view.cordons["n4"] is None


def test_a_decoder_logs_and_counts_each_bad_value_once_across_passes() -> None:
    decoder = ViewDecoder(KEYS)
    before = {kind: INVALID_RECORDS.labels(kind)._value.get()
              for kind in ("PlacementPlan", "Endpoint", "ModelSpec", "NodeStatus", "Cordon")}
    for _ in range(5):
        decode(decoder)
    after = {kind: INVALID_RECORDS.labels(kind)._value.get() for kind in before}
    assert {kind: after[kind] - before[kind] for kind in before} == dict.fromkeys(before, 1)


def test_the_good_model_is_still_placed_and_shown_next_to_the_bad_plan() -> None:
    view = decode()
    specs = {u: s for u, s in view.specs.items() if u not in view.invalid_plans}
    result = place(specs, view.nodes, view.plans, view.endpoints, view.cordoned)
    assert set(result.plans) == {"good"} and not result.changed
    data = status_data(view, now=10.0)
    models = {m["model_uid"]: m for m in data["models"]}
    assert models["bad"]["plan_invalid"] and not models["good"]["plan_invalid"]
    assert models["good"]["ready"] == 1
    assert "(stored plan invalid)" in render_status(data)
