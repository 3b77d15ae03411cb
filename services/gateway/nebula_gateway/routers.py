"""The router client pool: one keep-alive connection pool, failover between router URLs.

A router that refuses connections is remembered as dead for a few seconds so
that the next requests go straight to a live one. The next router is tried only
when this one was not reached, or answered 503 without having looked at the
model's replicas (no endpoint table yet, overloaded): any other answer, a 502
above all, means the router already tried the replicas itself, and another
router would only start the same work again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nebula_common.deadline import Deadline
from nebula_common.errors import error_text
from nebula_common.http_client import HttpClientError, Pool, Response

from . import metrics

log = logging.getLogger("nebula.gateway.routers")


class RouterUnavailable(Exception):
    """No router could be reached."""


class RouterTimeout(Exception):
    """A router accepted the request but sent no answer within the request timeout."""


_REPLICAS_CONSIDERED = (b'"no_reachable_replica"', b'"queue_timeout"')
"""Codes of a router's 503 that answer for the model's replicas, not for the router: it
already tried to connect to each of them, or already held the request its queue's bound.
``no_ready_replica`` is not among them: nothing was sent and nothing waited, and a router
just restarted or reconnected to etcd can briefly see fewer replicas than its peers."""


async def worth_another_router(resp: Response) -> bool:
    """Would the next router do better than this answer? (Only a 503 is read for it.)"""
    if resp.status != 503:
        return False
    try:
        body = await resp.read()  # (kept: whoever gets resp reads it again)
    except (HttpClientError, TimeoutError):
        return True
    return not any(code in body for code in _REPLICAS_CONSIDERED)


@dataclass
class RouterState:
    url: str
    dead_until: float = 0.0


class RouterPool:
    """Ordered router URLs with dead-router memory and failover."""

    def __init__(self, urls: list[str], *, request_timeout: float, connect_timeout: float = 3.0,
                 dead_seconds: float = 5.0):
        if not urls:
            raise ValueError("at least one router URL is required")
        self.routers = [RouterState(u.rstrip("/")) for u in urls]
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self.dead_seconds = dead_seconds
        # Idle connections live below the routers' own keep-alive (75 s on every server).
        self.client = Pool(connect_timeout=connect_timeout, keepalive_s=60)
        self.last_ok = 0.0

    async def close(self) -> None:
        await self.client.close()

    def _order(self) -> list[RouterState]:
        now = time.monotonic()
        alive = [r for r in self.routers if r.dead_until <= now]
        if len(alive) == len(self.routers):
            return alive
        dead = sorted((r for r in self.routers if r.dead_until > now),
                      key=lambda r: r.dead_until)
        return alive + dead  # a dead one is still tried last: better than failing outright

    async def request(self, method: str, path: str, *, data: bytes | None = None,
                      headers: Mapping[str, str] | None = None,
                      timeout: float | None = None) -> Response:
        """The first router's answer that another router would not improve on.

        ``timeout`` (seconds for the head) makes a silent router one to fail over from;
        without it, a router silent for the request timeout is :class:`RouterTimeout`.
        """
        order = self._order()
        last_error: BaseException | None = None
        for attempt, router in enumerate(order):
            if attempt:
                metrics.ROUTER_FAILOVERS.inc()
            is_last = attempt == len(order) - 1
            try:
                async with Deadline(asyncio.get_running_loop(),
                                    timeout or self.request_timeout) as waited:
                    resp = await self.client.request(router.url, method, path, headers or {},
                                                     data or b"", self.request_timeout)
            except (TimeoutError, HttpClientError, OSError) as exc:
                if isinstance(exc, TimeoutError) and timeout is None and waited.expired():
                    # the router is alive and working on it (a long generation): another
                    # router would only start the same work again
                    raise RouterTimeout(f"no answer from the router within "
                                        f"{self.request_timeout:g}s") from exc
                router.dead_until = time.monotonic() + self.dead_seconds
                last_error = exc
                log.warning("router unreachable", extra={"router": router.url,
                                                         "error": error_text(exc)})
                continue
            self.last_ok = time.monotonic()
            router.dead_until = 0.0
            if not is_last and resp.status >= 500 and await worth_another_router(resp):
                log.warning("router answered %d; trying the next one", resp.status,
                            extra={"router": router.url})
                resp.release()
                continue
            return resp
        raise RouterUnavailable(f"no router reachable ({len(order)} tried): "
                                f"{last_error or 'error'}")

    async def get_json(self, path: str, timeout: float = 5.0) -> tuple[int, Any]:
        resp = await self.request("GET", path, timeout=timeout)
        try:
            async with resp, asyncio.timeout(timeout):
                return resp.status, json.loads(await resp.read())
        except (HttpClientError, TimeoutError, ValueError) as exc:
            raise RouterUnavailable(f"bad answer to GET {path}: {exc}") from None

    async def probe(self) -> bool:
        """Is some router answering ``/healthz``?"""
        for router in self.routers:
            try:
                async with asyncio.timeout(2):
                    resp = await self.client.request(router.url, "GET", "/healthz", {}, b"")
                    async with resp:
                        await resp.read()
                        if resp.status == 200:
                            self.last_ok = time.monotonic()
                            return True
            except (TimeoutError, HttpClientError, OSError):
                continue
        return False
