"""Records round-trip through JSON, carry a schema version, tolerate unknown fields and
refuse a known field of the wrong type."""

import dataclasses
import json
import typing
from typing import Any

import pytest

from nebula_common.keys import Keys
from nebula_common.records import (
    INVALID_RECORDS,
    SCHEMA_VERSION,
    ApiKey,
    Assignment,
    Cordon,
    Endpoint,
    EndpointState,
    EndpointStats,
    GpuInfo,
    ModelQueueLoad,
    ModelSpec,
    NodeStatus,
    PlacementPlan,
    QueueSignal,
    Record,
    RecordCache,
    RecordError,
    ReplicaFailure,
    ScaleDecision,
    Unplaced,
    decode_or_skip,
    identity_conflict,
    ready_replicas,
    serves,
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
    assert keys.api_key("0123456789abcdef") == "/keys/0123456789abcdef"


def test_an_endpoint_from_an_older_node_declares_no_concurrency() -> None:
    old = {"model_uid": "m", "model_name": "M", "replica_id": "r0", "node_id": "n1",
           "base_url": "http://h:1", "engine": "vllm"}
    assert Endpoint.from_dict(old).max_concurrency == 0
    assert Keys().scale_decision("m") == "/autoscale/m"


def test_keys_prefix_and_parsing() -> None:
    keys = Keys("/test1/")
    key = keys.endpoint("m", "r1")
    assert key == "/test1/endpoints/m/r1"
    assert keys.split_replica_key(key, keys.endpoints) == ("m", "r1")
    with pytest.raises(ValueError):
        keys.split_replica_key("/test1/endpoints/m", keys.endpoints)
    with pytest.raises(ValueError):
        keys.tail("/other/x", keys.endpoints)


# -- typed decoding: every field of every record ------------------------------------------
VALID: dict[type[Record], dict[str, Any]] = {
    ApiKey: {"key_hash": "ab" * 32, "name": "team-a", "models": ["m"], "rpm": 60, "tpm": 1000,
             "concurrency": 4, "budget_tokens": 10_000, "budget_period": "day",
             "priority": "gold", "created_at": 1.5, "revoked_at": 0.0},
    ModelSpec: {"model_uid": "m", "model_name": "org/M", "engine": "sim", "replicas": 2,
                "engine_args": ["--x"], "gpus_per_replica": 1, "gpu_memory_mb": 100,
                "port": 10814, "node_ids": ["n1"], "created_at": 1.5, "trust_remote_code": True},
    Assignment: {"replica_id": "r0", "node_id": "n1", "port": 10814, "gpu_indices": [0],
                 "engine_args": ["--x"]},
    Unplaced: {"replica_id": "r1", "reason": "no live node"},
    ReplicaFailure: {"replica_id": "r0", "node_id": "n1", "reason": "engine exited",
                     "failed_at": 7.0, "replaced_by": "r2"},
    PlacementPlan: {"model_uid": "m", "model_name": "org/M", "engine": "sim", "version": 2,
                    "assignments": [{"replica_id": "r0", "node_id": "n1", "port": 1}],
                    "unplaced": [{"replica_id": "r1", "reason": "full"}], "updated_at": 2.0,
                    "trust_remote_code": False},
    GpuInfo: {"index": 0, "name": "H100", "memory_total_mb": 80000, "memory_used_mb": 1},
    NodeStatus: {"node_id": "n1", "advertise_host": "10.0.0.1", "gpus": [{"index": 0}],
                 "engines": ["sim"], "started_at": 3.0, "port_range": [1, 2]},
    Endpoint: {"model_uid": "m", "model_name": "org/M", "replica_id": "r0", "node_id": "n1",
               "base_url": "http://10.0.0.1:1", "engine": "sim", "status": "draining",
               "plan_version": 2, "reason": "", "log_tail": "", "max_concurrency": 8,
               "updated_at": 4.0},
    EndpointStats: {"running": 1.0, "waiting": 0.0, "kv_cache_usage": 0.5,
                    "prefix_cache_hit_rate": 0.25, "updated_at": 5.0},
    Cordon: {"node_id": "n1", "cordoned_at": 6.0},
    ModelQueueLoad: {"waiting": 3, "admitted": 8, "oldest_wait_s": 1.5,
                     "max_running_per_replica": 8},
    QueueSignal: {"router_id": "r-1", "models": {"m": {"waiting": 1, "admitted": 2}},
                  "updated_at": 7.0},
    ScaleDecision: {"model_uid": "m", "before": 1, "after": 3, "reason": "5 waiting for 10s",
                    "decided_at": 8.0},
}


def wrong_values(annotation: Any) -> list[Any]:
    """Values that a field of this type must refuse (JSON can carry every one of them)."""
    origin = typing.get_origin(annotation)
    if annotation is str:
        return [7, None, ["a"]]
    if annotation is int:
        return ["x", 1.5, True, None]
    if annotation is float:
        return ["x", False, None, [1.0]]
    if annotation is bool:
        return [1, "true", None]
    if annotation is EndpointState:
        return [7, "sleeping", None]
    if origin is list:
        (item,) = typing.get_args(annotation)
        return [5, "abc", {"a": 1}, *[[bad] for bad in wrong_values(item)[:1]]]
    if origin is dict:
        _, value = typing.get_args(annotation)
        return [5, "abc", [1], *[{"k": bad} for bad in wrong_values(value)[:1]]]
    if isinstance(annotation, type) and issubclass(annotation, Record):
        return [5, "x", [], {}]
    raise AssertionError(f"no wrong values for {annotation!r}: extend this test")


def all_records() -> list[type[Record]]:
    """Every record class nebula_common defines (not the test-local ones below)."""
    found, todo = [], list(Record.__subclasses__())
    while todo:
        cls = todo.pop()
        if cls.__module__ == "nebula_common.records":
            found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def test_every_record_class_has_a_valid_sample_that_round_trips() -> None:
    assert set(all_records()) == set(VALID), "a new record needs a sample in VALID"
    for cls, data in VALID.items():
        record = cls.from_dict(data)
        assert cls.from_json(record.to_json()) == record


CASES = [(cls, f.name, bad) for cls in VALID
         for f in dataclasses.fields(cls)
         for bad in wrong_values(typing.get_type_hints(cls)[f.name])]


@pytest.mark.parametrize("cls,name,bad", CASES,
                         ids=[f"{c.KIND}.{n}={b!r}" for c, n, b in CASES])
def test_a_field_of_the_wrong_type_is_a_record_error_naming_it(
        cls: type[Record], name: str, bad: Any) -> None:
    data = {**VALID[cls], name: bad}
    with pytest.raises(RecordError, match=rf"^{cls.KIND}\.{name}\b"):
        cls.from_dict(data)
    with pytest.raises(RecordError):
        cls.from_json(json.dumps(data))


@pytest.mark.parametrize("cls", list(VALID), ids=lambda c: c.KIND)
def test_a_missing_required_field_is_a_record_error(cls: type[Record]) -> None:
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    for name in required:
        data = {k: v for k, v in VALID[cls].items() if k != name}
        with pytest.raises(RecordError, match=rf"{cls.KIND}\.{name}: required"):
            cls.from_dict(data)


def test_the_values_that_froze_the_control_plane_are_refused_with_a_path() -> None:
    plan = {**VALID[PlacementPlan], "assignments": 5}
    with pytest.raises(RecordError, match=r"PlacementPlan\.assignments: expected a list, got int"):
        PlacementPlan.from_dict(plan)
    nested = {**VALID[PlacementPlan], "assignments": [VALID[Assignment],
                                                      {**VALID[Assignment], "port": "80"}]}
    with pytest.raises(RecordError, match=r"PlacementPlan\.assignments\[1\]\.port: expected an "
                                          r"integer, got str"):
        PlacementPlan.from_dict(nested)
    with pytest.raises(RecordError, match=r"Endpoint\.status: expected one of ready, draining, "
                                          r"failed, got 7"):
        Endpoint.from_dict({**VALID[Endpoint], "status": 7})
    with pytest.raises(RecordError, match=r"ModelSpec\.replicas: expected an integer, got str"):
        ModelSpec.from_dict({**VALID[ModelSpec], "replicas": "x"})


def test_decoded_values_have_their_declared_types() -> None:
    ep = Endpoint.from_dict({**VALID[Endpoint], "updated_at": 4})
    assert ep.status is EndpointState.DRAINING
    assert type(ep.updated_at) is float  # JSON's 4 for 4.0 is a valid float
    node = NodeStatus.from_dict(VALID[NodeStatus])
    assert isinstance(node.gpus[0], GpuInfo)


def test_decode_or_skip_logs_counts_and_returns_none(caplog: pytest.LogCaptureFixture) -> None:
    before = INVALID_RECORDS.labels("PlacementPlan")._value.get()
    raw = json.dumps({**VALID[PlacementPlan], "assignments": 5})
    assert decode_or_skip(PlacementPlan, "/placements/m", raw) is None
    assert INVALID_RECORDS.labels("PlacementPlan")._value.get() == before + 1
    assert "/placements/m" in caplog.text and "assignments" in caplog.text
    assert decode_or_skip(PlacementPlan, "/placements/m", json.dumps(VALID[PlacementPlan]))


def test_record_cache_decodes_each_value_once_and_forgets_deleted_keys() -> None:
    cache: RecordCache[Cordon] = RecordCache(Cordon)
    good, bad = json.dumps(VALID[Cordon]).encode(), b'{"node_id": 5}'
    before = INVALID_RECORDS.labels("Cordon")._value.get()
    for _ in range(3):
        records, invalid = cache.decode({"/cordon/n1": good, "/cordon/n2": bad})
        assert list(records) == ["/cordon/n1"] and invalid == {"/cordon/n2"}
    assert INVALID_RECORDS.labels("Cordon")._value.get() == before + 1  # once, not per pass
    first = records["/cordon/n1"]
    assert cache.decode({"/cordon/n1": good})[0]["/cordon/n1"] is first
    changed = json.dumps({**VALID[Cordon], "cordoned_at": 7.0}).encode()
    assert cache.get("/cordon/n1", changed).cordoned_at == 7.0
    assert cache.decode({}) == ({}, set()) and cache._items == {}


def test_ready_replicas_are_ready_on_the_node_the_plan_chose() -> None:
    plan = PlacementPlan("m", "M", "sim", assignments=[
        Assignment("r0", "a", 1), Assignment("r1", "b", 2), Assignment("r2", "a", 3),
        Assignment("r3", "a", 4)])

    def ep(rid: str, node: str, status: EndpointState) -> Endpoint:
        return Endpoint("m", "M", rid, node, "http://h:1", "sim", status=status)

    endpoints = {("m", "r0"): ep("r0", "a", EndpointState.READY),
                 ("m", "r1"): ep("r1", "c", EndpointState.READY),  # an old copy elsewhere
                 ("m", "r2"): ep("r2", "a", EndpointState.DRAINING),
                 ("other", "r3"): ep("r3", "a", EndpointState.READY)}
    assert [a.replica_id for a in ready_replicas(plan, endpoints)] == ["r0"]
    assert serves(endpoints, "m", plan.assignments[0])
    assert not serves(endpoints, "m", plan.assignments[3])


@dataclasses.dataclass
class Labelled(Record):
    """A record with the field types no stored record uses yet: maps and optional values."""

    KIND: typing.ClassVar[str] = "Labelled"

    labels: dict[str, int] = dataclasses.field(default_factory=dict)
    note: str | None = None


def test_maps_and_optional_fields_are_checked_too() -> None:
    record = Labelled.from_dict({"labels": {"a": 1}, "note": None})
    assert record == Labelled({"a": 1}, None)
    assert Labelled.from_dict({"note": "x"}).note == "x"
    for bad, where in (({"labels": [1]}, r"Labelled\.labels: expected an object"),
                       ({"labels": {"a": "1"}}, r"Labelled\.labels\['a'\]: expected an integer"),
                       ({"note": 3}, r"Labelled\.note: expected a string")):
        with pytest.raises(RecordError, match=where):
            Labelled.from_dict(bad)


def test_a_record_field_of_an_unsupported_type_is_refused_at_first_use() -> None:
    @dataclasses.dataclass
    class Odd(Record):
        KIND: typing.ClassVar[str] = "Odd"
        when: tuple[int, int] = (0, 0)

    with pytest.raises(TypeError, match="records cannot hold a field of type"):
        Odd.from_dict({})


def test_trust_remote_code_defaults_off_in_specs_and_plans() -> None:
    assert ModelSpec.from_dict({"model_uid": "m", "model_name": "n"}).trust_remote_code is False
    assert PlacementPlan.from_dict({"model_uid": "m", "model_name": "n",
                                    "engine": "vllm"}).trust_remote_code is False


def spec(uid: str, name: str) -> ModelSpec:
    return ModelSpec(model_uid=uid, model_name=name)


@pytest.mark.parametrize(("uid", "name", "problem"), [
    ("b", "Org/New", "model uid 'b' is the name of model 'a'"),   # uid == another's name
    ("c", "a", "model name 'a' is the uid of another model"),      # name == another's uid
    ("c", "b", "model name 'b' is already the name of model 'a'"),  # two models, one name
])
def test_a_uid_or_name_that_means_another_model_is_refused(uid: str, name: str,
                                                           problem: str) -> None:
    assert identity_conflict(uid, name, [spec("a", "b")]) == problem


def test_a_redeploy_and_distinct_models_are_no_conflict() -> None:
    others = [spec("a", "Org/A"), spec("q", "q")]
    assert identity_conflict("a", "Org/A2", others) is None  # the same uid: an update
    assert identity_conflict("q", "q", others) is None  # uid == its own name is fine
    assert identity_conflict("c", "Org/C", others) is None
