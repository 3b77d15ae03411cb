"""Redis backend (``--state-url redis://HOST:PORT[/DB]``): one store for many gateways.

Reservations made in one turn of the event loop go in one pipeline (a group commit: one
round trip for many requests), one script call per counter set. The script drops the
expired holds of each counter, checks ``used + held + amount <= limit`` on all of them and
holds on all or none, so N gateways enforce one budget exactly (Redis runs a script
alone); a request counter (rpm) takes one request. Settlement is another script, sent
behind the requests (queued, with the next pipeline). Both go over :mod:`.resp`'s link.
A reservation that goes to Redis also asks for a lease (:class:`_Lease`): one more hold,
from which this gateway admits the key's next requests for a second without a round trip,
then hands it back (``RETIRE``: its cost added, its running requests holding on their own).
Each counter's keys carry the key hash as a hash tag (``{...}``): a key's counters sit in
one slot of a Redis Cluster too. Stored Responses are hashes with a TTL; Redis' own
``maxmemory`` bounds their total (the per-entry cap is the gateway's).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import hiredis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from ..budget import RPM, Counter, Refusal
from ..response_store import StoredResponse
from .base import GatewayState, ResponseLimits, StateError, UsageDelta, UsageRow
from .redis_scripts import CLAIM, PUT_LINE, READ, RELEASE, RESERVE, RETIRE, SETTLE
from .resp import RespLink

log = logging.getLogger("nebula.gateway.state")

NS = "nebula:gw"
MAX_CONNECTIONS = 64
"""Connections to Redis one gateway opens at most (calls beyond wait for one)."""
MAX_BATCH = 256
"""Reservations (and settlements of one counter set) sent in one pipeline at most."""
SETTLE_DELAY_S = 0.02
"""How long a settlement waits for a pipeline to join before it goes on its own."""
LEASE_S = 1.0
"""How long a gateway admits requests from one lease before it hands it back."""
LEASE_REQUESTS = 32
"""A lease asked for covers this many requests like the one that asked."""
POOL_WAIT_S = 5.0
"""How long a call waits for a free connection: a burst is not an outage."""
_SEP = "\x1f"

ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError,
                                           hiredis.HiredisError)


def _error(exc: BaseException) -> StateError:
    return StateError(f"redis: {type(exc).__name__}: {exc}")


def _keys(counter: Counter) -> tuple[str, str]:
    key_hash, _, rest = counter.store_key.partition(":")
    tag = f"{{{key_hash}}}"
    return f"{NS}:used:{tag}:{rest}", f"{NS}:holds:{tag}:{rest}"


SettleFailed = Callable[[tuple[Counter, ...], int, StateError], Awaitable[None]]
"""What to do with settlements Redis did not take: (counters, tokens charged, error)."""


@dataclass(slots=True)
class _Reservation:
    hold_id: str
    amount: int
    now: float
    expires: float
    future: asyncio.Future[Refusal | None]


@dataclass(slots=True, eq=False)
class _Lease:
    """A slice of a key's limits held in Redis as one hold, admitted from here.

    Invariant: ``taken`` (what the requests admitted from it may still cost, plus what
    the finished ones cost) never exceeds ``size``, so Redis' ``used + held`` covers every
    token these requests serve, as their own holds would."""

    lease_id: str
    size: int
    expires: float
    use_until: float
    running: dict[str, tuple[int, float]] = field(default_factory=dict)
    """Requests admitted from it and not finished: hold id -> (amount, expires)."""
    taken: int = 0
    charged: int = 0
    active: bool = True


@dataclass(slots=True)
class _Settlements:
    """Settlements of one counter set waiting to be sent: their holds and their cost."""

    hold_ids: list[str] = field(default_factory=list)
    charged: int = 0


class RedisState(GatewayState):
    name = "redis"
    shared = True

    def __init__(self, url: str, limits: ResponseLimits, *, timeout: float = 0.5,
                 settle_delay: float = SETTLE_DELAY_S, leases: bool = True):
        super().__init__(limits)
        self.url = url
        # short timeouts and no retries here: the fail-open layer decides what a failure means
        # a bounded pool that makes a burst wait for a connection (instead of failing)
        pool = aredis.BlockingConnectionPool.from_url(
            url, max_connections=MAX_CONNECTIONS, timeout=POOL_WAIT_S, socket_timeout=timeout,
            socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0))
        self.client: Any = aredis.Redis(connection_pool=pool)
        self.link = RespLink(url, timeout)
        """The request path's scripts (reserve, settle): one connection, no redis-py."""
        self._reserve = self.client.register_script(RESERVE)
        self._settle = self.client.register_script(SETTLE)
        self._read = self.client.register_script(READ)
        self._claim = self.client.register_script(CLAIM)
        self._release = self.client.register_script(RELEASE)
        self._put_line = self.client.register_script(PUT_LINE)
        self.settle_delay = settle_delay
        self.settle_failed: SettleFailed | None = None
        """Set by the fail-open layer: it counts what Redis did not take (else kept here
        and sent again with the next batch)."""
        self._reservations: dict[tuple[Counter, ...], list[_Reservation]] = {}
        self._settlements: dict[tuple[Counter, ...], _Settlements] = {}
        self._retry: dict[tuple[Counter, ...], _Settlements] = {}
        self._waiting = 0
        """Settlements queued (a batch goes at once past :data:`MAX_BATCH`)."""
        self._runner: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._retire = self.client.register_script(RETIRE)
        self.leases = leases
        self._leases: dict[tuple[Counter, ...], _Lease] = {}
        """The lease of each counter set, while it admits."""
        self._asked: set[tuple[Counter, ...]] = set()
        """Counter sets whose lease is being asked for (one at a time)."""
        self._lease_of: dict[str, _Lease] = {}
        """Requests admitted from a lease, by hold id, until they are settled."""
        self._retiring: list[tuple[tuple[Counter, ...], _Lease]] = []

    # -- the group commit -----------------------------------------------------------------
    # A reservation waits for the end of the event loop's turn: every reservation made in
    # that turn goes in one pipeline, one script call per counter set (one key's counters).
    # A settlement does not wait at all: it is queued and goes with the next pipeline (the
    # next reservations'), or after settle_delay when none comes. Its hold stays meanwhile
    # (the hold outlives the request by --request-timeout + 60 s), which only ever counts
    # more against the limit, never less: exactness holds. persist() and close() send what
    # is queued.
    def _kick(self) -> asyncio.Task[None]:
        if self._runner is None or self._runner.done():
            self._runner = asyncio.get_running_loop().create_task(self._run_batches())
        return self._runner

    def _settle_soon(self) -> None:
        if self._waiting >= MAX_BATCH:
            self._kick()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.settle_delay,
                                                                self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        if self._settlements:
            self._kick()

    async def _run_batches(self) -> None:
        await asyncio.sleep(0)  # the reservations made in this turn join the first batch
        while self._reservations or self._settlements or self._retiring:
            retiring, self._retiring = self._retiring, []
            settlements, self._settlements, self._waiting = self._settlements, {}, 0
            reservations: dict[tuple[Counter, ...], list[_Reservation]] = {}
            taken = 0
            while self._reservations and taken < MAX_BATCH:
                counters, queued = self._reservations.popitem()
                reservations[counters] = queued
                taken += len(queued)
            try:
                await self._send(retiring, settlements, reservations)
            except Exception as exc:  # (a bug, not an outage: still, no caller waits forever)
                log.exception("redis batch failed")
                self._asked.difference_update(reservations)
                for queued in reservations.values():
                    for r in queued:
                        if not r.future.done():
                            r.future.set_exception(_error(exc))
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for counters, s in self._retry.items():  # (for the next batch, not this loop)
            back = self._settlements.setdefault(counters, _Settlements())
            back.hold_ids += s.hold_ids
            back.charged += s.charged
        self._retry = {}

    async def _send(self, retiring: list[tuple[tuple[Counter, ...], _Lease]],
                    settlements: dict[tuple[Counter, ...], _Settlements],
                    reservations: dict[tuple[Counter, ...], list[_Reservation]]) -> None:
        """One pipeline: the leases handed back first (a request settled after that is
        settled on its own hold), the settlements (their holds free room), then the
        reservations; each reservation's future gets its answer or a StateError."""
        calls: list[tuple[Any, list[str], list[Any]]] = []
        for counters, lease in retiring:
            running = [x for hold_id, (amount, expires) in lease.running.items()
                       for x in (hold_id, amount, repr(expires))]
            calls.append((self._retire, self._layout(counters),
                          [lease.lease_id, lease.charged,
                           *(repr(c.ends_at) for c in counters), *running]))
        asked: dict[tuple[Counter, ...], _Lease] = {}
        for counters, s in settlements.items():
            for start in range(0, len(s.hold_ids), MAX_BATCH):
                ids = s.hold_ids[start:start + MAX_BATCH]
                calls.append((self._settle, self._layout(counters),
                              [s.charged if start == 0 else 0,
                               *(repr(c.ends_at) for c in counters), *ids]))
        for counters, queued in reservations.items():
            now = max(r.now for r in queued)
            lease_args: list[Any] = ["-", 0, 0, "0"]
            if self.leases and counters not in self._asked and counters not in self._leases \
                    and all(c.kind != RPM for c in counters):  # (a request counter: no lease)
                biggest = max(r.amount for r in queued)
                lease = asked[counters] = _Lease(uuid.uuid4().hex, 0,
                                                 max(r.expires for r in queued), now + LEASE_S)
                self._asked.add(counters)
                lease_args = [lease.lease_id, LEASE_REQUESTS * biggest, biggest,
                              repr(lease.expires)]
            args: list[Any] = [repr(now), len(counters), *lease_args]
            for c in counters:
                args += [c.limit, repr(c.ends_at), "r" if c.kind == RPM else "t"]
            for r in queued:
                args += [r.hold_id, r.amount, repr(r.expires)]
            calls.append((self._reserve, self._layout(counters), args))
        results = await self._pipeline(calls)
        if any(isinstance(r, hiredis.ReplyError) and str(r).startswith("NOSCRIPT")
               for r in results):
            # a Redis that restarted (or flushed its scripts): load them, once
            try:
                for script in (self._retire, self._settle, self._reserve):
                    script.sha = await self.client.script_load(script.script)
            except ERRORS as exc:
                results = [exc] * len(calls)
            else:
                results = await self._pipeline(calls)
        it = iter(results)
        for counters, lease in retiring:
            result = next(it)
            if isinstance(result, BaseException):  # (its requests since then settle alone)
                await self._unsettled(counters, _Settlements(charged=lease.charged),
                                      _error(result))
        for counters, s in settlements.items():
            failed = [r for r in (next(it) for _ in range(0, len(s.hold_ids), MAX_BATCH))
                      if isinstance(r, BaseException)]
            if failed:
                await self._unsettled(counters, s, _error(failed[0]))
        for counters, queued in reservations.items():
            result = next(it)
            granted = asked.pop(counters, None)
            if granted is not None:
                self._asked.discard(counters)
                if not isinstance(result, BaseException) and int(result[-1]) > 0:
                    granted.size = int(result[-1])
                    self._leases[counters] = granted
            for i, r in enumerate(queued):
                if r.future.done():
                    continue  # its caller went away
                if isinstance(result, BaseException):
                    r.future.set_exception(_error(result))
                elif int(result[3 * i]) == 0:
                    r.future.set_result(None)
                else:
                    index, used, held = (int(x) for x in result[3 * i:3 * i + 3])
                    r.future.set_result(Refusal(counters[index - 1], used, held, r.amount))

    async def _unsettled(self, counters: tuple[Counter, ...], s: _Settlements,
                         exc: StateError) -> None:
        """Settlements Redis did not take: the fail-open layer counts them (their holds
        expire there by themselves), or they wait here for the next batch; never lost."""
        if self.settle_failed is not None:
            await self.settle_failed(counters, s.charged, exc)
            return
        queued = self._retry.setdefault(counters, _Settlements())
        queued.hold_ids += s.hold_ids
        queued.charged += s.charged

    async def _pipeline(self, calls: list[tuple[Any, list[str], list[Any]]]) -> list[Any]:
        """One round trip for the calls; an error per call (never raised) where one failed.
        (EVALSHA only: asking Redis whether it has the scripts would cost a round trip.)"""
        if not calls:
            return []
        try:
            return await self.link.call_many(
                [("EVALSHA", script.sha, len(keys), *keys, *args) for script, keys, args in calls])
        except ERRORS as exc:
            return [exc] * len(calls)

    async def _call(self, what: str, coro: Any) -> Any:
        try:
            return await coro
        except ERRORS as exc:
            raise StateError(f"redis {what}: {type(exc).__name__}: {exc}") from None

    @staticmethod
    def _layout(counters: Sequence[Counter]) -> list[str]:
        out: list[str] = []
        for counter in counters:
            out.extend(_keys(counter))
        return out

    # -- tokens ---------------------------------------------------------------------------
    async def reserve(self, hold_id: str, counters: Sequence[Counter], amount: int,
                      now: float, expires: float) -> Refusal | None:
        counters = tuple(counters)
        lease = self._leases.get(counters)
        if lease is not None:
            if now < lease.use_until and expires <= lease.expires + LEASE_S \
                    and lease.taken + amount <= lease.size:
                lease.running[hold_id] = (amount, expires)  # admitted here: no round trip
                lease.taken += amount
                self._lease_of[hold_id] = lease
                return None
            self._hand_back(counters, lease)
        future: asyncio.Future[Refusal | None] = asyncio.get_running_loop().create_future()
        self._reservations.setdefault(counters, []).append(
            _Reservation(hold_id, amount, now, expires, future))
        self._kick()
        return await future

    async def settle(self, hold_id: str, counters: Sequence[Counter], charged: int,
                     now: float) -> None:
        lease = self._lease_of.pop(hold_id, None)
        if lease is not None and lease.active:  # its lease covers it: counted there
            amount, _ = lease.running.pop(hold_id)
            lease.taken += charged - amount
            lease.charged += charged
            return
        # (a request whose lease was handed back holds on its own since: settled so)
        queued = self._settlements.setdefault(tuple(counters), _Settlements())
        queued.hold_ids.append(hold_id)
        queued.charged += charged
        self._waiting += 1
        self._settle_soon()

    def _hand_back(self, counters: tuple[Counter, ...], lease: _Lease) -> None:
        """Stop admitting from a lease and queue it for Redis (with the next batch)."""
        lease.active = False
        del self._leases[counters]
        self._retiring.append((counters, lease))
        self._settle_soon()

    def hand_back_leases(self, now: float | None = None) -> None:
        """Hand back the leases past their time (every one when ``now`` is None)."""
        for counters, lease in list(self._leases.items()):
            if now is None or now >= lease.use_until:
                self._hand_back(counters, lease)

    async def persist(self) -> None:
        """Hand back the leases past their time and send the settlements still queued
        (every second, and at close)."""
        self.hand_back_leases(time.time())
        if self._runner is not None and not self._runner.done():
            await asyncio.shield(self._runner)
        if self._settlements or self._retiring:  # (one try: what Redis refuses stays
            # queued, or is handed over)
            await asyncio.shield(self._kick())

    async def add_used(self, counters: Sequence[Counter], tokens: int) -> None:
        await self._call("settle", self._settle(
            keys=self._layout(counters),
            args=[tokens, *(repr(c.ends_at) for c in counters)]))

    async def counter(self, counter: Counter, now: float) -> tuple[int, int]:
        self.hand_back_leases()  # (what was settled is read, no lease counts as held)
        await self.persist()
        used, reserved = await self._call("read", self._read(keys=list(_keys(counter)),
                                                             args=[repr(now)]))
        return int(used), int(reserved)

    # -- usage ----------------------------------------------------------------------------
    async def add_usage(self, delta: UsageDelta) -> None:
        pipe = self.client.pipeline(transaction=True)
        for (key, model), (requests, prompt, completion) in delta.items():
            field = f"{key}{_SEP}{model}"
            pipe.hincrby(f"{NS}:usage:requests", field, requests)
            pipe.hincrby(f"{NS}:usage:prompt", field, prompt)
            pipe.hincrby(f"{NS}:usage:completion", field, completion)
        await self._call("usage", pipe.execute())

    async def usage(self) -> list[UsageRow]:
        pipe = self.client.pipeline(transaction=True)
        for name in ("requests", "prompt", "completion"):
            pipe.hgetall(f"{NS}:usage:{name}")
        requests, prompt, completion = await self._call("usage", pipe.execute())
        rows = []
        for raw in sorted(requests):
            key, _, model = raw.decode().partition(_SEP)
            rows.append(UsageRow(key, model, int(requests[raw]), int(prompt.get(raw, 0)),
                                 int(completion.get(raw, 0))))
        return rows

    # -- stored Responses -----------------------------------------------------------------
    async def put_response(self, response_id: str, owner: str, response: bytes,
                           items: bytes, now: float, session: str = "") -> bool:
        limits = self.limits
        if not limits.enabled or not limits.fits(response, items):
            return False
        key = f"{NS}:response:{response_id}"
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(key)
        pipe.hset(key, mapping={"owner": owner, "response": response, "items": items,
                                "expires": repr(now + limits.ttl), "session": session})
        pipe.pexpire(key, max(1, int(limits.ttl * 1000)))
        await self._call("store response", pipe.execute())
        return True

    async def get_response(self, response_id: str, owner: str, now: float
                           ) -> StoredResponse | None:
        entry = await self._call("read response",
                                 self.client.hgetall(f"{NS}:response:{response_id}"))
        if not entry or entry.get(b"owner", b"").decode() != owner:
            return None
        return StoredResponse(owner, float(entry.get(b"expires", b"0")), entry[b"response"],
                              entry[b"items"], entry.get(b"session", b"").decode())

    async def delete_response(self, response_id: str, owner: str) -> bool:
        if await self.get_response(response_id, owner, 0.0) is None:
            return False
        deleted = await self._call("delete response",
                                   self.client.delete(f"{NS}:response:{response_id}"))
        return bool(deleted)

    # -- files and batches: a hash per record, a sorted set (by creation) per kind and
    # per kind and owner; a batch's finished lines in one hash, its counts in another
    async def put_record(self, kind: str, record_id: str, owner: str, data: bytes,
                         created: float) -> None:
        key = f"{NS}:rec:{kind}:{record_id}"
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(key, mapping={"owner": owner, "data": data})
        pipe.zadd(f"{NS}:recs:{kind}", {record_id: created}, nx=True)
        pipe.zadd(f"{NS}:recs:{kind}:{owner}", {record_id: created}, nx=True)
        await self._call("put record", pipe.execute())

    async def get_record(self, kind: str, record_id: str) -> tuple[str, bytes] | None:
        entry = await self._call("read record",
                                 self.client.hgetall(f"{NS}:rec:{kind}:{record_id}"))
        if not entry:
            return None
        return entry[b"owner"].decode(), bytes(entry[b"data"])

    async def list_records(self, kind: str, owner: str | None) -> list[bytes]:
        index = f"{NS}:recs:{kind}" if owner is None else f"{NS}:recs:{kind}:{owner}"
        ids = await self._call("list records", self.client.zrevrange(index, 0, -1))
        if not ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for record_id in ids:
            pipe.hget(f"{NS}:rec:{kind}:{record_id.decode()}", "data")
        return [bytes(d) for d in await self._call("list records", pipe.execute())
                if d is not None]

    async def delete_record(self, kind: str, record_id: str) -> bool:
        entry = await self.get_record(kind, record_id)
        if entry is None:
            return False
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(f"{NS}:rec:{kind}:{record_id}")
        pipe.zrem(f"{NS}:recs:{kind}", record_id)
        pipe.zrem(f"{NS}:recs:{kind}:{entry[0]}", record_id)
        deleted = await self._call("delete record", pipe.execute())
        return bool(deleted[0])

    async def claim(self, name: str, holder: str, now: float, ttl: float) -> bool:
        held = await self._call("claim", self._claim(
            keys=[f"{NS}:lease:{name}"], args=[holder, max(1, int(ttl * 1000))]))
        return bool(held)

    async def release(self, name: str, holder: str) -> None:
        await self._call("release", self._release(keys=[f"{NS}:lease:{name}"],
                                                  args=[holder]))

    async def put_line_result(self, batch_id: str, index: int, ok: bool, line: bytes) -> bool:
        added = await self._call("put line", self._put_line(
            keys=[f"{NS}:lines:{batch_id}", f"{NS}:linecounts:{batch_id}"],
            args=[index, "ok" if ok else "failed", (b"1" if ok else b"0") + line]))
        return bool(added)

    async def line_results(self, batch_id: str) -> dict[int, tuple[bool, bytes]]:
        rows = await self._call("read lines", self.client.hgetall(f"{NS}:lines:{batch_id}"))
        return {int(i): (v[:1] == b"1", bytes(v[1:])) for i, v in rows.items()}

    async def line_counts(self, batch_id: str) -> tuple[int, int]:
        counts = await self._call("read lines",
                                  self.client.hgetall(f"{NS}:linecounts:{batch_id}"))
        return int(counts.get(b"ok", 0)), int(counts.get(b"failed", 0))

    async def drop_line_results(self, batch_id: str) -> None:
        await self._call("drop lines", self.client.delete(f"{NS}:lines:{batch_id}",
                                                          f"{NS}:linecounts:{batch_id}"))

    # -- life -----------------------------------------------------------------------------
    async def ping(self) -> None:
        await self._call("ping", self.client.ping())

    async def close(self) -> None:
        self.hand_back_leases()
        try:
            await self.persist()  # no settlement is lost at a stop
        except ERRORS:
            pass
        await self.link.close()
        try:
            await self.client.aclose()
        except ERRORS:
            pass
