"""Records stored in etcd: the only shared state between Nebula's roles.

Every record is a JSON object with a ``schema`` version field. Records are
defined here once; every role reads and writes them through these classes.
Unknown fields are ignored on read so that a newer writer does not break an
older reader.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Self, TypeVar

from prometheus_client import Counter

log = logging.getLogger(__name__)

INVALID_RECORDS = Counter("nebula_records_invalid_total",
                          "Values read from etcd that are not valid records, skipped "
                          "(every such value is also logged with its key).", ["kind"])

SCHEMA_VERSION = 1

ENGINES = ("vllm", "llamacpp", "sim")
"""Engines a node knows how to run."""

GPU_ENGINES = frozenset({"vllm"})
"""Engines that need at least one GPU per replica."""


class RecordError(ValueError):
    """A stored value is not a valid record."""


@dataclass
class Record:
    """Base class: JSON encoding with a schema version and tolerant decoding."""

    KIND: ClassVar[str] = "record"

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["schema"] = SCHEMA_VERSION
        return data

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        if not isinstance(data, dict):
            raise RecordError(f"{cls.KIND}: expected an object, got {type(data).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        try:
            record = cls(**kwargs)
        except TypeError as exc:
            raise RecordError(f"{cls.KIND}: {exc}") from None
        record._decode_nested()
        return record

    @classmethod
    def from_json(cls, raw: bytes | str) -> Self:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RecordError(f"{cls.KIND}: invalid JSON: {exc}") from None
        return cls.from_dict(data)

    def _decode_nested(self) -> None:
        """Turn nested plain dicts into records; overridden where needed."""


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
class PlacementPlan(Record):
    """Where every replica of one model runs. Written by the scheduler with CAS."""

    KIND: ClassVar[str] = "PlacementPlan"

    model_uid: str
    model_name: str
    engine: str
    version: int = 1
    assignments: list[Assignment] = field(default_factory=list)
    unplaced: list[Unplaced] = field(default_factory=list)
    updated_at: float = field(default_factory=time.time)

    def _decode_nested(self) -> None:
        self.assignments = [
            a if isinstance(a, Assignment) else Assignment.from_dict(a) for a in self.assignments
        ]
        self.unplaced = [
            u if isinstance(u, Unplaced) else Unplaced.from_dict(u) for u in self.unplaced
        ]

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

    def _decode_nested(self) -> None:
        self.gpus = [g if isinstance(g, GpuInfo) else GpuInfo.from_dict(g) for g in self.gpus]


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
    status: str = EndpointState.READY
    plan_version: int = 0
    reason: str = ""
    log_tail: str = ""
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


R = TypeVar("R", bound=Record)


def decode_or_skip(cls: type[R], key: str, raw: bytes | str) -> R | None:
    """The record stored at ``key``, or None when it is not a valid ``cls``.

    One bad value must cost only itself: it is logged with its key, counted in
    ``nebula_records_invalid_total{kind}``, and skipped, so every other record
    keeps being served.
    """
    try:
        return cls.from_json(raw)
    except RecordError as exc:
        INVALID_RECORDS.labels(cls.KIND).inc()
        log.warning("skipping invalid record at %s: %s", key, exc)
        return None
