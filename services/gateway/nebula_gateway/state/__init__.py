"""The gateway's state behind one interface (:class:`GatewayState`), and how to open it.

``--state-url`` picks the backend: ``redis://HOST:PORT[/DB]`` (shared by every gateway
that names it, with a local fallback: :mod:`.failover`), ``sqlite:///PATH``, or nothing:
SQLite in ``--state-dir`` (``state.db``), or in memory when no state directory is given.
"""

from __future__ import annotations

import os
from pathlib import Path

from .base import GatewayState, ResponseLimits, StateError, UsageDelta, UsageRow
from .sqlite import STATE_FILE, SqliteState

__all__ = ["GatewayState", "ResponseLimits", "StateError", "UsageDelta", "UsageRow",
           "describe", "open_state", "read_usage"]


def check_url(url: str) -> None:
    """Raise ValueError unless ``url`` names a backend this gateway has."""
    if url and not url.startswith(("redis://", "rediss://", "unix://", "sqlite:///")):
        raise ValueError(f"state URL {url!r} is not redis://..., rediss://... or "
                         "sqlite:///PATH")


def open_state(url: str, state_dir: str | None, limits: ResponseLimits, *,
               fail_open: bool = True) -> GatewayState:
    """The backend ``url`` names (see the module's docstring); raises StateError."""
    check_url(url)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from .failover import FailoverState
        from .redis import RedisState
        return FailoverState(RedisState(url, limits), SqliteState(":memory:", limits),
                             fail_open=fail_open)
    if url.startswith("sqlite:///"):
        return SqliteState(url.removeprefix("sqlite://"), limits)
    if state_dir:
        return SqliteState(Path(state_dir) / STATE_FILE, limits)
    return SqliteState(":memory:", limits)


def describe(url: str, state_dir: str | None) -> str:
    """Where the state lives, for the start-up log (a Redis URL without its password)."""
    if url.startswith(("redis://", "rediss://", "unix://")):
        scheme, _, rest = url.partition("://")
        return f"{scheme}://{rest.rpartition('@')[2]}"
    if url:
        return url
    return f"sqlite:///{Path(state_dir) / STATE_FILE}" if state_dir else "memory"


def usage_reader(url: str) -> GatewayState:
    """The store ``url`` names, opened to read its usage table (never created)."""
    if not url:
        raise ValueError("give --state-url")
    check_url(url)
    limits = ResponseLimits(0, 0, 0, 0.0)
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite://")
        if not os.path.exists(path):  # (opening it would create an empty one)
            raise StateError(f"no state database at {path}")
        return SqliteState(path, limits)
    from .redis import RedisState
    return RedisState(url, limits, timeout=3.0)


async def read_usage(url: str) -> list[UsageRow]:
    """The usage table of the store ``url`` names (``nebula usage``)."""
    state = usage_reader(url)
    try:
        return await state.usage()
    finally:
        await state.close()
