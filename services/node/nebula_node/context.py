"""What every replica supervisor shares: settings, etcd publishing, HTTP session, ports."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from opentelemetry import trace

from nebula_common.keys import Keys
from nebula_common.store import EtcdStore, LeaseKeeper

from .engines import EngineAdapter

log = logging.getLogger(__name__)


@dataclass
class NodeSettings:
    node_id: str
    advertise_host: str
    state_dir: Path
    engine_host: str = "0.0.0.0"
    port_range: tuple[int, int] = (10814, 10914)
    engine_ready_timeout: float = 600.0
    stop_grace: float = 10.0
    drain_timeout: float = 30.0
    restart_max: int = 5
    health_interval: float = 1.0
    health_failures: int = 3
    stats_interval: float = 1.0
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    stable_after: float = 30.0
    """Seconds ready after which earlier failures no longer count as consecutive."""


@dataclass
class Publisher:
    """Writes the node's leased keys; a write that fails while etcd is away is retried.

    The LeaseKeeper remembers every key's latest value and re-puts them all when
    the lease is re-granted; this adds the other half: a put or delete that failed
    while the lease stayed valid is retried by :meth:`flush` until it lands.
    """

    store: EtcdStore
    lease: LeaseKeeper
    pending_puts: set[str] = field(default_factory=set)
    pending_deletes: set[str] = field(default_factory=set)

    async def put(self, key: str, value: bytes) -> bool:
        self.pending_deletes.discard(key)
        try:
            await self.lease.put(key, value)
        except Exception as exc:  # etcd away: remembered and retried
            self.pending_puts.add(key)
            log.debug("put %s failed (%s); will retry", key, exc)
            return False
        self.pending_puts.discard(key)
        return True

    async def delete(self, key: str) -> bool:
        self.pending_puts.discard(key)
        self.lease.forget(key)  # never re-put by a lease re-grant from now on
        try:
            await self.store.delete(key)
        except Exception as exc:
            self.pending_deletes.add(key)
            log.debug("delete %s failed (%s); will retry", key, exc)
            return False
        self.pending_deletes.discard(key)
        return True

    async def flush(self) -> None:
        for key in list(self.pending_deletes):
            with contextlib.suppress(Exception):
                await self.store.delete(key)
                self.pending_deletes.discard(key)
        for key in list(self.pending_puts):
            value = self.lease.keys.get(key)
            if value is None:
                self.pending_puts.discard(key)
                continue
            with contextlib.suppress(Exception):
                await self.lease.put(key, value)
                self.pending_puts.discard(key)


@dataclass
class NodeContext:
    settings: NodeSettings
    keys: Keys
    publisher: Publisher
    session: aiohttp.ClientSession
    adapters: dict[str, EngineAdapter]
    tracer: trace.Tracer
    reserved_ports: set[int] = field(default_factory=set)
    port_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
