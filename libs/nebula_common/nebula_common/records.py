"""Records stored in etcd: the only shared state between Nebula's roles.

Every record is a JSON object with a ``schema`` version field. Records are
defined here once; every role reads and writes them through these classes.
Decoding checks the type of every field it knows (a value of the wrong type is
a :class:`RecordError`, which :func:`decode_or_skip` turns into one skipped,
logged and counted record); unknown fields are ignored on read so that a newer
writer does not break an older reader.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Generic, Self, TypeVar

from prometheus_client import Counter

log = logging.getLogger(__name__)

INVALID_RECORDS = Counter("nebula_common_records_invalid_total",
                          "Values read from etcd that are not valid records, skipped "
                          "(every such value is also logged with its key).", ["kind"])

SCHEMA_VERSION = 1

ENGINES = ("vllm", "llamacpp", "sim")
"""Engines a node knows how to run."""

GPU_ENGINES = frozenset({"vllm"})
"""Engines that need at least one GPU per replica."""


class RecordError(ValueError):
    """A stored value is not a valid record."""


class _Invalid(Exception):
    """A value that does not fit its field; the path to it grows as the error propagates up."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.path = ""

    def at(self, part: str) -> _Invalid:
        self.path = part + self.path
        return self


Convert = Callable[[Any], Any]
"""Checks one decoded JSON value against a field's type; returns the value to store."""


def _describe(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _scalar(tp: type, what: str) -> Convert:
    # ``type(v) is tp``: bool is an int subclass, and True is not a port number.
    def convert(value: Any) -> Any:
        if type(value) is tp:
            return value
        raise _Invalid(f"expected {what}, got {_describe(value)}")
    return convert


def _float(value: Any) -> float:
    # JSON writes 1.0 as 1: an integer is a valid float, a bool is not.
    if type(value) is float:
        return value
    if type(value) is int:
        return float(value)
    raise _Invalid(f"expected a number, got {_describe(value)}")


def _enum(tp: type[StrEnum]) -> Convert:
    allowed = ", ".join(tp)

    def convert(value: Any) -> Any:
        if type(value) is str:
            try:
                return tp(value)
            except ValueError:
                pass
        raise _Invalid(f"expected one of {allowed}, got {value!r}")
    return convert


def _list(item: Convert) -> Convert:
    def convert(value: Any) -> Any:
        if type(value) is not list:
            raise _Invalid(f"expected a list, got {_describe(value)}")
        out = []
        for i, x in enumerate(value):
            try:
                out.append(item(x))
            except _Invalid as exc:
                raise exc.at(f"[{i}]") from None
        return out
    return convert


def _dict(key: Convert, val: Convert) -> Convert:
    def convert(value: Any) -> Any:
        if type(value) is not dict:
            raise _Invalid(f"expected an object, got {_describe(value)}")
        out = {}
        for k, v in value.items():
            try:
                out[key(k)] = val(v)
            except _Invalid as exc:
                raise exc.at(f"[{k!r}]") from None
        return out
    return convert


def _optional(inner: Convert) -> Convert:
    def convert(value: Any) -> Any:
        return None if value is None else inner(value)
    return convert


_SCALARS: dict[Any, Convert] = {
    str: _scalar(str, "a string"),
    int: _scalar(int, "an integer"),
    bool: _scalar(bool, "true or false"),
    float: _float,
}


def _converter(tp: Any) -> Convert:
    """The check of one annotated type; raises TypeError for a type records cannot hold."""
    if tp is Any:
        return lambda value: value
    if tp in _SCALARS:
        return _SCALARS[tp]
    if isinstance(tp, type) and issubclass(tp, StrEnum):
        return _enum(tp)
    if isinstance(tp, type) and issubclass(tp, Record):
        return tp._decode
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list:
        return _list(_converter(args[0]))
    if origin is dict:
        return _dict(_converter(args[0]), _converter(args[1]))
    if origin in (types.UnionType, typing.Union) and len(args) == 2 and type(None) in args:
        return _optional(_converter(next(a for a in args if a is not type(None))))
    raise TypeError(f"records cannot hold a field of type {tp!r}")


@dataclass(frozen=True)
class _Schema:
    """How to decode one record class, derived once from its field annotations."""

    fields: dict[str, Convert]
    required: frozenset[str]


_schemas: dict[type[Record], _Schema] = {}


def _schema(cls: type[Record]) -> _Schema:
    schema = _schemas.get(cls)
    if schema is None:
        hints = typing.get_type_hints(cls)
        fields = dataclasses.fields(cls)
        schema = _Schema(
            fields={f.name: _converter(hints[f.name]) for f in fields},
            required=frozenset(f.name for f in fields if f.default is dataclasses.MISSING
                               and f.default_factory is dataclasses.MISSING))
        _schemas[cls] = schema
    return schema


@dataclass
class Record:
    """Base class: JSON encoding with a schema version, decoding that checks every field.

    Decoding checks each known field against its annotation (``int`` is an
    integer and not a bool, ``list[Assignment]`` a list of valid assignments...)
    and raises :class:`RecordError` naming the field; unknown fields are ignored.
    """

    KIND: ClassVar[str] = "record"

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["schema"] = SCHEMA_VERSION
        return data

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        try:
            return cls._decode(data)
        except _Invalid as exc:
            raise RecordError(f"{cls.KIND}{exc.path}: {exc.problem}") from None

    @classmethod
    def _decode(cls, data: Any) -> Self:
        if type(data) is not dict:
            raise _Invalid(f"expected an object, got {_describe(data)}")
        schema = _schema(cls)
        if not schema.required <= data.keys():
            missing = min(schema.required - data.keys())
            raise _Invalid("required field is missing").at(f".{missing}")
        kwargs = {}
        for name, value in data.items():
            convert = schema.fields.get(name)
            if convert is None:
                continue  # a newer writer's field: ignored
            try:
                kwargs[name] = convert(value)
            except _Invalid as exc:
                raise exc.at(f".{name}") from None
        return cls(**kwargs)

    @classmethod
    def from_json(cls, raw: bytes | str) -> Self:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RecordError(f"{cls.KIND}: invalid JSON: {exc}") from None
        return cls.from_dict(data)


@dataclass
class ModelSpec(Record):
    """Desired state of one model: what an operator asked to run."""

    KIND: ClassVar[str] = "ModelSpec"

    model_uid: str
    model_name: str
    engine: str = "vllm"
    replicas: int = 1
    engine_args: list[str] = field(default_factory=list)
    gpus_per_replica: int = 0
    gpu_memory_mb: int = 0
    port: int = 10814
    node_ids: list[str] = field(default_factory=list)
    created_at: float = field(default_factory=time.time)
    trust_remote_code: bool = False
    """Lets the engine run code from the model's repository (vLLM's --trust-remote-code)."""
    min_replicas: int = 0
    max_replicas: int = 0
    """Autoscaling bounds (``nebula deploy --min/--max``): with ``max_replicas`` > 0 the
    scheduler chooses the count within them from the routers' queues (``replicas`` is then
    only the starting count); 0 = off, ``replicas`` is pinned (``nebula scale``)."""


@dataclass
class Assignment(Record):
    """One replica of a model placed on one node."""

    KIND: ClassVar[str] = "Assignment"

    replica_id: str
    node_id: str
    port: int
    gpu_indices: list[int] = field(default_factory=list)
    engine_args: list[str] = field(default_factory=list)


@dataclass
class Unplaced(Record):
    """A replica the scheduler could not place, and why."""

    KIND: ClassVar[str] = "Unplaced"

    replica_id: str
    reason: str


@dataclass
class ReplicaFailure(Record):
    """A replica that spent its restart budget on a node, and what replaced it.

    Kept in its plan for a while: it slows down the next replacement (backoff),
    steers replacements away from that node, and tells ``nebula status`` why.
    """

    KIND: ClassVar[str] = "ReplicaFailure"

    replica_id: str
    node_id: str
    reason: str = ""
    failed_at: float = 0.0
    replaced_by: str = ""
    """The replica placed instead ("" while the replacement waits for its backoff)."""


@dataclass
class PlacementPlan(Record):
    """Where every replica of one model runs. Written by the elected scheduler, fenced."""

    KIND: ClassVar[str] = "PlacementPlan"

    model_uid: str
    model_name: str
    engine: str
    version: int = 1
    assignments: list[Assignment] = field(default_factory=list)
    unplaced: list[Unplaced] = field(default_factory=list)
    updated_at: float = field(default_factory=time.time)
    writer: str = ""
    """Identity of the scheduler that wrote this revision of the plan."""
    failures: list[ReplicaFailure] = field(default_factory=list)
    trust_remote_code: bool = False
    """The spec's ``trust_remote_code``, which nodes check engine arguments against."""

    def for_node(self, node_id: str) -> list[Assignment]:
        return [a for a in self.assignments if a.node_id == node_id]


@dataclass
class GpuInfo(Record):
    KIND: ClassVar[str] = "GpuInfo"

    index: int
    name: str = ""
    memory_total_mb: int = 0
    memory_used_mb: int = 0


@dataclass
class NodeStatus(Record):
    """A live node agent, under the node's lease."""

    KIND: ClassVar[str] = "NodeStatus"

    node_id: str
    advertise_host: str
    gpus: list[GpuInfo] = field(default_factory=list)
    engines: list[str] = field(default_factory=lambda: list(ENGINES))
    started_at: float = field(default_factory=time.time)
    port_range: list[int] = field(default_factory=lambda: [10814, 10914])


class EndpointState(StrEnum):
    """Values of ``Endpoint.status``."""

    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"


@dataclass
class Endpoint(Record):
    """A running replica that answers requests, under the node's lease."""

    KIND: ClassVar[str] = "Endpoint"

    model_uid: str
    model_name: str
    replica_id: str
    node_id: str
    base_url: str
    engine: str
    status: EndpointState = EndpointState.READY
    plan_version: int = 0
    reason: str = ""
    log_tail: str = ""
    capabilities: list[str] = field(default_factory=list)
    """What its engine serves (``nebula_common.capabilities``); empty: not declared."""
    max_concurrency: int = 0
    """Requests its engine runs at once, as the engine's adapter declares it (vLLM's
    ``--max-num-seqs``, the sim's ``--max-concurrency``, 1 for llama.cpp); the router's
    admission queue gives each replica that many slots. 0: not declared (unlimited, or a
    node from before the field)."""
    updated_at: float = field(default_factory=time.time)

    @property
    def ref(self) -> str:
        """``<model_uid>/<replica_id>``: how logs and headers name a replica."""
        return f"{self.model_uid}/{self.replica_id}"


@dataclass
class EndpointStats(Record):
    """Load of one replica scraped from its engine's /metrics, under the node's lease."""

    KIND: ClassVar[str] = "EndpointStats"

    running: float = 0.0
    waiting: float = 0.0
    kv_cache_usage: float = 0.0
    prefix_cache_hit_rate: float = 0.0
    updated_at: float = field(default_factory=time.time)


@dataclass
class ModelQueueLoad(Record):
    """One model's admission queue in one router (part of :class:`QueueSignal`)."""

    KIND: ClassVar[str] = "ModelQueueLoad"

    waiting: int = 0
    admitted: int = 0
    """Requests this router has dispatched and not finished."""
    oldest_wait_s: float = 0.0
    max_running_per_replica: int = 0


@dataclass
class QueueSignal(Record):
    """A router's queues, aggregated, at most once a second, under the router's lease
    (``Keys.queue(router_id)``): what the scheduler's autoscaler reads."""

    KIND: ClassVar[str] = "QueueSignal"

    router_id: str
    models: dict[str, ModelQueueLoad] = field(default_factory=dict)
    updated_at: float = field(default_factory=time.time)


@dataclass
class ScaleDecision(Record):
    """The autoscaler's last change of one model's replica count and why, at
    ``Keys.scale_decision(model_uid)``: written by the leading scheduler when it changes the
    count (no lease), shown by ``nebula status``, deleted with the model."""

    KIND: ClassVar[str] = "ScaleDecision"

    model_uid: str
    before: int
    after: int
    reason: str = ""
    decided_at: float = field(default_factory=time.time)


@dataclass
class Cordon(Record):
    """An operator's ``nebula drain`` of one node: no new replicas there, its replicas move.

    Stored at ``Keys.cordon(node_id)`` with no lease, until ``nebula uncordon``.
    """

    KIND: ClassVar[str] = "Cordon"

    node_id: str
    cordoned_at: float = field(default_factory=time.time)


BUDGET_PERIODS = ("day", "month")
"""Periods a key's token budget renews over (UTC calendar days and months)."""


@dataclass
class ApiKey(Record):
    """One API key issued at run time (``nebula keys create``), at ``Keys.api_key(key_id)``.

    Only the SHA-256 of the secret is stored. Limits are 0 when unset (the gateway's
    defaults apply to rpm and concurrency; no tpm and no budget). ``revoked_at`` > 0 makes
    every gateway refuse the key (401); a revoked record stays for the audit trail.
    """

    KIND: ClassVar[str] = "ApiKey"

    key_hash: str
    name: str
    models: list[str] = field(default_factory=list)
    rpm: int = 0
    tpm: int = 0
    concurrency: int = 0
    budget_tokens: int = 0
    budget_period: str = ""
    """One of :data:`BUDGET_PERIODS` when ``budget_tokens`` is set, else empty."""
    priority: str = ""
    created_at: float = field(default_factory=time.time)
    revoked_at: float = 0.0

    @property
    def key_id(self) -> str:
        """The record's id in its key: a prefix of the hash (never the secret)."""
        return self.key_hash[:API_KEY_ID_CHARS]

    @property
    def revoked(self) -> bool:
        return self.revoked_at > 0


API_KEY_ID_CHARS = 16
"""Hex digits of the key's hash that name its record (64 bits: no collisions in practice)."""


EndpointsByReplica = Mapping[tuple[str, str], Endpoint]
"""Registered endpoints keyed by (model_uid, replica_id), as the scheduler and the CLI hold them."""


def serves(endpoints: EndpointsByReplica, model_uid: str, assignment: Assignment) -> bool:
    """True when the assigned replica answers ``ready`` on the node the plan put it on.

    An endpoint of the same replica id on another node is an old copy still
    draining, not this assignment.
    """
    ep = endpoints.get((model_uid, assignment.replica_id))
    return (ep is not None and ep.node_id == assignment.node_id
            and ep.status == EndpointState.READY)


def ready_replicas(plan: PlacementPlan, endpoints: EndpointsByReplica) -> list[Assignment]:
    """The assignments of ``plan`` that are ready where the plan put them."""
    return [a for a in plan.assignments if serves(endpoints, plan.model_uid, a)]


def identity_conflict(model_uid: str, model_name: str, others: Iterable[ModelSpec]
                      ) -> str | None:
    """Why a model ``model_uid`` named ``model_name`` cannot join ``others``, or None.

    Clients ask for a model by uid or by name, and keys are allowed per model, so
    each uid and each name must mean one model: a uid that is another model's name
    would be served to keys allowed only the other one. ``others`` may include the
    model itself (a redeploy), which is no conflict.
    """
    for other in others:
        if other.model_uid == model_uid:
            continue
        if model_uid == other.model_name:
            return f"model uid {model_uid!r} is the name of model {other.model_uid!r}"
        if model_name == other.model_uid:
            return f"model name {model_name!r} is the uid of another model"
        if model_name == other.model_name:
            return f"model name {model_name!r} is already the name of model {other.model_uid!r}"
    return None


R = TypeVar("R", bound=Record)


def decode_or_skip(cls: type[R], key: str, raw: bytes | str) -> R | None:
    """The record stored at ``key``, or None when it is not a valid ``cls``.

    One bad value must cost only itself: it is logged with its key, counted in
    ``nebula_common_records_invalid_total{kind}``, and skipped, so every other record
    keeps being served.
    """
    try:
        return cls.from_json(raw)
    except RecordError as exc:
        INVALID_RECORDS.labels(cls.KIND).inc()
        log.warning("skipping invalid record at %s: %s", key, exc)
        return None


class RecordCache(Generic[R]):
    """Records of one kind under a prefix, each value decoded once while it is unchanged.

    Level-triggered loops decode a whole mirror on every pass; with this an
    unchanged value costs a dict lookup, and a bad one is logged and counted
    once per stored value instead of once per pass.
    """

    def __init__(self, cls: type[R]) -> None:
        self.cls = cls
        self._items: dict[str, tuple[bytes, R | None]] = {}

    def get(self, key: str, raw: bytes) -> R | None:
        """The record at ``key``, or None when its value is invalid (see :func:`decode_or_skip`)."""
        hit = self._items.get(key)
        if hit is not None and hit[0] == raw:
            return hit[1]
        record = decode_or_skip(self.cls, key, raw)
        self._items[key] = (raw, record)
        return record

    def decode(self, items: Mapping[str, bytes]) -> tuple[dict[str, R], set[str]]:
        """Every valid record by key and the keys whose value is invalid; forgets the rest."""
        good: dict[str, R] = {}
        bad: set[str] = set()
        for key, raw in items.items():
            record = self.get(key, raw)
            if record is None:
                bad.add(key)
            else:
                good[key] = record
        if len(self._items) > len(items):
            for key in [k for k in self._items if k not in items]:
                del self._items[key]
        return good, bad
