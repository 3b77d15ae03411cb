"""Records round-trip through JSON, carry a schema version and tolerate unknown fields."""

import json

import pytest

from nebula_common.keys import Keys
from nebula_common.records import (
    SCHEMA_VERSION,
    Assignment,
    Endpoint,
    NodeStatus,
    PlacementPlan,
    RecordError,
)


def test_plan_round_trip_keeps_nested_assignments() -> None:
    plan = PlacementPlan(model_uid="m", model_name="org/M", engine="sim", version=3,
                         assignments=[Assignment("r0", "n1", 10814, [0, 1], ["--x"])])
    decoded = PlacementPlan.from_json(plan.to_json())
    assert decoded == plan
    assert isinstance(decoded.assignments[0], Assignment)
    assert json.loads(plan.to_json())["schema"] == SCHEMA_VERSION


def test_unknown_fields_are_ignored_and_missing_required_fail() -> None:
    raw = json.dumps({"schema": 9, "node_id": "n", "advertise_host": "h", "future": 1})
    assert NodeStatus.from_json(raw).node_id == "n"
    with pytest.raises(RecordError):
        Endpoint.from_json(json.dumps({"model_uid": "m"}))
    with pytest.raises(RecordError):
        Endpoint.from_json(b"{not json")
    with pytest.raises(RecordError):
        Endpoint.from_json(b"[1, 2]")


def test_plan_for_node_filters_assignments() -> None:
    plan = PlacementPlan("m", "M", "sim", assignments=[
        Assignment("r0", "a", 1), Assignment("r1", "b", 2), Assignment("r2", "a", 3)])
    assert [a.replica_id for a in plan.for_node("a")] == ["r0", "r2"]


def test_keys_default_prefix_matches_the_documented_schema() -> None:
    keys = Keys()
    assert keys.placement("qwen") == "/placements/qwen"
    assert keys.endpoint("qwen", "r0") == "/endpoints/qwen/r0"
    assert keys.endpoint_stats("qwen", "r0") == "/stats/qwen/r0"
    assert keys.node("n1") == "/nodes/n1"
    assert keys.model("qwen") == "/models/qwen"
    assert keys.election == "/election/scheduler"


def test_keys_prefix_and_parsing() -> None:
    keys = Keys("/test1/")
    key = keys.endpoint("m", "r1")
    assert key == "/test1/endpoints/m/r1"
    assert keys.split_replica_key(key, keys.endpoints) == ("m", "r1")
    with pytest.raises(ValueError):
        keys.split_replica_key("/test1/endpoints/m", keys.endpoints)
    with pytest.raises(ValueError):
        keys.tail("/other/x", keys.endpoints)
