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
        if self._connected.is_set():
            return
        original = aetcd.client.rpc.insecure_channel

        def secure(target: str, options: Any = None) -> grpc.aio.Channel:
            return grpc.aio.secure_channel(target, self._credentials, options=options)

        # aetcd builds its stubs right after creating the channel; swapping the
        # factory for the duration of connect() keeps the rest of aetcd intact.
        aetcd.client.rpc.insecure_channel = secure
        try:
            await super().connect()
        finally:
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

    async def _rotate(self, failed: aetcd.Client) -> None:
        async with self._lock:
            if self._client is not failed:
                return  # another task already rotated
            self._client = None
            self._index += 1
        await _close_quietly(failed)

    @property
    def healthy(self) -> bool:
        """True when the last call to etcd succeeded."""
        return self.last_ok > 0 and not self.last_error

    async def call(self, op: Callable[[aetcd.Client], Awaitable[T]], attempts: int = 0) -> T:
        """Run ``op`` against the current endpoint, rotating endpoints on connection errors.

        ``attempts`` defaults to one try per endpoint, so a single call fails fast
        (the caller decides whether to retry); auth and request errors are raised as is.
        """
        tries = attempts or len(self.config.endpoints)
        last: BaseException | None = None
        for _ in range(tries):
            client = await self._current()
            try:
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
                self.last_error = f"{self.endpoint}: {exc or type(exc).__name__}"
                await self._rotate(client)
                continue
            self.last_ok = time.monotonic()
            self.last_error = ""
            return result
        raise StoreUnavailable(f"etcd unreachable at {','.join(self.config.endpoints)}: {last}")

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

    async def put_if_revision(
        self, key: str, value: bytes, mod_revision: int, lease: int | None = None
    ) -> bool:
        """Compare-and-swap: put only if the key's mod_revision is ``mod_revision``.

        ``mod_revision == 0`` means "only if the key does not exist".
        """

        async def op(client: aetcd.Client) -> bool:
            txn = client.transactions
            succeeded, _ = await client.transaction(
                compare=[txn.mod(key.encode()) == mod_revision],
                success=[txn.put(key.encode(), value, lease=lease)],
                failure=[],
            )
            return bool(succeeded)

        return await self.call(op)

    async def delete_if_revision(self, key: str, mod_revision: int) -> bool:
        async def op(client: aetcd.Client) -> bool:
            txn = client.transactions
            succeeded, _ = await client.transaction(
                compare=[txn.mod(key.encode()) == mod_revision],
                success=[txn.delete(key.encode())],
                failure=[],
            )
            return bool(succeeded)

        return await self.call(op)

    # -- leases -----------------------------------------------------------------------
    async def grant(self, ttl: int) -> int:
        lease = await self.call(lambda c: c.lease(ttl))
        return int(lease.id)

    async def refresh(self, lease_id: int) -> int:
        """Refresh a lease; returns its remaining TTL (<= 0 when etcd no longer has it)."""
        reply = await self.call(lambda c: c.refresh_lease(lease_id))
        return int(reply.TTL) if reply is not None else 0

    async def revoke(self, lease_id: int) -> None:
        await self.call(lambda c: c.revoke_lease(lease_id))

    # -- watch ------------------------------------------------------------------------
    async def watch_prefix(self, prefix: str, start_revision: int) -> Any:
        """A raw aetcd watch; prefer :class:`PrefixMirror`, which survives failures."""
        return await self.call(
            lambda c: c.watch_prefix(prefix.encode(), start_revision=start_revision)
        )


Listener = Callable[[], Any]


class PrefixMirror:
    """A local, always-converging copy of every key under a prefix.

    ``items`` maps key -> value bytes. Listeners are called (with no argument)
    after every change, so consumers stay level-triggered: they look at the
    whole mirror, never at a single event. While etcd is unreachable the mirror
    keeps its last known content and ``healthy`` is False. Its watch loop and
    the coroutines async listeners return run in ``tasks`` (its own set if None).
    """

    def __init__(self, store: EtcdStore, prefix: str, name: str = "",
                 tasks: TaskSet | None = None):
        self.store = store
        self.prefix = prefix
        self.name = name or prefix
        self._own_tasks = tasks is None
        self.tasks = TaskSet(f"mirror:{self.name}") if tasks is None else tasks
        self.items: dict[str, bytes] = {}
        self.revision = 0
        self.synced = asyncio.Event()
        self.healthy = False
        self.last_error = ""
        self.relists = 0
        self._listeners: list[Listener] = []
        self._task: asyncio.Task[None] | None = None
        self._watch: Any = None

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

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

    async def _relist(self) -> None:
        kvs, revision = await self.store.get_prefix(self.prefix)
        self.items = {kv.key: kv.value for kv in kvs}
        self.revision = revision
        self.relists += 1
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
                self.healthy = True
                delay = 0.1
                async for event in self._watch:
                    key = event.kv.key.decode()
                    if event.kind == "PUT":
                        self.items[key] = event.kv.value
                    else:
                        self.items.pop(key, None)
                    self.revision = max(self.revision, event.kv.mod_revision)
                    self._notify()
                # The iterator ended without an error: the client was closed under us.
                self.healthy = False
            except asyncio.CancelledError:
                if not _rpc_cancelled_under_us():
                    await self._cancel_watch()
                    raise
                # The channel was closed by an endpoint rotation: resume like any broken watch.
                self.healthy = False
            except etcd_errors.RevisionCompactedError:
                log.info("watch %s: revision %d compacted, re-listing", self.name, self.revision)
                need_list = True
                continue
            except Exception as exc:
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
            await self._cancel_watch()
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 2.0)

    async def _cancel_watch(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            try:
                await asyncio.wait_for(watch.cancel(), 1)
            except Exception:
                pass


@dataclass
class LeaseKeeper:
    """One lease per process, kept alive; its keys are put again if the lease is lost.

    Every key written through :meth:`put` is remembered. When etcd reports the
    lease gone (TTL <= 0 on refresh), a new lease is granted and every
    remembered key is written again under it; ``on_regrant`` listeners run
    after that, so a role can re-announce derived state.

    The keepalive runs in ``tasks`` as a task that must not die: a role passes
    its own set and exits when the set's ``failed`` fires, instead of living on
    while its keys expire.
    """

    store: EtcdStore
    ttl: int = 5
    lease_id: int = 0
    keys: dict[str, bytes] = field(default_factory=dict)
    regrants: int = 0
    alive: bool = False
    on_regrant: list[Callable[[], Any]] = field(default_factory=list)
    tasks: TaskSet = field(default_factory=lambda: TaskSet("lease"))
    _task: asyncio.Task[None] | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def start(self) -> None:
        self.lease_id = await self.store.grant(self.ttl)
        self.alive = True
        self._task = self.tasks.supervise("lease-keepalive", self._keepalive, restart=False)

    async def put(self, key: str, value: bytes) -> None:
        """Write ``key`` under the lease and remember it for re-registration."""
        self.keys[key] = value
        async with self._lock:
            await self.store.put(key, value, lease=self.lease_id)

    async def delete(self, key: str) -> None:
        self.keys.pop(key, None)
        await self.store.delete(key)

    def forget(self, key: str) -> None:
        """Stop re-registering ``key`` without deleting it now."""
        self.keys.pop(key, None)

    async def _regrant(self) -> None:
        async with self._lock:
            self.lease_id = await self.store.grant(self.ttl)
            for key, value in list(self.keys.items()):
                await self.store.put(key, value, lease=self.lease_id)
        self.regrants += 1
        self.alive = True
        log.warning("etcd lease was lost; re-granted lease %x and re-registered %d keys",
                    self.lease_id, len(self.keys))
        for listener in self.on_regrant:
            result = listener()
            if asyncio.iscoroutine(result):
                await result

    async def _keepalive(self) -> None:
        interval = max(self.ttl / 3.0, 0.2)
        while True:
            await asyncio.sleep(interval)
            try:
                remaining = await self.store.refresh(self.lease_id)
                if remaining <= 0:
                    self.alive = False
                    await self._regrant()
                else:
                    self.alive = True
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.alive = False
                log.debug("lease keepalive failed: %s", exc)

    async def stop(self, revoke: bool = True) -> None:
        """Stop refreshing; with ``revoke`` every leased key disappears at once."""
        await cancel_task(self._task)
        self._task = None
        if revoke and self.lease_id:
            try:
                await self.store.revoke(self.lease_id)
            except Exception as exc:
                log.warning("could not revoke lease: %s", exc)
        self.alive = False
