"""The model catalog: the router's ``GET /v1/models``, cached, looked up by name or uid.

When a refresh fails the last good list is served on, for ``stale`` seconds after it
was fetched: one slow or restarting router must not turn every request into a 503.
A failed refresh is not retried for ``retry`` seconds, so that requests arriving
meanwhile do not each wait on a router that just failed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nebula_common.capabilities import Capability, parse_capabilities

from .routers import RouterPool, RouterUnavailable

log = logging.getLogger("nebula.gateway")


@dataclass
class ModelInfo:
    id: str
    model_uid: str
    engine: str
    item: dict[str, Any]
    capabilities: frozenset[Capability] | None = None
    """What every ready replica serves, as the router lists it (None: not declared)."""

    def serves(self, capability: Capability, engines: frozenset[str]) -> bool:
        """As its replicas declared; where they declared nothing (older nodes), whether its
        engine is one of ``engines``."""
        if self.capabilities is not None:
            return capability in self.capabilities
        return self.engine in engines


class ModelCatalog:
    """The router's ``GET /v1/models``, cached for ``ttl`` seconds, kept ``stale`` more."""

    def __init__(self, pool: RouterPool, ttl: float, stale: float = 60.0, retry: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        self.pool = pool
        self.ttl = ttl
        self.stale = stale
        self.retry = retry
        self.clock = clock
        self._models: dict[str, ModelInfo] = {}
        self._items: list[dict[str, Any]] = []
        self._fetched: float | None = None  # when the list held now was fetched
        self._failed = -float("inf")  # when a fetch last failed
        self._lock = asyncio.Lock()

    async def refresh(self, force: bool = False) -> None:
        """Fetch the list when it is due; raise RouterUnavailable only when no list
        fetched within ``ttl + stale`` seconds is left to serve."""
        fetched = self._fetched
        if not force and fetched is not None and self.clock() - fetched < self.ttl:
            return  # fresh (every request asks): no lock to take
        async with self._lock:
            now = self.clock()
            age = now - self._fetched if self._fetched is not None else float("inf")
            # a forced refresh right after a fetch is pointless (and a 404 storm would
            # otherwise turn into a models storm on the router)
            if age < (0.25 if force else self.ttl) or now - self._failed < self.retry:
                self._check_servable(age)
                return
            try:
                await self._fetch()
            except RouterUnavailable as exc:
                self._failed = now
                self._check_servable(age, exc)
                log.warning("model list refresh failed; serving the last one",
                            extra={"age_s": round(age, 1), "error": str(exc)})

    def _check_servable(self, age: float, error: RouterUnavailable | None = None) -> None:
        if age > self.ttl + self.stale:
            raise error or RouterUnavailable("no model list from any router lately")

    async def _fetch(self) -> None:
        status, data = await self.pool.get_json("/v1/models")
        if status != 200 or not isinstance(data, dict):
            raise RouterUnavailable(f"router answered {status} to GET /v1/models")
        models: dict[str, ModelInfo] = {}
        items: list[dict[str, Any]] = []
        for raw in data.get("data") or []:
            if not isinstance(raw, dict) or not isinstance(raw.get("id"), str):
                continue
            nebula = raw.get("nebula") or {}
            item = {"id": raw["id"], "object": "model",
                    "created": int(raw.get("created") or 0),
                    "owned_by": raw.get("owned_by") or "nebula"}
            if nebula:
                item["nebula"] = nebula
            declared = nebula.get("capabilities")
            info = ModelInfo(raw["id"], str(nebula.get("model_uid") or raw["id"]),
                             str(nebula.get("engine") or ""), item,
                             parse_capabilities(declared) if isinstance(declared, list)
                             else None)
            items.append(item)
            models[info.id] = info
            models.setdefault(info.model_uid, info)
        self._models, self._items = models, items
        self._fetched = self.clock()

    async def lookup(self, model: str) -> ModelInfo | None:
        await self.refresh()
        info = self._models.get(model)
        if info is None:
            await self.refresh(force=True)
            info = self._models.get(model)
        return info

    async def items(self) -> list[dict[str, Any]]:
        await self.refresh()
        return list(self._items)
