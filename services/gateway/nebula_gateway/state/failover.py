"""A shared backend (Redis) with a local fallback for when it cannot be reached.

Fail open (the default): the first failed call marks the state degraded (logged once,
``nebula_gateway_state_degraded`` 1); from then on this gateway reserves, settles and
stores Responses on its local store (SQLite in memory): limits hold on what this gateway
counts itself, and no request fails because Redis is gone. A probe every second looks for
Redis; once it answers, the tokens counted locally are added to the shared counters
(reconciled) and calls go to Redis again. Fail closed (``--state-fail closed``): a request
that needs the store while it is unreachable is refused with 503.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from .. import metrics
from ..budget import Counter, Refusal
from ..response_store import StoredResponse
from .base import GatewayState, StateError, UsageDelta, UsageRow
from .redis import RedisState

log = logging.getLogger("nebula.gateway.state")


class FailoverState(GatewayState):
    shared = True

    def __init__(self, primary: GatewayState, local: GatewayState, *, fail_open: bool = True,
                 probe_interval: float = 1.0):
        super().__init__(primary.limits)
        self.primary = primary
        self.local = local
        self.name = primary.name
        self.fail_open = fail_open
        self.probe_interval = probe_interval
        self.degraded = False
        self.since = 0.0
        self._local_holds: set[str] = set()
        self.pending: dict[tuple[Counter, ...], int] = {}
        """Tokens served while degraded, per counter set: added to Redis when it is back."""
        if isinstance(primary, RedisState):  # (it settles behind: failures come back here)
            primary.settle_failed = self._settle_failed

    def _fail(self, op: str, exc: StateError) -> None:
        metrics.STATE_ERRORS.labels(self.name, op).inc()
        if not self.degraded:
            self.degraded = True
            self.since = time.monotonic()
            metrics.STATE_DEGRADED.set(1)
            log.warning("state store unreachable: serving on local state" if self.fail_open
                        else "state store unreachable: refusing what needs it (fail closed)",
                        extra={"backend": self.name, "error": str(exc), "op": op})
        if not self.fail_open:
            raise exc

    # -- tokens ---------------------------------------------------------------------------
    async def reserve(self, hold_id: str, counters: Sequence[Counter], amount: int,
                      now: float, expires: float) -> Refusal | None:
        if not self.degraded:
            try:
                return await self.primary.reserve(hold_id, counters, amount, now, expires)
            except StateError as exc:
                self._fail("reserve", exc)
        elif not self.fail_open:
            raise StateError("the state store is unreachable")
        refusal = await self.local.reserve(hold_id, counters, amount, now, expires)
        if refusal is None:
            self._local_holds.add(hold_id)
        return refusal

    async def settle(self, hold_id: str, counters: Sequence[Counter], charged: int,
                     now: float) -> None:
        if hold_id in self._local_holds:
            self._local_holds.discard(hold_id)
            await self.local.settle(hold_id, counters, charged, now)
            self._owe(counters, charged)
            return
        if not self.degraded:
            try:
                await self.primary.settle(hold_id, counters, charged, now)
                return
            except StateError as exc:
                # its hold in Redis expires by itself; the tokens are owed to the shared
                # counters
                await self._settle_failed(tuple(counters), charged, exc)
                return
        await self.local.add_used(counters, charged)
        self._owe(counters, charged)

    async def _settle_failed(self, counters: tuple[Counter, ...], charged: int,
                             exc: StateError) -> None:
        """Settlements Redis did not take (it settles behind the requests): as for a
        settle that failed at once, the tokens are counted here and owed to Redis."""
        try:
            self._fail("settle", exc)
        except StateError:
            pass  # (fail closed too: the tokens were served, they are owed)
        await self.local.add_used(counters, charged)
        self._owe(counters, charged)

    def _owe(self, counters: Sequence[Counter], charged: int) -> None:
        if charged and counters:
            key = tuple(counters)
            self.pending[key] = self.pending.get(key, 0) + charged

    async def add_used(self, counters: Sequence[Counter], tokens: int) -> None:
        await self.primary.add_used(counters, tokens)

    async def counter(self, counter: Counter, now: float) -> tuple[int, int]:
        return await self.primary.counter(counter, now)

    # -- usage (the caller keeps what could not be written and tries again) -------------
    async def add_usage(self, delta: UsageDelta) -> None:
        if self.degraded:
            raise StateError("the state store is unreachable")
        await self.primary.add_usage(delta)

    async def usage(self) -> list[UsageRow]:
        return await self.primary.usage()

    # -- stored Responses -----------------------------------------------------------------
    async def put_response(self, response_id: str, owner: str, response: bytes,
                           items: bytes, now: float, session: str = "") -> bool:
        if not self.degraded:
            try:
                return await self.primary.put_response(response_id, owner, response, items,
                                                       now, session)
            except StateError as exc:
                self._fail("put_response", exc)
        elif not self.fail_open:
            raise StateError("the state store is unreachable")
        return await self.local.put_response(response_id, owner, response, items, now,
                                             session)

    async def get_response(self, response_id: str, owner: str, now: float
                           ) -> StoredResponse | None:
        if not self.degraded:
            try:
                return await self.primary.get_response(response_id, owner, now)
            except StateError as exc:
                self._fail("get_response", exc)
        elif not self.fail_open:
            raise StateError("the state store is unreachable")
        return await self.local.get_response(response_id, owner, now)

    async def delete_response(self, response_id: str, owner: str) -> bool:
        local = await self.local.delete_response(response_id, owner)
        if not self.degraded:
            try:
                return await self.primary.delete_response(response_id, owner) or local
            except StateError as exc:
                self._fail("delete_response", exc)
        return local

    # -- files and batches: on the shared store only (a batch split between two stores
    # would run its lines twice); while it is unreachable these raise StateError
    async def put_record(self, kind: str, record_id: str, owner: str, data: bytes,
                         created: float) -> None:
        await self.primary.put_record(kind, record_id, owner, data, created)

    async def get_record(self, kind: str, record_id: str) -> tuple[str, bytes] | None:
        return await self.primary.get_record(kind, record_id)

    async def list_records(self, kind: str, owner: str | None) -> list[bytes]:
        return await self.primary.list_records(kind, owner)

    async def delete_record(self, kind: str, record_id: str) -> bool:
        return await self.primary.delete_record(kind, record_id)

    async def claim(self, name: str, holder: str, now: float, ttl: float) -> bool:
        return await self.primary.claim(name, holder, now, ttl)

    async def release(self, name: str, holder: str) -> None:
        await self.primary.release(name, holder)

    async def put_line_result(self, batch_id: str, index: int, ok: bool, line: bytes) -> bool:
        return await self.primary.put_line_result(batch_id, index, ok, line)

    async def line_results(self, batch_id: str) -> dict[int, tuple[bool, bytes]]:
        return await self.primary.line_results(batch_id)

    async def line_counts(self, batch_id: str) -> tuple[int, int]:
        return await self.primary.line_counts(batch_id)

    async def drop_line_results(self, batch_id: str) -> None:
        await self.primary.drop_line_results(batch_id)

    # -- recovery -------------------------------------------------------------------------
    async def recover_once(self) -> bool:
        """Is Redis back? Then hand it what was counted here (also what holds taken here
        during an outage settled since). True when healthy and nothing is owed."""
        if not self.degraded and not self.pending:
            return True
        try:
            await self.primary.ping()
            while self.pending:
                counters, tokens = next(iter(self.pending.items()))
                await self.primary.add_used(counters, tokens)
                del self.pending[counters]
                metrics.STATE_RECONCILED.inc(tokens)
        except StateError:
            return False
        if self.degraded:
            log.info("state store reachable again: reconciled", extra={
                "backend": self.name, "degraded_s": round(time.monotonic() - self.since, 1)})
            self.degraded = False
            metrics.STATE_DEGRADED.set(0)
        return True

    async def probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self.probe_interval)
            await self.recover_once()

    async def persist(self) -> None:
        if not self.degraded:
            await self.primary.persist()  # the settlements it queued (a failure comes back)
        await self.local.persist()

    async def ping(self) -> None:
        await self.primary.ping()

    async def close(self) -> None:
        await self.primary.close()
        await self.local.close()
