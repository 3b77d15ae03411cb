"""Token reservations and usage of one gateway, on its state store (:mod:`.state`).

:meth:`Tenancy.reserve` runs at admission, after the model was allowed for the key;
:meth:`Tenancy.finish` runs once per request when its outcome is final, whatever ended it
(the last byte, a disconnect, an error): the hold is settled on the engine's usage
(:func:`.budget.charge`) and the usage is counted. Usage is written in batches, once a
second (:class:`UsageBook`): a request never waits for it, and what a store that is down
could not take is kept and written later.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import budget, metrics
from .auth import ApiKey, AuthError
from .state import GatewayState, StateError, UsageDelta
from .state.failover import FailoverState

if TYPE_CHECKING:
    from .outcome import Outcome

log = logging.getLogger("nebula.gateway.state")


@dataclass(slots=True)
class Hold:
    """Tokens one request holds until it is settled (once)."""

    hold_id: str
    counters: tuple[budget.Counter, ...]
    amount: int
    settled: bool = False


class UsageBook:
    """Usage counted since the last write, by (key label, model): pure."""

    def __init__(self) -> None:
        self.pending: dict[tuple[str, str], tuple[int, int, int]] = {}

    def add(self, key: str, model: str, prompt: int, completion: int) -> None:
        r, p, c = self.pending.get((key, model), (0, 0, 0))
        self.pending[(key, model)] = (r + 1, p + prompt, c + completion)

    def take(self) -> dict[tuple[str, str], tuple[int, int, int]]:
        out, self.pending = self.pending, {}
        return out

    def give_back(self, delta: UsageDelta) -> None:
        """A write that failed: its counts go back, merged with what came since."""
        for k, (r, p, c) in delta.items():
            r0, p0, c0 = self.pending.get(k, (0, 0, 0))
            self.pending[k] = (r0 + r, p0 + p, c0 + c)


class Tenancy:
    def __init__(self, state: GatewayState, *, request_timeout: float,
                 default_max_tokens: int = budget.DEFAULT_MAX_TOKENS,
                 flush_interval: float = 1.0):
        self.state = state
        self.request_timeout = request_timeout
        self.default_max_tokens = default_max_tokens
        self.flush_interval = flush_interval
        self.book = UsageBook()
        self._minute = 0
        self._cache: dict[tuple[object, ...], tuple[tuple[budget.Counter, ...],
                                                    tuple[budget.Counter, ...]]] = {}
        """The counters of the keys seen this minute (the hot path builds them once)."""

    async def reserve(self, outcome: Outcome, endpoint: str, raw: bytes,
                      body: dict[str, Any]) -> None:
        """Hold the most this request may cost on its key's counters, or refuse it (429)."""
        key = outcome.key
        if key is None:
            return
        tokens = key.counts_tokens and endpoint in budget.COUNTED
        # (the requests the key's rpm applies to: those that took its rate token here,
        # not a batch's lines)
        shared_rpm = self.state.shared and key.rpm > 0 and outcome.holds_slot
        if not (tokens or shared_rpm):
            return
        now = time.time()
        counters, held = self._counters_of(key, now, tokens, shared_rpm)
        amount = budget.estimate(endpoint, raw, body, self.default_max_tokens) if tokens \
            else 0
        hold = Hold(uuid.uuid4().hex, held, amount)
        try:
            refusal = await self.state.reserve(hold.hold_id, counters, amount, now,
                                               budget.hold_expiry(now, self.request_timeout))
        except StateError as exc:  # (fail closed: the store is down and may not be guessed)
            log.warning("cannot reserve tokens", extra={"request_id": outcome.request_id,
                                                        "error": str(exc)})
            raise AuthError(503, "the gateway cannot reach its state store to check this "
                            "key's token limits; retry shortly", "state_unavailable",
                            "server_error", retry_after=1) from None
        if refusal is not None:
            raise AuthError(429, refusal.message(), refusal.counter.code, "rate_limit_error",
                            retry_after=refusal.retry_after(now))
        if hold.counters:
            outcome.hold = hold
            metrics.TOKENS_RESERVED.labels(key.label).inc(amount)

    def _counters_of(self, key: ApiKey, now: float, tokens: bool, shared_rpm: bool
                     ) -> tuple[tuple[budget.Counter, ...], tuple[budget.Counter, ...]]:
        """(every counter the request reserves on, the token ones its hold settles: a
        request counter never is); the same tuples for a key's requests of one minute."""
        minute = int(now // 60)
        if minute != self._minute:  # (every window changes on a minute's boundary)
            self._minute, self._cache = minute, {}
        ident = (key.key_hash, key.rpm, key.tpm, key.budget_tokens, key.budget_period,
                 tokens, shared_rpm)
        cached = self._cache.get(ident)
        if cached is None:
            counters = budget.counters(key, now, shared_rpm=shared_rpm)
            if not tokens:  # (rpm alone: counted, nothing held)
                counters = tuple(c for c in counters if c.kind == budget.RPM)
            cached = self._cache[ident] = (
                counters, tuple(c for c in counters if c.kind != budget.RPM))
        return cached

    async def finish(self, outcome: Outcome) -> None:
        """Settle the request's hold and count its usage (call once its outcome is final)."""
        if outcome.prompt_tokens is not None:
            self.book.add(outcome.key_label, outcome.model, outcome.prompt_tokens,
                          outcome.completion_tokens or 0)
        hold: Hold | None = outcome.hold
        if hold is None or hold.settled:
            return
        hold.settled = True
        started = outcome.ttft is not None and (outcome.status == 200
                                                or outcome.status >= 499)
        charged = budget.charge(hold.amount, outcome.prompt_tokens,
                                outcome.completion_tokens, started)
        try:
            await self.state.settle(hold.hold_id, hold.counters, charged, time.time())
        except StateError as exc:  # its hold expires by itself; nothing else to undo
            log.warning("cannot settle tokens", extra={"request_id": outcome.request_id,
                                                       "error": str(exc)})

    async def flush(self) -> None:
        try:
            await self.state.persist()
        except StateError as exc:
            log.warning("cannot write token counters", extra={"error": str(exc)})
        delta = self.book.take()
        if not delta:
            return
        try:
            await self.state.add_usage(delta)
        except StateError:
            self.book.give_back(delta)

    async def flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            await self.flush()
            metrics.USAGE_PENDING.set(len(self.book.pending))

    async def probe_loop(self) -> None:
        """A failover store's recovery probe (nothing to do for the others)."""
        if isinstance(self.state, FailoverState):
            await self.state.probe_loop()

    async def close(self) -> None:
        await self.flush()
        await self.state.close()
