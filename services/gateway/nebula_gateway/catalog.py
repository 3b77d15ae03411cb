"""The model catalog: the router's ``GET /v1/models``, cached, looked up by name or uid."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from .routers import RouterPool, RouterUnavailable


@dataclass
class ModelInfo:
    id: str
    model_uid: str
    engine: str
    item: dict[str, Any]


class ModelCatalog:
    """The router's ``GET /v1/models``, cached for ``ttl`` seconds."""

    def __init__(self, pool: RouterPool, ttl: float):
        self.pool = pool
        self.ttl = ttl
        self._models: dict[str, ModelInfo] = {}
        self._items: list[dict[str, Any]] = []
        self._fetched = 0.0
        self._lock = asyncio.Lock()

    async def refresh(self, force: bool = False) -> None:
        async with self._lock:
            if not force and time.monotonic() - self._fetched < self.ttl:
                return
            # a forced refresh right after a fetch is pointless (and a 404 storm would
            # otherwise turn into a models storm on the router)
            if force and time.monotonic() - self._fetched < 0.25:
                return
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
                info = ModelInfo(raw["id"], str(nebula.get("model_uid") or raw["id"]),
                                 str(nebula.get("engine") or ""), item)
                items.append(item)
                models[info.id] = info
                models.setdefault(info.model_uid, info)
            self._models, self._items = models, items
            self._fetched = time.monotonic()

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
