"""Async etcd store on ``aetcd``: what aetcd lacks, done once for every role.

aetcd gives plain RPCs. Nebula needs more from etcd, and it lives here so that no
role re-implements it:

* **several endpoints** - calls rotate to the next endpoint when one is down;
* **fenced writes** - a compare-and-swap that also requires a :class:`Fence` (the
  election key still holding the writer's identity under the writer's lease);
* **leases that stay alive** - :class:`LeaseKeeper` refreshes a lease, writes only
  keys that are absent or its own, and when etcd says the lease is gone (etcd
  restarted past the TTL, a partition) re-grants one and registers again what the
  role's *current* state says, without the caller restarting anything;
* **watches that survive and cannot go silently stale** - :class:`PrefixMirror`
  lists a prefix, then watches from the listed revision + 1 on its own stream
  (:class:`WatchStream`) that requires a leader and asks etcd for progress while
  quiet; a broken or silent watch resumes from the last seen revision on the next
  endpoint, a compacted one re-lists (the informer pattern of etcd's clients).

Their background tasks run in a :class:`~nebula_common.tasks.TaskSet`, the
role's own when it passes one: a mirror that crashes is restarted, a lease
keeper that crashes is fatal (the role cannot keep its keys any more).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aetcd
import aetcd.exceptions as etcd_errors
import aetcd.transactions
import aetcd.utils
import grpc
from aetcd import rpc
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)

from .errors import error_text
from .retry import backoff_delay
from .tasks import TaskSet, cancel_task

log = logging.getLogger(__name__)

T = TypeVar("T")

CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    etcd_errors.ConnectionFailedError,
    etcd_errors.ConnectionTimeoutError,
    etcd_errors.InternalError,
    etcd_errors.WatchTimeoutError,
    grpc.RpcError,
    asyncio.TimeoutError,
    ConnectionError,
    OSError,
)
"""Errors that mean "etcd could not be reached", as opposed to a refused request."""

REQUEST_ERRORS: tuple[type[BaseException], ...] = (
    etcd_errors.UnauthenticatedError,
    etcd_errors.InvalidArgumentError,
    etcd_errors.PreconditionFailedError,
    etcd_errors.RevisionCompactedError,
)
"""Errors where etcd answered and refused: trying another endpoint would not help."""

UNREACHABLE_HOLD_S = 30.0
"""How long a rotation passes over an endpoint that did not answer (see next_endpoint)."""


def answered(exc: BaseException) -> bool:
    """The failure is an etcd member's own answer ("etcdserver: no leader", "leader
    changed"...): the member is up, it will have a leader again within an election.
    Anything else (a timeout, a refused or reset connection, a silent watch) says the
    member may be gone, and trying it again may cost the whole client timeout."""
    return "etcdserver:" in str(exc)


def next_endpoint(index: int, count: int, held_until: Mapping[int, float], now: float) -> int:
    """The endpoint to try after ``index`` failed: the next one in order that is not held
    (it did not answer within ``UNREACHABLE_HOLD_S``), else the one held longest ago.

    During an election every live member refuses leader-bound calls for a moment; a plain
    round-robin then went back to the member that was killed, whose address swallows
    packets, and each mirror waited out the client timeout on it (a router's /readyz
    stayed 503 for seconds after the leader came back).
    """
    others = [(index + step) % count for step in range(1, count)]
    for candidate in others:
        if held_until.get(candidate, 0.0) <= now:
            return candidate
    return min(others, key=lambda i: held_until.get(i, 0.0), default=index)


CHANNEL_OPTIONS: dict[str, int] = {
    "grpc.use_local_subchannel_pool": 1,
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 1000,
}
"""gRPC options of every channel to etcd: a failed endpoint is retried within a second.

By default a process's channels share one subchannel per address, and a subchannel
that failed waits 1 s x 1.6 per failure (up to 2 min) before it dials again; a new
channel after a rotation inherits that wait. After a 10 to 20 s etcd outage that was
up to 5 s of refused calls once etcd was back: longer than a short lease, so a node
lost its lease to an outage it had otherwise survived and the scheduler moved its
replicas. Each channel now owns its connection (a rotation dials afresh) and waits at
most a second between dials (tests/integration/test_store.py, the outage test). The
connect timeout stays gRPC's 20 s (``grpc.min_reconnect_backoff_ms`` sets that, not a
backoff): a TLS handshake to a remote etcd must not be cut at the backoff. A role has one
store, so this is one connection per role, dialled about once a second while etcd is down.
"""


def _rpc_cancelled_under_us() -> bool:
    """True when a CancelledError came from gRPC, not from cancelling the current task.

    Closing a gRPC channel (``EtcdStore._rotate``) cancels every RPC in flight on it,
    which raises CancelledError in tasks that nobody cancelled; those must retry.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() == 0


class StoreUnavailable(RuntimeError):
    """etcd could not be reached on any endpoint within the deadline."""


class FenceLost(RuntimeError):
    """A fenced write was refused: the fence key no longer holds the writer's identity."""


class WatchBroken(ConnectionError):
    """A watch ended: etcd cancelled it (no leader...), its stream failed, or it went silent."""


PROGRESS_INTERVAL_S = 1.0
"""How often a quiet watch asks etcd to confirm it is still following (a progress request)."""

WATCH_STALL_S = 5.0
"""A watch that etcd has not answered for this long is given up and opened again."""

NEW_WATCH_STALL_INTERVALS = 3
"""A new watch asks for progress at once; one that etcd has not answered once is given
up after this many progress intervals, not ``WATCH_STALL_S``: right after an election a
member can take a watch and then answer nothing on it (seen on etcd 3.5 in the multi-host
bundle: a router stayed stale for 7 to 9 s after the leader was killed). A watch that
answered keeps the full bound."""

REQUIRE_LEADER = ("hasleader", "true")
"""gRPC metadata: etcd refuses, or cancels, a watch while its member has no leader."""


class _LeaseCompare(aetcd.transactions.BaseCompare):  # type: ignore[misc]  # untyped aetcd
    """``lease(key) == id`` in a transaction (aetcd has VALUE, VERSION, CREATE, MOD only).

    etcd compares an absent key as lease 0.
    """

    def build_compare(self, compare: Any) -> None:
        compare.target = rpc.Compare.LEASE
        compare.lease = int(self.value)


def _lease_is(key: bytes, lease: int) -> Any:
    return _LeaseCompare(key) == lease


@dataclass(frozen=True)
class Fence:
    """A condition of a write: ``key`` still holds ``value`` under ``lease``.

    The scheduler fences plan writes with the election key: a leader that stalled
    past its lease (and lost the key to a follower) has every later write refused.
    """

    key: str
    value: bytes
    lease: int

    def compares(self, txn: Any) -> list[Any]:
        key = self.key.encode()
        return [txn.value(key) == self.value, _lease_is(key, self.lease)]

    def held_in(self, kvs: Any) -> bool:
        """True when a transaction's range result of :attr:`key` shows the fence holding."""
        return any(value == self.value and meta.lease == self.lease for value, meta in kvs)


@dataclass(frozen=True)
class EtcdConfig:
    """How to reach etcd: endpoints, optional auth and TLS, per-call timeout."""

    endpoints: tuple[str, ...] = ("127.0.0.1:2379",)
    username: str | None = None
    password: str | None = None
    ca_cert: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    timeout: float = 5.0

    @staticmethod
    def parse_endpoints(value: str) -> tuple[str, ...]:
        """``"http://a:2379,b:2379"`` -> ``("a:2379", "b:2379")``."""
        endpoints = []
        for raw in value.split(","):
            item = raw.strip()
            if not item:
                continue
            item = item.split("://", 1)[-1].rstrip("/")
            host, sep, port = item.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"etcd endpoint {raw.strip()!r} is not HOST:PORT")
            endpoints.append(item)
        if not endpoints:
            raise ValueError("no etcd endpoint given")
        return tuple(endpoints)

    @property
    def tls(self) -> bool:
        return bool(self.ca_cert or self.client_cert)


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int
    create_revision: int
    lease: int = 0


class _TlsClient(aetcd.Client):  # type: ignore[misc]  # aetcd is untyped: Client is Any
    """aetcd only opens plaintext channels; this one opens a TLS channel."""

    def __init__(self, *args: Any, credentials: grpc.ChannelCredentials, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._credentials = credentials

    async def connect(self) -> None:
        if self._connected.is_set() or self._is_connecting:
            await super().connect()  # connected, or another task is: nothing to swap
            return
        original = aetcd.client.rpc.insecure_channel

        def secure(target: str, options: Any = None) -> grpc.aio.Channel:
            aetcd.client.rpc.insecure_channel = original  # for this one channel only
            return grpc.aio.secure_channel(target, self._credentials, options=options)

        # aetcd's connect() makes its channel before its first await, so the factory is
        # swapped only while no other task can run: it used to stay swapped across the
        # password authentication, and a plaintext client connecting meanwhile in the same
        # process got a TLS channel (or one TLS client put another's factory back for good).
        aetcd.client.rpc.insecure_channel = secure
        try:
            await super().connect()
        finally:
            if aetcd.client.rpc.insecure_channel is secure:
                aetcd.client.rpc.insecure_channel = original


def _read(path: str | None) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as fh:
        return fh.read()


async def _close_quietly(client: aetcd.Client) -> None:
    """Close a client within 2 s; a channel that is already broken may fail to close."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.close(), 2)


class EtcdStore:
    """A connection to an etcd cluster with failover across endpoints."""

    def __init__(self, config: EtcdConfig):
        self.config = config
        self._index = 0
        self._client: aetcd.Client | None = None
        self._lock = asyncio.Lock()
        self._held_until: dict[int, float] = {}
        """Endpoint index -> ``time.monotonic()`` until which rotations pass over it."""
        self._closing: set[asyncio.Task[None]] = set()
        """Channels being closed after a rotation (held here: a task needs a reference)."""
        self.last_ok: float = 0.0
        self.last_error: str = ""

    # -- connection -----------------------------------------------------------------
    def _make_client(self, endpoint: str) -> aetcd.Client:
        host, _, port = endpoint.rpartition(":")
        kwargs: dict[str, Any] = dict(
            host=host,
            port=int(port),
            username=self.config.username,
            password=self.config.password,
            timeout=self.config.timeout,
            options=CHANNEL_OPTIONS,
        )
        if self.config.tls:
            creds = grpc.ssl_channel_credentials(
                root_certificates=_read(self.config.ca_cert),
                private_key=_read(self.config.client_key),
                certificate_chain=_read(self.config.client_cert),
            )
            return _TlsClient(credentials=creds, **kwargs)
        return aetcd.Client(**kwargs)

    @property
    def endpoint(self) -> str:
        return self.config.endpoints[self._index % len(self.config.endpoints)]

    async def _current(self) -> aetcd.Client:
        if self._client is None:
            self._client = self._make_client(self.endpoint)
        return self._client

    async def discard(self, failed: aetcd.Client, why: BaseException) -> None:
        """Stop using ``failed`` (a stream on it broke or went silent): the next call rotates."""
        await self._rotate(failed, why)

    async def _rotate(self, failed: aetcd.Client, why: BaseException) -> None:
        async with self._lock:
            if self._client is not failed:
                return  # another task already rotated
            self._client = None
            now, count = time.monotonic(), len(self.config.endpoints)
            current = self._index % count
            if not answered(why):
                self._held_until[current] = now + UNREACHABLE_HOLD_S
            self._index = next_endpoint(current, count, self._held_until, now)
        # Shielded: a caller cut short here (a re-grant cancels a role's hung write) must
        # not leave the old channel half-closed, holding its connection.
        closing = asyncio.ensure_future(_close_quietly(failed))
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)
        await asyncio.shield(closing)

    @property
    def healthy(self) -> bool:
        """True when the last call to etcd succeeded."""
        return self.last_ok > 0 and not self.last_error

    async def call(self, op: Callable[[aetcd.Client], Awaitable[T]], attempts: int = 0,
                   per_try: float | None = None) -> T:
        """Run ``op`` against the current endpoint, rotating endpoints on connection errors.

        ``attempts`` defaults to one try per endpoint, so a single call fails fast
        (the caller decides whether to retry); auth and request errors are raised as is.
        ``per_try`` bounds each try below the client's own timeout: a try that runs out
        counts as a connection error, so the next one goes to the next endpoint.
        """
        tries = attempts or len(self.config.endpoints)
        last: BaseException | None = None
        for _ in range(tries):
            client = await self._current()
            try:
                # In this task, not wait_for's: a cancel of the caller is never swallowed,
                # and a gRPC cancel reads as one (see _rpc_cancelled_under_us).
                async with asyncio.timeout(per_try):
                    result = await op(client)
            except asyncio.CancelledError as exc:
                if not _rpc_cancelled_under_us():
                    raise
                # Another task rotated the endpoint and closed the channel: gRPC cancels the
                # RPCs in flight on it. That is a connection failure here, not our cancellation.
                last = exc
                continue
            except REQUEST_ERRORS:
                raise
            except (*CONNECTION_ERRORS, etcd_errors.ClientError) as exc:
                last = exc
                self.last_error = f"{self.endpoint}: {error_text(exc)}"
                await self._rotate(client, exc)
                continue
            self.last_ok = time.monotonic()
            self.last_error = ""
            if self._held_until and self._client is client:
                self._held_until.pop(self._index % len(self.config.endpoints), None)
            return result
        why = error_text(last) if last is not None else "no try"
        raise StoreUnavailable(f"etcd unreachable at {','.join(self.config.endpoints)}: {why}")

    async def wait_until_ready(self, deadline_s: float = 30.0) -> None:
        """Block until etcd answers, or raise :class:`StoreUnavailable` after ``deadline_s``."""
        retrying = AsyncRetrying(retry=retry_if_exception_type(StoreUnavailable),
                                 wait=wait_exponential(multiplier=0.1, max=1.0),
                                 stop=stop_after_delay(deadline_s), reraise=True)
        async for attempt in retrying:
            with attempt:
                await self.call(lambda c: c.status())

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await _close_quietly(client)
        if self._closing:  # each bounded by _close_quietly; wait() cancels none of them
            await asyncio.wait(set(self._closing))

    # -- key/value --------------------------------------------------------------------
    @staticmethod
    def _kv(item: Any) -> KeyValue:
        return KeyValue(
            key=item.key.decode(),
            value=item.value,
            mod_revision=item.mod_revision,
            create_revision=item.create_revision,
            lease=item.lease,
        )

    async def get(self, key: str) -> KeyValue | None:
        result = await self.call(lambda c: c.get(key.encode()))
        return None if result is None else self._kv(result)

    async def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """All keys under ``prefix`` and the store revision they were read at."""
        result = await self.call(lambda c: c.get_prefix(prefix.encode()))
        return [self._kv(kv) for kv in result], result.header.revision

    async def put(self, key: str, value: bytes, lease: int | None = None) -> None:
        await self.call(lambda c: c.put(key.encode(), value, lease=lease))

    async def delete(self, key: str) -> bool:
        result = await self.call(lambda c: c.delete(key.encode()))
        return bool(result and getattr(result, "deleted", 0))

    async def delete_prefix(self, prefix: str) -> None:
        await self.call(lambda c: c.delete_prefix(prefix.encode()))

    async def put_if_revision(self, key: str, value: bytes, mod_revision: int,
                              lease: int | None = None, fence: Fence | None = None) -> bool:
        """Compare-and-swap: put only if the key's mod_revision is ``mod_revision``.

        ``mod_revision == 0`` means "only if the key does not exist". With ``fence``
        the write also requires the fence to hold, and :class:`FenceLost` is raised
        when that is why it was refused.
        """
        return await self._if_revision(key, mod_revision, fence,
                                       lambda txn: txn.put(key.encode(), value, lease=lease))

    async def delete_if_revision(self, key: str, mod_revision: int,
                                 fence: Fence | None = None) -> bool:
        """Delete only if the key's mod_revision is ``mod_revision`` (and ``fence`` holds)."""
        return await self._if_revision(key, mod_revision, fence,
                                       lambda txn: txn.delete(key.encode()))

    async def _if_revision(self, key: str, mod_revision: int, fence: Fence | None,
                           write: Callable[[Any], Any]) -> bool:
        async def op(client: aetcd.Client) -> bool:
            txn = client.transactions
            compare = [txn.mod(key.encode()) == mod_revision]
            failure = []
            if fence is not None:
                compare += fence.compares(txn)
                failure = [txn.get(fence.key.encode())]  # tells a lost fence from a lost CAS
            succeeded, responses = await client.transaction(
                compare=compare, success=[write(txn)], failure=failure)
            if not succeeded and fence is not None and not fence.held_in(responses[0]):
                raise FenceLost(f"{fence.key} no longer holds {fence.value.decode()!r} "
                                f"under lease {fence.lease:x}")
            return bool(succeeded)

        return await self.call(op)

    async def put_owned(self, key: str, value: bytes, lease: int, previous: int = 0) -> bool:
        """Put ``key`` under ``lease`` only if it is absent, under ``lease``, or still under
        ``previous`` (this process's lease before it was lost and re-granted).

        False when another lease (another process) holds the key: it is left as it is. A
        key still under ``previous`` was written by nobody since, so it is moved to the
        new lease at once instead of vanishing when the old lease expires.
        """

        async def op(client: aetcd.Client) -> bool:
            txn = client.transactions
            raw = key.encode()
            put = txn.put(raw, value, lease=lease)
            absent = txn.txn(compare=[txn.version(raw) == 0], success=[put], failure=[])
            fallback = absent
            if previous:
                fallback = txn.txn(compare=[_lease_is(raw, previous)], success=[put],
                                   failure=[absent])
            ours, responses = await client.transaction(
                compare=[_lease_is(raw, lease)], success=[put], failure=[fallback])
            if ours:
                return True
            inner = responses[0].response_txn
            if inner.succeeded or not previous:
                return bool(inner.succeeded)
            return bool(inner.responses[0].response_txn.succeeded)

        return await self.call(op)

    async def delete_owned(self, key: str, lease: int, previous: int = 0) -> bool:
        """Delete ``key`` only if ``lease`` (or this process's ``previous`` one) holds it;
        False when it is absent or another's."""

        async def op(client: aetcd.Client) -> bool:
            txn = client.transactions
            raw = key.encode()
            delete = txn.delete(raw)
            failure = []
            if previous:
                failure = [txn.txn(compare=[_lease_is(raw, previous)], success=[delete],
                                   failure=[])]
            succeeded, responses = await client.transaction(
                compare=[_lease_is(raw, lease)], success=[delete], failure=failure)
            if succeeded or not previous:
                return bool(succeeded)
            return bool(responses[0].response_txn.succeeded)

        return await self.call(op)

    # -- leases -----------------------------------------------------------------------
    async def grant(self, ttl: int) -> int:
        lease = await self.call(lambda c: c.lease(ttl))
        return int(lease.id)

    async def refresh(self, lease_id: int, per_try: float | None = None, attempts: int = 0
                      ) -> int:
        """Refresh a lease; returns its remaining TTL (<= 0 when etcd no longer has it)."""
        reply = await self.call(lambda c: c.refresh_lease(lease_id), attempts, per_try)
        return int(reply.TTL) if reply is not None else 0

    async def revoke(self, lease_id: int) -> None:
        await self.call(lambda c: c.revoke_lease(lease_id))

    # -- watch ------------------------------------------------------------------------
    async def watch_prefix(self, prefix: str, start_revision: int) -> WatchStream:
        """A created watch of ``prefix``; prefer :class:`PrefixMirror`, which survives failures."""
        return await self.call(lambda c: WatchStream.open(c, prefix.encode(), start_revision,
                                                          self.config.timeout))


class WatchStream:
    """One prefix watch on its own gRPC stream, with what aetcd's shared watcher lacks.

    * **require-leader**: the stream carries ``hasleader=true``, so etcd refuses it,
      or cancels it within a few election timeouts, while its member has no leader
      (a partitioned minority member cannot feed a stale view as if all were well);
    * **progress requests**: :meth:`request_progress` asks etcd to answer even when
      nothing changed, so a silent stream (a frozen etcd, a black-holed connection)
      is noticed instead of looking like a quiet prefix.
    """

    def __init__(self, client: aetcd.Client, call: Any) -> None:
        self.client = client
        self._call = call
        self._responses: asyncio.Queue[Any] = asyncio.Queue()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def open(cls, client: aetcd.Client, prefix: bytes, start_revision: int,
                   timeout: float) -> WatchStream:
        """Create the watch; raises when etcd refuses it or does not answer in ``timeout``."""
        await client.connect()
        metadata = (*(client.metadata or ()), REQUIRE_LEADER)
        stream = cls(client, rpc.WatchStub(client.channel).Watch(metadata=metadata))
        try:
            await stream._send(rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
                key=prefix, range_end=aetcd.utils.prefix_range_end(prefix),
                start_revision=start_revision)), timeout)
            created = await stream.next(timeout)
            if created is None:
                raise etcd_errors.WatchTimeoutError(f"no answer to a watch in {timeout:.0f}s")
            if not created.created:
                raise WatchBroken("etcd answered a watch request without creating it")
        except BaseException:
            await stream.close()
            raise
        return stream

    async def _read(self) -> None:
        try:
            while True:
                response = await self._call.read()
                if response is grpc.aio.EOF:
                    self._responses.put_nowait(WatchBroken("etcd closed the watch stream"))
                    return
                self._responses.put_nowait(response)
        except grpc.aio.AioRpcError as exc:
            self._responses.put_nowait(WatchBroken(f"{exc.code().name}: {exc.details()}"))
        except asyncio.CancelledError:
            # Our close(), or the channel closed under us (an endpoint rotation).
            self._responses.put_nowait(WatchBroken("watch stream cancelled"))

    async def _send(self, request: Any, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._call.write(request), timeout)
        except Exception as exc:
            raise WatchBroken(f"cannot write to the watch stream: "
                              f"{error_text(exc)}") from None

    async def next(self, timeout: float) -> Any | None:
        """The next response with events or progress; None when ``timeout`` passes first.

        Raises :class:`WatchBroken` when the stream ended or etcd cancelled the watch,
        ``RevisionCompactedError`` when its start revision was compacted.
        """
        try:
            item = await asyncio.wait_for(self._responses.get(), timeout)
        except TimeoutError:
            return None
        if isinstance(item, BaseException):
            raise item
        if item.compact_revision:
            raise etcd_errors.RevisionCompactedError(item.compact_revision)
        if item.canceled:
            raise WatchBroken(f"etcd cancelled the watch: {item.cancel_reason or 'no reason'}")
        return item

    async def request_progress(self, timeout: float) -> None:
        """Ask etcd for a progress notification (an empty response) on this stream."""
        await self._send(rpc.WatchRequest(progress_request=rpc.WatchProgressRequest()),
                         timeout)

    async def close(self) -> None:
        self._call.cancel()
        await cancel_task(self._reader)


Listener = Callable[[], Any]


class PrefixMirror:
    """A local, always-converging copy of every key under a prefix.

    ``items`` maps key -> value bytes. Listeners are called (with no argument)
    after every change, so consumers stay level-triggered: they look at the
    whole mirror, never at a single event. While etcd is unreachable the mirror
    keeps its last known content and ``healthy`` is False; :meth:`silent_for`
    says how long etcd has not answered it (a list, events, or a progress
    notification, asked for every ``progress_interval`` while the prefix is
    quiet), and a watch silent for ``stall_after`` is opened again on the next
    endpoint. Its watch loop and the coroutines async listeners return run in
    ``tasks`` (its own set if None).
    """

    def __init__(self, store: EtcdStore, prefix: str, name: str = "",
                 tasks: TaskSet | None = None, *, progress_interval: float = PROGRESS_INTERVAL_S,
                 stall_after: float = WATCH_STALL_S):
        self.store = store
        self.prefix = prefix
        self.name = name or prefix
        self.progress_interval = progress_interval
        self.stall_after = stall_after
        self._own_tasks = tasks is None
        self.tasks = TaskSet(f"mirror:{self.name}") if tasks is None else tasks
        self.items: dict[str, bytes] = {}
        self.revision = 0
        self.synced = asyncio.Event()
        self.healthy = False
        self.last_error = ""
        self.relists = 0
        self.last_progress = 0.0
        """``time.monotonic()`` when etcd last answered this mirror (0: never)."""
        self._listed_at = 0
        self._listeners: list[Listener] = []
        self._task: asyncio.Task[None] | None = None
        self._watch: WatchStream | None = None

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def silent_for(self, now: float | None = None) -> float:
        """Seconds since etcd last answered this mirror (infinite before the first list)."""
        if not self.last_progress:
            return float("inf")
        return (time.monotonic() if now is None else now) - self.last_progress

    def _notify(self) -> None:
        for listener in self._listeners:
            try:
                result = listener()
                if asyncio.iscoroutine(result):
                    self.tasks.spawn(result, f"mirror-listener:{self.name}")
            except Exception:  # a listener bug must not stop the mirror
                log.exception("mirror %s listener failed", self.name)

    def start(self) -> asyncio.Task[None]:
        if self._task is None:
            self._task = self.tasks.supervise(f"mirror:{self.name}", self._run)
        return self._task

    async def stop(self) -> None:
        await cancel_task(self._task)
        self._task = None
        if self._own_tasks:
            await self.tasks.close()  # listener coroutines still running

    async def resync(self) -> None:
        """Read the whole prefix again now: for a caller that must act on the current state.

        The running watch goes on; events it still delivers from before this list are
        skipped, so the mirror never goes back in time.
        """
        await self._relist()

    async def _relist(self) -> None:
        kvs, revision = await self.store.get_prefix(self.prefix)
        self.items = {kv.key: kv.value for kv in kvs}
        self.revision = self._listed_at = revision
        self.relists += 1
        self.last_progress = time.monotonic()
        self.healthy = True
        self.last_error = ""
        self.synced.set()
        self._notify()

    async def _run(self) -> None:
        delay = 0.1
        # A mirror restarted after stop() resumes from where it was; only a fresh
        # one (or a compacted revision) needs a full list.
        need_list = self.revision == 0
        while True:
            try:
                if need_list:
                    await self._relist()
                    need_list = False
                self._watch = await self.store.watch_prefix(self.prefix, self.revision + 1)
                self.last_progress = time.monotonic()
                self.healthy = True
                delay = 0.1
                await self._follow(self._watch)
            except asyncio.CancelledError:
                if not _rpc_cancelled_under_us():
                    await self._cancel_watch()
                    raise
                # The channel was closed by an endpoint rotation: resume like any broken watch.
                self.healthy = False
            except etcd_errors.RevisionCompactedError:
                log.info("watch %s: revision %d compacted, re-listing", self.name, self.revision)
                need_list = True
                await self._cancel_watch()
                continue
            except Exception as exc:
                self._broken(exc)
                if isinstance(exc, WatchBroken) and self._watch is not None:
                    # A stream that failed or went silent: its endpoint is suspect.
                    await self.store.discard(self._watch.client, exc)
            await self._cancel_watch()
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 2.0)

    async def _follow(self, watch: WatchStream) -> None:
        """Apply the watch's events until it breaks (it raises); ask for progress when quiet."""
        bound = min(self.stall_after, NEW_WATCH_STALL_INTERVALS * self.progress_interval)
        await watch.request_progress(self.progress_interval)  # its first answer, asked now
        while True:
            response = await watch.next(self.progress_interval)
            if response is None:
                silent = self.silent_for()
                if silent >= bound:
                    raise WatchBroken(f"no answer from etcd for {silent:.1f}s")
                await watch.request_progress(self.progress_interval)
                continue
            bound = self.stall_after
            self.last_progress = time.monotonic()
            changed = False
            for event in response.events:
                revision = event.kv.mod_revision
                if revision <= self._listed_at:
                    continue  # already in a list read after it (see resync)
                key = event.kv.key.decode()
                if event.type == rpc.Event.PUT:
                    self.items[key] = event.kv.value
                else:
                    self.items.pop(key, None)
                self.revision = max(self.revision, revision)
                changed = True
            if changed:
                self._notify()

    def _broken(self, exc: Exception) -> None:
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if self.healthy:
            log.warning("etcd watch %s broken (%s); resuming from revision %d",
                        self.name, reason, self.revision)
        elif reason != self.last_error:
            # Never synced, or failing differently: say why (a refused password or
            # certificate must not look like a silent hang).
            log.warning("etcd: cannot list/watch %s: %s", self.name, reason)
        self.last_error = reason
        self.healthy = False

    async def _cancel_watch(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(watch.close(), 1)


Registration = Callable[[Mapping[str, bytes]], Awaitable[Mapping[str, bytes]]]
"""Given the last value of each key the lost lease held, what to put under the new one.

It answers from the role's current state: keys of things that are gone are left out.
"""

_Write = tuple[bytes | None, bool]
"""A write waiting to land: (value, or None for a delete; ``claim``)."""


@dataclass
class LeaseKeeper:
    """One lease per process, kept alive; what it must hold is registered again when lost.

    Every write goes through :meth:`put` or :meth:`delete`, serialised with
    re-registration by one lock, and touches only a key that is absent or held
    by this lease (or still by this process's previous lease, which nobody else
    wrote since): a process whose lease expired while it was away can neither
    overwrite nor delete what another process registered meanwhile. A write that
    does not land (etcd away, or the key still another lease's) is kept and
    retried on every keepalive tick until it lands or a newer write of that key
    replaces it.

    When etcd reports the lease gone (TTL <= 0 on refresh), a new lease is
    granted and ``registration`` is asked what to put under it. It is given the
    last value of every key the lost lease held (or was still trying to write:
    a key deleted since is not among them) and answers from the role's state at
    that moment, leaving out what that state no longer has (the node drops the
    replicas that were moved to another node meanwhile). Without one, those last
    values are put back as they are: right for keys that depend on nothing else.
    A registration that fails half-way is run again on the next tick until every
    key is back; ``alive`` is False until then. ``on_regrant`` listeners run after.

    The keepalive runs in ``tasks`` as a task that must not die: a role passes
    its own set and exits when the set's ``failed`` fires, instead of living on
    while its keys expire. It only refreshes, each try bounded (see _keepalive);
    what it finds to do (retry writes, re-grant, register) runs beside it, one
    job at a time, so a write stuck on a member that lost its leader cannot hold
    the refreshes back until the lease expires; a re-grant cancels a retry of
    writes, a registration or a role's own write that hangs, rather than wait for it
    with the keys gone (that write answers False and is carried to the new lease).
    """

    store: EtcdStore
    ttl: int = 5
    registration: Registration | None = None
    lease_id: int = 0
    held: dict[str, bytes] = field(default_factory=dict)
    """Keys written under the current lease and not deleted since, with their value."""
    pending: dict[str, _Write] = field(default_factory=dict)
    """The latest write of each key that has not landed yet."""
    regrants: int = 0
    alive: bool = False
    on_regrant: list[Callable[[], Any]] = field(default_factory=list)
    tasks: TaskSet = field(default_factory=lambda: TaskSet("lease"))
    _task: asyncio.Task[None] | None = None
    _job: asyncio.Task[None] | None = None
    """The write work the keepalive started (a flush, a re-grant, a registration)."""
    _job_is_regrant: bool = False
    _refresh_failed: bool = False
    """The last refresh failed (etcd away): a registration that completes now is not alive."""
    _writing: asyncio.Task[bool] | None = None
    """A role's put or delete talking to etcd now, under the lock (a re-grant cancels it)."""
    _regranting: bool = False
    """A re-grant waits for the lock: a role's write queued on it is deferred, not tried."""
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _lost: dict[str, bytes] | None = None
    """What the lost lease held, until its registration under the new one is complete."""
    _previous: int = 0
    """The lease before the last re-grant: keys still under it are ours to move or delete
    (etcd can report a lease gone that then outlives the report, e.g. across a restart)."""

    async def start(self) -> None:
        self.lease_id = await self.store.grant(self.ttl)
        self.alive = True
        self._task = self.tasks.supervise("lease-keepalive", self._keepalive, restart=False)

    async def put(self, key: str, value: bytes, *, claim: bool = False) -> bool:
        """Write ``key`` under the lease; False when it did not land now (it is retried).

        It lands only where the key is absent or already ours; ``claim`` takes over a
        key another lease holds (a key named after this process, e.g. a node's status
        left by its previous run, whose lease has not expired yet).
        """
        async with self._lock:
            return await self._try(key, (value, claim))

    async def delete(self, key: str) -> bool:
        """Delete ``key`` if this lease holds it (a key another process took is left alone)."""
        async with self._lock:
            return await self._try(key, (None, False))

    async def flush(self) -> None:
        """Retry the writes that have not landed, until etcd fails again."""
        async with self._lock:
            for key, write in list(self.pending.items()):
                try:
                    await self._write(key, write)
                except Exception:
                    return

    async def _try(self, key: str, write: _Write) -> bool:
        """A role's write, under the lock. It runs as a task of its own so that a re-grant
        can cut it short (see _regrant): a write hung on a member without a leader would
        otherwise hold the lock, and the lost lease's keys stay gone, for the client's
        timeout on every endpoint."""
        # Pending first: whatever cuts the attempt short, even before it starts, the
        # write is kept (the re-grant carries it to the new lease).
        self._defer(key, write)
        if self._regranting:
            return False
        attempt = asyncio.get_running_loop().create_task(self._write(key, write))
        self._writing = attempt
        try:
            return await attempt
        except asyncio.CancelledError:
            if not _rpc_cancelled_under_us():
                raise  # the caller was cancelled (the attempt with it)
            return False  # a re-grant cut it short
        except Exception as exc:  # etcd away: kept in pending and retried
            log.debug("write of %s failed (%s); will retry", key, exc)
            return False
        finally:
            self._writing = None

    def _defer(self, key: str, write: _Write) -> None:
        """What _write does before it reaches etcd: the write waits in ``pending``."""
        self.pending[key] = write
        if write[0] is None:
            self.held.pop(key, None)

    async def _write(self, key: str, write: _Write) -> bool:
        """One write under the lock; raises on etcd trouble, leaving it pending."""
        value, claim = write
        self._defer(key, write)
        if value is None:
            await self.store.delete_owned(key, self.lease_id, self._previous)
            landed = True
        elif claim:
            await self.store.put(key, value, lease=self.lease_id)
            landed = True
        else:
            landed = await self.store.put_owned(key, value, self.lease_id, self._previous)
        if landed:
            del self.pending[key]
            if value is not None:
                self.held[key] = value
            if self._lost is not None:
                # Written since the lease was lost: a registration still to run must not
                # put the lost lease's older value back (or a deleted key again).
                self._lost.pop(key, None)
        return landed

    async def _regrant(self) -> None:
        # A role's write may hold the lock, hung: cut it short, and let the writes queued
        # behind it wait in ``pending`` rather than each try etcd first.
        self._regranting = True
        try:
            if self._writing is not None:
                self._writing.cancel()
            async with self._lock:
                self._regranting = False
                await self._swap_lease()
        finally:
            self._regranting = False
        self.regrants += 1
        await self._register()

    async def _swap_lease(self) -> None:
        """Under the lock: a new lease, and what the lost one held kept for its registration."""
        lease = await self.store.grant(self.ttl)
        # The latest value of every key we hold or were still trying to write (a write
        # that failed while etcd was away is newer than what landed), plus what a
        # registration cut short by this loss had not put yet.
        last = {**(self._lost or {}), **self.held}
        for key, (value, _claim) in self.pending.items():
            if value is None:
                last.pop(key, None)
            else:
                last[key] = value
        self._lost = last
        self._previous = self.lease_id
        # A delete still to land is kept: etcd can report a lease gone that outlives the
        # report, and the key it still holds must go (delete_owned covers the previous lease).
        deletes = {key: write for key, write in self.pending.items() if write[0] is None}
        self.lease_id, self.held, self.pending = lease, {}, deletes
        self._refresh_failed = False

    async def _register(self) -> None:
        """Put under the new lease what ``registration`` says now; raises if etcd fails."""
        async with self._lock:
            lost = self._lost or {}
            wanted = dict(await self.registration(lost) if self.registration else lost)
            for key, value in wanted.items():
                await self._write(key, (value, False))
            # Deletes carried over the swap, while ``_previous`` is still the lost lease
            # (a second re-grant first would move it on and the delete would miss the key).
            for key, write in list(self.pending.items()):
                if write[0] is None:
                    await self._write(key, write)
            self._lost = None
        # A refresh that failed while the keys went back leaves the lease in doubt: alive
        # again only once a refresh succeeds (the keepalive sets it).
        self.alive = not self._refresh_failed
        log.warning("etcd lease was lost; re-granted lease %x and registered %d of %d keys "
                    "from the current state", self.lease_id, len(wanted), len(lost))
        for listener in self.on_regrant:
            result = listener()
            if asyncio.iscoroutine(result):
                await result

    async def _keepalive(self) -> None:
        loop = asyncio.get_running_loop()
        interval = max(self.ttl / 3.0, 0.2)
        wait, failures = interval, 0
        refreshed = loop.time()  # when etcd last extended the lease (the grant, at start)
        while True:
            await asyncio.sleep(wait)
            lease = self.lease_id
            # One endpoint per try. The first is cut at the interval (the client's timeout
            # can be the whole TTL): one that hangs on a member without a leader moves on
            # to the next. A retry may take what is left of the TTL: a leader slow for
            # every member still answers in time.
            bound = interval if failures == 0 else max(interval, refreshed + self.ttl
                                                       - loop.time())
            try:
                remaining = await self.store.refresh(lease, per_try=bound, attempts=1)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.alive, self._refresh_failed = False, True
                # the lease is running out: try again soon, backing off to the interval
                failures += 1
                wait = backoff_delay(failures, initial=0.25, maximum=interval)
                log.debug("lease keepalive failed: %s", exc)
                continue
            wait, failures = interval, 0
            if lease != self.lease_id:
                continue  # answered for a lease a re-grant has replaced meanwhile
            self._refresh_failed = False
            if remaining <= 0:
                self.alive = False
                self._start_job(self._regrant)
            else:
                refreshed = loop.time()
                if self._lost is not None:
                    self._start_job(self._register)  # the last attempt failed half-way
                else:
                    self.alive = True
                    if self.pending:
                        self._start_job(self.flush)

    def _start_job(self, job: Callable[[], Awaitable[None]]) -> None:
        """Run ``job`` beside the keepalive unless the last one is still running (the
        next tick looks again); an etcd failure in it is retried on a later tick.

        A re-grant cancels a running retry of pending writes or registration instead:
        either can hang for the client's timeout on every endpoint, and a lost lease
        must not wait for it. Nothing is lost: a write that had not landed is still
        pending, what a registration had not put yet is still in ``_lost``, and the
        re-grant carries both over to the new lease's registration. A re-grant already
        running is left to finish.
        """
        regrant = job == self._regrant
        if self._job is not None and not self._job.done():
            if not regrant or self._job_is_regrant:
                return
            self._job.cancel()  # it releases the write lock, which the re-grant waits for
        self._job_is_regrant = regrant
        self._job = self.tasks.spawn(self._quietly(job), "lease-writes")

    async def _quietly(self, job: Callable[[], Awaitable[None]]) -> None:
        try:
            await job()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.alive = False
            log.debug("lease write job failed (retried on a later tick): %s", exc)

    async def stop(self, revoke: bool = True) -> None:
        """Stop refreshing; with ``revoke`` every leased key disappears at once."""
        await cancel_task(self._task)
        await cancel_task(self._job)
        self._task = self._job = None
        if revoke and self.lease_id:
            try:
                await self.store.revoke(self.lease_id)
            except Exception as exc:
                log.warning("could not revoke lease: %s", exc)
        self.alive = False
