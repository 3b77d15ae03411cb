"""The gateway's settings (filled from the command line by :mod:`main`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from nebula_common.store import EtcdConfig

from .auth import ApiKey
from .budget import DEFAULT_MAX_TOKENS
from .media import MediaPolicy
from .response_store import ENTRY_BYTES, STORE_BYTES, TTL
from .state.base import ResponseLimits

MIB = 1024 * 1024
ANONYMOUS_RPM = 6000
"""Requests per minute of all anonymous callers together (a gateway without keys)."""
ANONYMOUS_CONCURRENCY = 64
"""Requests of all anonymous callers together served at once."""
MAX_IN_FLIGHT = 4096
"""Requests on the OpenAI paths one gateway serves at once."""


@dataclass
class GatewayConfig:
    router_urls: list[str]
    max_body_bytes: int = 4 * MIB
    request_timeout: float = 600.0
    body_timeout: float = 30.0
    models_cache_seconds: float = 2.0
    models_stale_seconds: float = 60.0
    """How long the last good model list is served while refreshing it fails."""
    store_responses: int = 1024
    response_store_bytes: int = STORE_BYTES
    response_entry_bytes: int = ENTRY_BYTES
    response_ttl: float = TTL
    default_rpm: int = 0
    default_concurrency: int = 0
    anonymous_rpm: int = ANONYMOUS_RPM
    anonymous_concurrency: int = ANONYMOUS_CONCURRENCY
    max_in_flight: int = MAX_IN_FLIGHT
    """Requests on the OpenAI paths served at once (0 = no cap); 503 beyond it."""
    expose_replica_header: bool = False
    media: MediaPolicy = field(default_factory=MediaPolicy)
    keys: dict[str, ApiKey] = field(default_factory=dict)
    access_log: bool = True
    watch_keys: EtcdConfig | None = None
    """Where to follow the run-time keys (``nebula keys``) from; None: static keys only."""
    etcd_prefix: str = ""
    state_url: str = ""
    """``redis://...`` (shared), ``sqlite:///PATH``, or empty: SQLite in ``state_dir``."""
    state_dir: str | None = None
    state_fail_open: bool = True
    """Serve on local state while a shared store is unreachable (else refuse with 503)."""
    default_max_tokens: int = DEFAULT_MAX_TOKENS
    """Completion tokens reserved for a request without ``max_tokens`` (keys with limits)."""
    max_file_bytes: int = 64 * MIB
    """Largest file uploaded to ``/v1/files``."""
    batch_concurrency: int = 16
    """Lines of a batch this gateway runs at once."""
    batch_window: int = 24 * 3600
    """Seconds a batch created here has before it expires (OpenAI's ``24h``)."""

    @property
    def response_limits(self) -> ResponseLimits:
        return ResponseLimits(self.store_responses, self.response_store_bytes,
                              self.response_entry_bytes, self.response_ttl)
