"""Decoding what is under the etcd prefixes into records, for the reconciler and the CLI."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from nebula_common.keys import Keys
from nebula_common.records import (
    Endpoint,
    ModelSpec,
    NodeStatus,
    PlacementPlan,
    RecordError,
)
from nebula_common.store import EtcdStore

log = logging.getLogger(__name__)


@dataclass
class ClusterView:
    """Specs, nodes, plans (with their mod_revision), endpoints and cordons at one moment."""

    specs: dict[str, ModelSpec] = field(default_factory=dict)
    nodes: dict[str, NodeStatus] = field(default_factory=dict)
    plans: dict[str, PlacementPlan] = field(default_factory=dict)
    plan_raw: dict[str, bytes] = field(default_factory=dict)
    endpoints: dict[tuple[str, str], Endpoint] = field(default_factory=dict)
    cordoned: set[str] = field(default_factory=set)

    @classmethod
    def decode(
        cls,
        keys: Keys,
        models: Mapping[str, bytes],
        nodes: Mapping[str, bytes],
        plans: Mapping[str, bytes],
        endpoints: Mapping[str, bytes],
        cordons: Mapping[str, bytes],
    ) -> ClusterView:
        """Build from raw key -> value maps; undecodable values are logged and skipped."""
        view = cls()
        for key, raw in models.items():
            spec = _decode(ModelSpec, key, raw)
            if spec is not None:
                view.specs[Keys.tail(key, keys.models)] = spec
        for key, raw in nodes.items():
            node = _decode(NodeStatus, key, raw)
            if node is not None:
                view.nodes[Keys.tail(key, keys.nodes)] = node
        for key, raw in plans.items():
            plan = _decode(PlacementPlan, key, raw)
            if plan is not None:
                uid = Keys.tail(key, keys.placements)
                view.plans[uid] = plan
                view.plan_raw[uid] = raw
        for key, raw in endpoints.items():
            ep = _decode(Endpoint, key, raw)
            if ep is None:
                continue
            try:
                view.endpoints[keys.split_replica_key(key, keys.endpoints)] = ep
            except ValueError:
                continue
        view.cordoned = {Keys.tail(key, keys.cordons) for key in cordons}
        return view

    @classmethod
    async def read(cls, store: EtcdStore, keys: Keys) -> ClusterView:
        """One consistent-enough read of every prefix (used by the seed form and the CLI)."""
        raw: dict[str, dict[str, bytes]] = {}
        for name, prefix in (("models", keys.models), ("nodes", keys.nodes),
                             ("plans", keys.placements), ("endpoints", keys.endpoints),
                             ("cordons", keys.cordons)):
            kvs, _ = await store.get_prefix(prefix)
            raw[name] = {kv.key: kv.value for kv in kvs}
        return cls.decode(keys, raw["models"], raw["nodes"], raw["plans"], raw["endpoints"],
                          raw["cordons"])


def _decode(cls, key: str, raw: bytes):  # type: ignore[no-untyped-def]
    try:
        return cls.from_json(raw)
    except RecordError as exc:
        log.warning("ignoring invalid record at %s: %s", key, exc)
        return None
