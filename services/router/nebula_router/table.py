"""The router's endpoint table: etcd mirrors folded into an in-memory lookup.

Three :class:`PrefixMirror` copies (endpoints, stats, placements) feed
:func:`build_index`, a pure function that maps every model name and uid to a
:class:`ModelEntry` with its candidates. The table is rebuilt on every change
(level-triggered), reusing the same :class:`Candidate` object per replica so
local state survives; while etcd is unreachable the last table keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from nebula_common.keys import Keys
from nebula_common.records import Endpoint, EndpointStats, PlacementPlan, RecordError
from nebula_common.store import EtcdStore, PrefixMirror

from .policy import Candidate

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ModelEntry:
    """One model as the router knows it."""

    model_uid: str
    model_name: str
    engine: str
    candidates: list[Candidate] = field(default_factory=list)
    placed: bool = False
    created: int = 0

    @property
    def ready_replicas(self) -> int:
        return sum(1 for c in self.candidates if c.status == "ready")


def _decode(raw: bytes, cls, key: str):  # type: ignore[no-untyped-def]
    try:
        return cls.from_json(raw)
    except RecordError as exc:
        log.warning("ignoring bad record at %s: %s", key, exc)
        return None


class DecodeCache:
    """Decoded records by key, re-decoded only when the stored bytes change.

    Nodes rewrite /stats often; without this every rebuild would parse every
    record again.
    """

    def __init__(self) -> None:
        self._items: dict[str, tuple[bytes, object]] = {}

    def __call__(self, raw: bytes, cls, key: str):  # type: ignore[no-untyped-def]
        hit = self._items.get(key)
        if hit is not None and hit[0] == raw:
            return hit[1]
        record = _decode(raw, cls, key)
        self._items[key] = (raw, record)
        return record

    def prune(self, live: set[str]) -> None:
        for key in [k for k in self._items if k not in live]:
            del self._items[key]


def build_index(
    keys: Keys,
    endpoints: Mapping[str, bytes],
    stats: Mapping[str, bytes],
    placements: Mapping[str, bytes],
    previous: Mapping[tuple[str, str], Candidate] | None = None,
    decode=_decode,  # type: ignore[no-untyped-def]
) -> tuple[dict[str, ModelEntry], dict[tuple[str, str], Candidate]]:
    """Pure: mirrored key/values -> (lookup by model name or uid, candidate by replica).

    ``previous`` candidates are updated in place and reused, so in-flight counts
    and ejection state carry over; replicas whose endpoint key vanished are dropped.
    """
    previous = previous or {}
    by_replica: dict[tuple[str, str], Candidate] = {}
    entries: dict[str, ModelEntry] = {}  # by uid

    for key, raw in placements.items():
        plan = decode(raw, PlacementPlan, key)
        if plan is None:
            continue
        entries[plan.model_uid] = ModelEntry(plan.model_uid, plan.model_name, plan.engine,
                                             placed=True, created=int(plan.updated_at))

    for key, raw in endpoints.items():
        try:
            uid, rid = keys.split_replica_key(key, keys.endpoints)
        except ValueError:
            continue
        ep = decode(raw, Endpoint, key)
        if ep is None:
            continue
        cand = previous.get((uid, rid)) or Candidate(uid, rid)
        cand.base_url = ep.base_url.rstrip("/")
        cand.model_name = ep.model_name
        cand.engine = ep.engine
        cand.status = ep.status
        cand.node_id = ep.node_id
        st_key = keys.endpoint_stats(uid, rid)
        st_raw = stats.get(st_key)
        st = decode(st_raw, EndpointStats, st_key) if st_raw is not None else None
        if st is not None:
            cand.running, cand.waiting = float(st.running), float(st.waiting)
            cand.kv_cache_usage = float(st.kv_cache_usage)
            cand.prefix_cache_hit_rate = float(st.prefix_cache_hit_rate)
            cand.stats_at = float(st.updated_at)
        else:
            cand.running = cand.waiting = cand.kv_cache_usage = 0.0
        by_replica[(uid, rid)] = cand
        entry = entries.get(uid)
        if entry is None:
            entry = entries[uid] = ModelEntry(uid, ep.model_name, ep.engine,
                                              created=int(ep.updated_at))
        entry.candidates.append(cand)

    lookup: dict[str, ModelEntry] = {}
    for entry in entries.values():
        entry.candidates.sort(key=lambda c: c.replica_id)
        lookup.setdefault(entry.model_name, entry)
    for uid, entry in entries.items():
        lookup[uid] = entry  # a uid always wins over another model's name
    return lookup, by_replica


class EndpointTable:
    """Live table fed by etcd mirrors; lookups are a dict access."""

    def __init__(self, store: EtcdStore | None, keys: Keys):
        self.keys = keys
        self.store = store
        self.lookup: dict[str, ModelEntry] = {}
        self.replicas: dict[tuple[str, str], Candidate] = {}
        self.mirrors: list[PrefixMirror] = []
        self.built_at = 0.0
        self.rebuilds = 0
        self._decode = DecodeCache()
        self._pending = False
        if store is not None:
            self.endpoints = PrefixMirror(store, keys.endpoints, "endpoints")
            self.stats = PrefixMirror(store, keys.stats, "stats")
            self.placements = PrefixMirror(store, keys.placements, "placements")
            self.mirrors = [self.endpoints, self.stats, self.placements]
            for mirror in self.mirrors:
                mirror.subscribe(self.rebuild)

    def rebuild(self) -> None:
        """Mirror listener: rebuild once per loop turn, however many events arrived."""
        if not self.mirrors or self._pending:
            return
        self._pending = True
        asyncio.get_running_loop().call_soon(self._rebuild_now)

    def _rebuild_now(self) -> None:
        self._pending = False
        try:
            self.load(self.endpoints.items, self.stats.items, self.placements.items)
        except Exception:  # a bad record must not stop the table from ever updating
            log.exception("endpoint table rebuild failed")

    def load(self, endpoints: Mapping[str, bytes], stats: Mapping[str, bytes],
             placements: Mapping[str, bytes]) -> None:
        self.lookup, self.replicas = build_index(self.keys, endpoints, stats, placements,
                                                 self.replicas, self._decode)
        self._decode.prune({*endpoints, *stats, *placements})
        self.built_at = time.monotonic()
        self.rebuilds += 1

    def start(self) -> None:
        for mirror in self.mirrors:
            mirror.start()

    async def stop(self) -> None:
        for mirror in self.mirrors:
            await mirror.stop()

    def get(self, model: str) -> ModelEntry | None:
        return self.lookup.get(model)

    def models(self) -> list[ModelEntry]:
        """Every distinct model, by uid."""
        seen: dict[str, ModelEntry] = {}
        for entry in self.lookup.values():
            seen.setdefault(entry.model_uid, entry)
        return sorted(seen.values(), key=lambda e: e.model_uid)

    # -- health -----------------------------------------------------------------------
    @property
    def synced(self) -> bool:
        return (bool(self.mirrors) and all(m.synced.is_set() for m in self.mirrors)
                and self.rebuilds > 0 and not self._pending)

    @property
    def connected(self) -> bool:
        return bool(self.mirrors) and all(m.healthy for m in self.mirrors)

    def readiness(self) -> tuple[bool, str]:
        if not self.synced:
            return False, "endpoint table never synced from etcd"
        if not self.connected:
            detail = self.store.last_error if self.store is not None else ""
            return False, ("etcd unreachable; serving the last known endpoint table"
                           + (f" ({detail})" if detail else ""))
        return True, "ready"


def debug_rows(table: EndpointTable, now: float, outlier_state) -> list[dict]:  # type: ignore[no-untyped-def]
    """/debug/endpoints: one row per replica."""
    rows = []
    for (uid, rid), c in sorted(table.replicas.items()):
        rows.append({
            "model": c.model_name, "model_uid": uid, "replica": rid, "ref": c.ref,
            "base_url": c.base_url, "status": c.status, "node_id": c.node_id,
            "in_flight": c.in_flight, "requests": c.requests,
            "ejected": outlier_state(c, now) != "closed", "ejection_state": outlier_state(c, now),
            "failures": c.failures, "ejections": c.ejections,
            "stats": {"running": c.running, "waiting": c.waiting,
                      "kv_cache_usage": c.kv_cache_usage,
                      "prefix_cache_hit_rate": c.prefix_cache_hit_rate,
                      "updated_at": c.stats_at},
        })
    return rows


def dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()
