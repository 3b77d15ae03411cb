"""Redis backend (``--state-url redis://HOST:PORT[/DB]``): one store for many gateways.

Calls made in one turn of the event loop go in one pipeline (a group commit: one round
trip for many requests). A reservation is one Lua script: it drops the expired holds of
each counter, checks
``used + held + amount <= limit`` on all of them and holds on all or none, so N gateways
enforce one budget exactly (Redis runs a script alone). Settlement is another script.
Each counter's keys carry the key hash as a hash tag (``{...}``): a key's counters sit in
one slot of a Redis Cluster too. Stored Responses are hashes with a TTL; Redis' own
``maxmemory`` bounds their total (the per-entry cap is the gateway's).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from ..budget import Counter, Refusal
from ..response_store import StoredResponse
from .base import GatewayState, ResponseLimits, StateError, UsageDelta, UsageRow

NS = "nebula:gw"
MAX_CONNECTIONS = 64
"""Connections to Redis one gateway opens at most (calls beyond wait for one)."""
MAX_BATCH = 256
"""Script calls sent in one pipeline at most."""
POOL_WAIT_S = 5.0
"""How long a call waits for a free connection: a burst is not an outage."""
KEEP_AFTER_S = 3600
"""How long a counter's keys outlive its window (for `nebula usage`-style inspection)."""
_SEP = "\x1f"

# KEYS: used_1, holds_1, used_2, holds_2, ...; ARGV: id, amount, now, expires, limit_1,
# ends_1, limit_2, ends_2, ... -> {0} when held, else {i, used, reserved} of counter i.
RESERVE = """
local n = #KEYS / 2
local id, amount, now, expires = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
for i = 1, n do
  local used = tonumber(redis.call('GET', KEYS[2 * i - 1]) or '0')
  local holds = redis.call('HGETALL', KEYS[2 * i])
  local reserved = 0
  for j = 1, #holds, 2 do
    local sep = string.find(holds[j + 1], ':', 1, true)
    local a = tonumber(string.sub(holds[j + 1], 1, sep - 1))
    if tonumber(string.sub(holds[j + 1], sep + 1)) <= now then
      redis.call('HDEL', KEYS[2 * i], holds[j])
    else
      reserved = reserved + a
    end
  end
  if used + reserved + amount > tonumber(ARGV[3 + 2 * i]) then
    return {i, used, reserved}
  end
end
for i = 1, n do
  redis.call('HSET', KEYS[2 * i], id, amount .. ':' .. expires)
  local keep = math.max(tonumber(ARGV[4 + 2 * i]), tonumber(expires))
  redis.call('EXPIREAT', KEYS[2 * i], math.ceil(keep) + 60)
end
return {0}
"""

# KEYS as RESERVE; ARGV: id, charged, ends_1, ends_2, ...
SETTLE = """
local n = #KEYS / 2
local charged = tonumber(ARGV[2])
for i = 1, n do
  redis.call('HDEL', KEYS[2 * i], ARGV[1])
  if charged > 0 then
    redis.call('INCRBY', KEYS[2 * i - 1], charged)
    redis.call('EXPIREAT', KEYS[2 * i - 1], math.ceil(tonumber(ARGV[2 + i])) + KEEP_AFTER)
  end
end
return n
""".replace("KEEP_AFTER", str(KEEP_AFTER_S))

# KEYS: used, holds of one counter; ARGV: now -> {used, reserved}
READ = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local holds = redis.call('HGETALL', KEYS[2])
local reserved = 0
for j = 1, #holds, 2 do
  local sep = string.find(holds[j + 1], ':', 1, true)
  if tonumber(string.sub(holds[j + 1], sep + 1)) > tonumber(ARGV[1]) then
    reserved = reserved + tonumber(string.sub(holds[j + 1], 1, sep - 1))
  end
end
return {used, reserved}
"""

# KEYS: lease; ARGV: holder, ttl ms -> 1 when held by holder now, else 0
CLAIM = """
local cur = redis.call('GET', KEYS[1])
if cur == false or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# KEYS: lease; ARGV: holder
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: lines, counts; ARGV: index, "ok"|"failed", line -> 1 when new
PUT_LINE = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[3]) == 1 then
  redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
  return 1
end
return 0
"""

ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError)


def _keys(counter: Counter) -> tuple[str, str]:
    key_hash, _, rest = counter.store_key.partition(":")
    tag = f"{{{key_hash}}}"
    return f"{NS}:used:{tag}:{rest}", f"{NS}:holds:{tag}:{rest}"


class RedisState(GatewayState):
    name = "redis"
    shared = True

    def __init__(self, url: str, limits: ResponseLimits, *, timeout: float = 0.5):
        super().__init__(limits)
        self.url = url
        # short timeouts and no retries here: the fail-open layer decides what a failure means
        # a bounded pool that makes a burst wait for a connection (instead of failing)
        pool = aredis.BlockingConnectionPool.from_url(
            url, max_connections=MAX_CONNECTIONS, timeout=POOL_WAIT_S, socket_timeout=timeout,
            socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0))
        self.client: Any = aredis.Redis(connection_pool=pool)
        self._reserve = self.client.register_script(RESERVE)
        self._settle = self.client.register_script(SETTLE)
        self._read = self.client.register_script(READ)
        self._claim = self.client.register_script(CLAIM)
        self._release = self.client.register_script(RELEASE)
        self._put_line = self.client.register_script(PUT_LINE)
        self._queue: list[tuple[Any, list[str], list[Any], asyncio.Future[Any]]] = []
        self._runner: asyncio.Task[None] | None = None

    async def _batched(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """Run a script with every other one called in the same turn of the event loop:
        one pipeline, one round trip (group commit); each caller gets its own result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((script, keys, args, future))
        if self._runner is None or self._runner.done():
            self._runner = loop.create_task(self._run_batches())
        return await future

    async def _run_batches(self) -> None:
        await asyncio.sleep(0)  # the calls made in this turn join the first batch
        while self._queue:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            results = await self._pipeline(batch)
            if any(isinstance(r, NoScriptError) for r in results):
                # a Redis that restarted (or flushed its scripts): load them, once
                try:
                    for script in {id(b[0]): b[0] for b in batch}.values():
                        script.sha = await self.client.script_load(script.script)
                except ERRORS as exc:
                    results = [exc] * len(batch)
                else:
                    results = await self._pipeline(batch)
            for (*_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue  # its caller went away
                if isinstance(result, BaseException):
                    future.set_exception(StateError(
                        f"redis: {type(result).__name__}: {result}"))
                else:
                    future.set_result(result)

    async def _pipeline(self, batch: list[tuple[Any, list[str], list[Any],
                                                asyncio.Future[Any]]]) -> list[Any]:
        """One round trip for the batch; an error per call (never raised) where one failed.
        (EVALSHA only: asking Redis whether it has the scripts would cost a round trip.)"""
        pipe = self.client.pipeline(transaction=False)
        for script, keys, args, _ in batch:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        try:
            results: list[Any] = await pipe.execute(raise_on_error=False)
        except ERRORS as exc:
            return [exc] * len(batch)
        return results

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
        args: list[Any] = [hold_id, amount, repr(now), repr(expires)]
        for c in counters:
            args += [c.limit, repr(c.ends_at)]
        result = await self._batched(self._reserve, self._layout(counters), args)
        index = int(result[0])
        if index == 0:
            return None
        return Refusal(counters[index - 1], int(result[1]), int(result[2]), amount)

    async def settle(self, hold_id: str, counters: Sequence[Counter], charged: int,
                     now: float) -> None:
        await self._batched(self._settle, self._layout(counters),
                            [hold_id, charged, *(repr(c.ends_at) for c in counters)])

    async def add_used(self, counters: Sequence[Counter], tokens: int) -> None:
        await self._call("settle", self._settle(
            keys=self._layout(counters),
            args=["-", tokens, *(repr(c.ends_at) for c in counters)]))

    async def counter(self, counter: Counter, now: float) -> tuple[int, int]:
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
                           items: bytes, now: float) -> bool:
        limits = self.limits
        if not limits.enabled or not limits.fits(response, items):
            return False
        key = f"{NS}:response:{response_id}"
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(key)
        pipe.hset(key, mapping={"owner": owner, "response": response, "items": items,
                                "expires": repr(now + limits.ttl)})
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
                              entry[b"items"])

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
        try:
            await self.client.aclose()
        except ERRORS:
            pass
