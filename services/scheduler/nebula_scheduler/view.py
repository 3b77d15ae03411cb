"""Decoding what is under the etcd prefixes into records, for the reconciler and the CLI.

A value that is not a valid record costs only itself: it is skipped, logged and
counted (``nebula_common_records_invalid_total``) and every other record is used. Two
kinds are not simply skipped, because skipping would act on garbage: a plan
that cannot be read is *protected* (its model is neither re-placed nor
rewritten: a newer scheduler may have written it), and a cordon key cordons
its node whatever its value says.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from nebula_common.keys import Keys
from nebula_common.records import (
    Cordon,
    Endpoint,
    ModelSpec,
    NodeStatus,
    PlacementPlan,
    RecordCache,
    ScaleDecision,
    decode_or_skip,
)
from nebula_common.store import EtcdStore


@dataclass
class ClusterView:
    """Specs, nodes, plans (with their stored bytes), endpoints and cordons at one moment."""

    specs: dict[str, ModelSpec] = field(default_factory=dict)
    nodes: dict[str, NodeStatus] = field(default_factory=dict)
    plans: dict[str, PlacementPlan] = field(default_factory=dict)
    plan_raw: dict[str, bytes] = field(default_factory=dict)
    invalid_plans: set[str] = field(default_factory=set)
    """Model uids whose stored plan is not a valid record: left alone until it is fixed."""
    endpoints: dict[tuple[str, str], Endpoint] = field(default_factory=dict)
    cordons: dict[str, Cordon | None] = field(default_factory=dict)
    """Cordoned node ids, with their record (None when the stored value is invalid)."""
    decisions: dict[str, ScaleDecision] = field(default_factory=dict)
    """The autoscaler's last decision per model uid (read by the CLI only)."""

    @property
    def cordoned(self) -> set[str]:
        return set(self.cordons)

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
        """Build from raw key -> value maps once (a loop keeps a :class:`ViewDecoder`)."""
        return ViewDecoder(keys).decode(models, nodes, plans, endpoints, cordons)

    @classmethod
    async def read(cls, store: EtcdStore, keys: Keys) -> ClusterView:
        """One consistent-enough read of every prefix (used by the seed form and the CLI)."""
        raw: dict[str, dict[str, bytes]] = {}
        for name, prefix in (("models", keys.models), ("nodes", keys.nodes),
                             ("plans", keys.placements), ("endpoints", keys.endpoints),
                             ("cordons", keys.cordons)):
            kvs, _ = await store.get_prefix(prefix)
            raw[name] = {kv.key: kv.value for kv in kvs}
        view = cls.decode(keys, raw["models"], raw["nodes"], raw["plans"], raw["endpoints"],
                          raw["cordons"])
        kvs, _ = await store.get_prefix(keys.autoscale)
        view.decisions = {Keys.tail(kv.key, keys.autoscale): d for kv in kvs
                          if (d := decode_or_skip(ScaleDecision, kv.key, kv.value)) is not None}
        return view


class ViewDecoder:
    """Turns the mirrored prefixes into a :class:`ClusterView`, pass after pass.

    Each stored value is decoded once while it is unchanged (the reconciler builds
    a view every second), so an invalid one is logged and counted once.
    """

    def __init__(self, keys: Keys) -> None:
        self.keys = keys
        self._specs = RecordCache(ModelSpec)
        self._nodes = RecordCache(NodeStatus)
        self._plans = RecordCache(PlacementPlan)
        self._endpoints = RecordCache(Endpoint)
        self._cordons = RecordCache(Cordon)

    def decode(self, models: Mapping[str, bytes], nodes: Mapping[str, bytes],
               plans: Mapping[str, bytes], endpoints: Mapping[str, bytes],
               cordons: Mapping[str, bytes]) -> ClusterView:
        keys = self.keys
        view = ClusterView()
        specs, _ = self._specs.decode(models)
        view.specs = {Keys.tail(k, keys.models): spec for k, spec in specs.items()}
        live, _ = self._nodes.decode(nodes)
        view.nodes = {Keys.tail(k, keys.nodes): node for k, node in live.items()}
        good_plans, bad_plans = self._plans.decode(plans)
        for key, plan in good_plans.items():
            uid = Keys.tail(key, keys.placements)
            view.plans[uid] = plan
            view.plan_raw[uid] = plans[key]
        view.invalid_plans = {Keys.tail(k, keys.placements) for k in bad_plans}
        registered, _ = self._endpoints.decode(endpoints)
        for key, ep in registered.items():
            try:
                view.endpoints[keys.split_replica_key(key, keys.endpoints)] = ep
            except ValueError:
                continue
        records, _ = self._cordons.decode(cordons)
        # The key is the operator's instruction: an unreadable value still cordons the
        # node (it is logged and counted), or garbage would send replicas to it.
        view.cordons = {Keys.tail(k, keys.cordons): records.get(k) for k in cordons}
        return view
