"""tenacity retry policies shared by the roles."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)

from .store import StoreUnavailable

T = TypeVar("T")


async def retry_etcd(
    op: Callable[[], Awaitable[T]], *, deadline_s: float = 30.0, max_wait_s: float = 2.0
) -> T:
    """Run ``op`` until it succeeds, retrying only while etcd is unreachable."""
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(StoreUnavailable),
        wait=wait_exponential_jitter(initial=0.1, max=max_wait_s),
        stop=stop_after_delay(deadline_s),
        reraise=True,
    ):
        with attempt:
            return await op()
    raise AssertionError("unreachable")  # pragma: no cover
