"""What every replica supervisor shares: settings, etcd publishing, HTTP session, ports."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from opentelemetry import trace

from nebula_common.keys import Keys
from nebula_common.store import LeaseKeeper

from .engines import EngineAdapter


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
class NodeContext:
    """What the replicas share. ``publisher`` writes their leased keys: only keys that are
    absent or this node's, retried until they land (see :class:`LeaseKeeper`)."""

    settings: NodeSettings
    keys: Keys
    publisher: LeaseKeeper
    session: aiohttp.ClientSession
    adapters: dict[str, EngineAdapter]
    tracer: trace.Tracer
    reserved_ports: set[int] = field(default_factory=set)
    port_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
