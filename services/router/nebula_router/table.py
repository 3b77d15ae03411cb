"""The router's endpoint table: etcd mirrors folded into an in-memory lookup.

Four :class:`PrefixMirror` copies (endpoints, stats, placements, nodes) are
decoded through :class:`RecordCache` (a value is parsed once while it is
unchanged; a bad one is logged, counted and skipped). :func:`screen_endpoints`
then refuses every endpoint whose ``base_url`` is not a plain ``http(s)://host:port``
on the advertise host of the node that registered it: whoever can write one key
to etcd must not be able to point the router at an arbitrary URL. What is left goes
to :func:`build_index`, a pure function that maps every model name and uid to a
:class:`ModelEntry` with its candidates. The table is rebuilt on every change
(level-triggered), reusing the same :class:`Candidate` object per replica so
local state survives; while etcd is unreachable the last table keeps serving.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from nebula_common.capabilities import Capability, parse_capabilities, shared_capabilities
from nebula_common.keys import Keys
from nebula_common.records import (
    INVALID_RECORDS,
    Endpoint,
    EndpointState,
    EndpointStats,
    NodeStatus,
    PlacementPlan,
    RecordCache,
)
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
        return sum(1 for c in self.candidates if c.status == EndpointState.READY)

    @property
    def capabilities(self) -> frozenset[Capability] | None:
        """What every ready replica that declared it serves (None: no declaration)."""
        return shared_capabilities(c.capabilities for c in self.candidates
                                   if c.status == EndpointState.READY)


REFUSED = "refused"
"""The ``status`` /debug/endpoints shows for a refused endpoint."""


_NOT_IN_URL = {"?": "a query", "#": "a fragment", "@": "credentials", "\\": "a backslash"}


@functools.lru_cache(maxsize=4096)
def url_host(url: str) -> tuple[str, str]:
    """The host of a plain ``http(s)://host:port`` as ``(host, "")``, else ``("", problem)``.

    Cached: the table is rebuilt whenever any replica's stats change.
    """
    for c in url:
        if c in _NOT_IN_URL or c.isspace():
            return "", f"base_url carries {_NOT_IN_URL.get(c, 'white space')}"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return "", f"base_url is not a URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return "", f"base_url scheme {parts.scheme!r} is not http or https"
    if not parts.hostname or port is None:
        return "", "base_url is not http(s)://host:port"
    if parts.path not in ("", "/"):
        return "", f"base_url has a path ({parts.path!r})"
    return parts.hostname, ""


def endpoint_refusal(ep: Endpoint, node: NodeStatus | None) -> str:
    """Why the router must not send requests to ``ep`` ("" when it may)."""
    host, problem = url_host(ep.base_url)
    if problem:
        return problem
    if node is None:
        return f"node {ep.node_id!r} that registered it is not live"
    advertised = node.advertise_host.strip("[]").lower()
    if host != advertised:
        return (f"base_url host {host!r} is not the advertise host of node {ep.node_id!r} "
                f"({advertised!r})")
    return ""


def screen_endpoints(keys: Keys, endpoints: Mapping[str, Endpoint],
                     nodes: Mapping[str, NodeStatus]
                     ) -> tuple[dict[str, Endpoint], dict[str, tuple[Endpoint, str]]]:
    """Pure: endpoints by key -> (the ones to route to, the refused ones with the reason)."""
    accepted: dict[str, Endpoint] = {}
    refused: dict[str, tuple[Endpoint, str]] = {}
    for key, ep in endpoints.items():
        reason = endpoint_refusal(ep, nodes.get(keys.node(ep.node_id)))
        if reason:
            refused[key] = (ep, reason)
        else:
            accepted[key] = ep
    return accepted, refused


def build_index(
    keys: Keys,
    endpoints: Mapping[str, Endpoint],
    stats: Mapping[str, EndpointStats],
    placements: Mapping[str, PlacementPlan],
    previous: Mapping[tuple[str, str], Candidate] | None = None,
) -> tuple[dict[str, ModelEntry], dict[tuple[str, str], Candidate]]:
    """Pure: decoded records by key -> (lookup by model name or uid, candidate by replica).

    ``previous`` candidates are updated in place and reused, so in-flight counts
    and ejection state carry over; replicas whose endpoint key vanished are dropped.
    """
    previous = previous or {}
    by_replica: dict[tuple[str, str], Candidate] = {}
    entries: dict[str, ModelEntry] = {}  # by uid

    for plan in placements.values():
        entries[plan.model_uid] = ModelEntry(plan.model_uid, plan.model_name, plan.engine,
                                             placed=True, created=int(plan.updated_at))

    for key, ep in endpoints.items():
        try:
            uid, rid = keys.split_replica_key(key, keys.endpoints)
        except ValueError:
            continue
        cand = previous.get((uid, rid)) or Candidate(uid, rid)
        cand.base_url = ep.base_url.rstrip("/")
        cand.model_name = ep.model_name
        cand.engine = ep.engine
        cand.status = ep.status
        cand.node_id = ep.node_id
        cand.capabilities = parse_capabilities(ep.capabilities) if ep.capabilities else None
        cand.max_concurrency = ep.max_concurrency
        st = stats.get(keys.endpoint_stats(uid, rid))
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
        self.refused: dict[str, tuple[Endpoint, str]] = {}
        """Endpoints not routed to, by key, with the reason (see :func:`screen_endpoints`)."""
        self._endpoints = RecordCache(Endpoint)
        self._stats = RecordCache(EndpointStats)
        self._placements = RecordCache(PlacementPlan)
        self._nodes = RecordCache(NodeStatus)
        self._known_nodes: dict[str, NodeStatus] = {}
        """Every node seen, by key: a node's record and its endpoints come and go under one
        lease, but not in one event (a lease re-grant puts them one by one, a watch reopens
        one prefix at a time), so an endpoint is screened against its node's last known
        advertise host rather than dropped while the node's record blinks."""
        self._pending = False
        if store is not None:
            self.endpoints = PrefixMirror(store, keys.endpoints, "endpoints")
            self.stats = PrefixMirror(store, keys.stats, "stats")
            self.placements = PrefixMirror(store, keys.placements, "placements")
            self.nodes = PrefixMirror(store, keys.nodes, "nodes")
            self.mirrors = [self.endpoints, self.stats, self.placements, self.nodes]
            for mirror in self.mirrors:
                mirror.subscribe(self.rebuild)

    def rebuild(self) -> None:
        """Mirror listener: rebuild once per loop turn, however many events arrived.

        Not before every mirror has listed its prefix once: endpoints screened before the
        nodes were read would all be refused as "not on a live node" (logged and counted
        as invalid) and accepted a moment later. The last mirror's list rebuilds.
        """
        if not self.mirrors or self._pending or not all(m.synced.is_set()
                                                         for m in self.mirrors):
            return
        self._pending = True
        asyncio.get_running_loop().call_soon(self._rebuild_now)

    def _rebuild_now(self) -> None:
        self._pending = False
        try:
            self.load(self.endpoints.items, self.stats.items, self.placements.items,
                      self.nodes.items)
        except Exception:  # a bad record must not stop the table from ever updating
            log.exception("endpoint table rebuild failed")

    def load(self, endpoints: Mapping[str, bytes], stats: Mapping[str, bytes],
             placements: Mapping[str, bytes], nodes: Mapping[str, bytes]) -> None:
        """Rebuild from the mirrored raw values (nodes rewrite /stats often: see the caches)."""
        self._known_nodes.update(self._nodes.decode(nodes)[0])
        accepted, refused = screen_endpoints(self.keys, self._endpoints.decode(endpoints)[0],
                                             self._known_nodes)
        for key, (_ep, reason) in refused.items():
            seen = self.refused.get(key)
            if seen is None or seen[1] != reason:  # once per endpoint and reason, not per pass
                INVALID_RECORDS.labels(Endpoint.KIND).inc()
                log.warning("refusing endpoint at %s: %s", key, reason)
        self.refused = refused
        self.lookup, self.replicas = build_index(
            self.keys, accepted, self._stats.decode(stats)[0],
            self._placements.decode(placements)[0], self.replicas)
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
    def loaded(self) -> bool:
        """Built at least once from every mirror's full list; it stays so (a mirror that lost
        etcd keeps its last content, which :attr:`connected` and staleness speak for)."""
        return (bool(self.mirrors) and all(m.synced.is_set() for m in self.mirrors)
                and self.rebuilds > 0)

    @property
    def synced(self) -> bool:
        """Loaded, and no change the mirrors hold is waiting for its rebuild (the next loop
        turn): a model not in the table yet may be one whose records just arrived."""
        return self.loaded and not self._pending

    @property
    def connected(self) -> bool:
        return bool(self.mirrors) and all(m.healthy for m in self.mirrors)

    def readiness(self) -> tuple[bool, str]:
        # Not ``synced``: a rebuild queued for the next loop turn (the nodes rewrite /stats
        # every few seconds) must not make a loaded table read as never synced.
        if not self.loaded:
            return False, "endpoint table never synced from etcd"
        if not self.connected:
            detail = self.store.last_error if self.store is not None else ""
            return False, ("etcd unreachable; serving the last known endpoint table"
                           + (f" ({detail})" if detail else ""))
        return True, "ready"


def debug_rows(table: EndpointTable, now: float, outlier_state: Callable[[Candidate, float], str]
               ) -> list[dict[str, object]]:
    """/debug/endpoints: one row per replica; refused endpoints too, with their reason."""
    rows: list[dict[str, object]] = []
    for (uid, rid), c in sorted(table.replicas.items()):
        rows.append({
            "model": c.model_name, "model_uid": uid, "replica": rid, "ref": c.ref,
            "base_url": c.base_url, "status": c.status, "node_id": c.node_id,
            "in_flight": c.in_flight, "requests": c.requests,
            "ejected": outlier_state(c, now) != "closed", "ejection_state": outlier_state(c, now),
            "failures": c.failures, "ejections": c.ejections, "reason": "",
            "stats": {"running": c.running, "waiting": c.waiting,
                      "kv_cache_usage": c.kv_cache_usage,
                      "prefix_cache_hit_rate": c.prefix_cache_hit_rate,
                      "updated_at": c.stats_at},
        })
    for _key, (ep, reason) in sorted(table.refused.items()):
        # The same fields as a routed replica's row, so that a reader need not tell them apart.
        rows.append({
            "model": ep.model_name, "model_uid": ep.model_uid, "replica": ep.replica_id,
            "ref": ep.ref, "base_url": ep.base_url, "status": REFUSED, "node_id": ep.node_id,
            "in_flight": 0, "requests": 0, "ejected": False, "ejection_state": "closed",
            "failures": 0, "ejections": 0, "reason": reason,
            "stats": {"running": 0.0, "waiting": 0.0, "kv_cache_usage": 0.0,
                      "prefix_cache_hit_rate": 0.0, "updated_at": 0.0},
        })
    return rows


def dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()
