"""The gateway's settings (filled from the command line by :mod:`main`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .auth import ApiKey


@dataclass
class GatewayConfig:
    router_urls: list[str]
    max_body_bytes: int = 4 * 1024 * 1024
    request_timeout: float = 600.0
    body_timeout: float = 30.0
    models_cache_seconds: float = 2.0
    store_responses: int = 1024
    default_rpm: int = 0
    default_concurrency: int = 0
    keys: dict[str, ApiKey] = field(default_factory=dict)
    access_log: bool = True
