"""One pipelined Redis connection for the request path's scripts (reserve, settle).

redis-py's pipeline costs about 250 microseconds of CPU per round trip (a pooled connection,
retries, commands packed and replies read in Python); this link costs about 25: commands
are packed by hiredis, written at once, and replies parsed by hiredis as they arrive and
handed to the waiting calls in order (Redis answers a connection's commands in order).
Everything else the gateway asks Redis goes through redis-py.

A call that times out or a connection that drops fails every call waiting on it
(``OSError`` / ``TimeoutError``); the next call connects again.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Sequence
from typing import Any, cast

import hiredis
from redis.asyncio.connection import parse_url

Command = Sequence[str | bytes | int | float]


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (a stream transport: uvloop's are not asyncio.Transport subclasses, so no check)
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.reader.feed(data)
            while (reply := self.reader.gets()) is not False:
                future = self.waiting.popleft()
                if not future.done():
                    future.set_result(reply)  # (a ReplyError is a value: that call's answer)
        except (hiredis.ProtocolError, IndexError) as exc:
            self.fail(ConnectionError(f"redis protocol: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(ConnectionError(f"redis connection lost: {exc or 'closed'}"))

    def fail(self, exc: Exception) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(exc)


class RespLink:
    """Commands in, replies out, on one connection (see the module's docstring)."""

    def __init__(self, url: str, timeout: float):
        self.options = parse_url(url)
        self.tls = url.startswith("rediss://")
        self.timeout = timeout
        self._protocol: _Protocol | None = None
        self._connecting = asyncio.Lock()

    async def _connect(self) -> _Protocol:
        async with self._connecting:
            if self._protocol is not None and self._protocol.transport is not None:
                return self._protocol
            loop = asyncio.get_running_loop()
            o = self.options
            async with asyncio.timeout(self.timeout):
                if "path" in o:
                    _, protocol = await loop.create_unix_connection(_Protocol, o["path"])
                else:
                    _, protocol = await loop.create_connection(
                        _Protocol, o.get("host", "localhost"), int(o.get("port", 6379)),
                        ssl=ssl.create_default_context() if self.tls else None)
            setup: list[Command] = []
            if o.get("password"):
                setup.append(("AUTH", *([o["username"]] if o.get("username") else []),
                              o["password"]))
            if int(o.get("db", 0)):
                setup.append(("SELECT", int(o["db"])))
            if setup:
                for reply in await self._send(protocol, setup):
                    if isinstance(reply, Exception):
                        protocol.fail(ConnectionError(f"redis: {reply}"))
                        raise ConnectionError(f"redis: {reply}")
            self._protocol = protocol
            return protocol

    async def call_many(self, commands: Sequence[Command]) -> list[Any]:
        """The replies in order (an error reply is a ``hiredis.ReplyError`` value); raises
        OSError or TimeoutError when the connection fails or Redis does not answer."""
        protocol = self._protocol
        if protocol is None or protocol.transport is None:
            protocol = await self._connect()
        return await self._send(protocol, commands)

    async def _send(self, protocol: _Protocol, commands: Sequence[Command]) -> list[Any]:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in commands]
        if protocol.transport is None:
            raise ConnectionError("redis connection lost")
        protocol.waiting.extend(futures)
        # (hiredis' stub types the command as a 1-tuple: any length is what it takes)
        protocol.transport.write(b"".join(hiredis.pack_command(tuple(c))  # type: ignore[arg-type]
                                          for c in commands))
        try:
            async with asyncio.timeout(self.timeout):
                await futures[-1]  # (replies come in order: the last one comes last)
        except BaseException:
            if not futures[-1].done() or futures[-1].cancelled():
                # the replies still owed would answer the wrong calls: drop the connection
                protocol.fail(TimeoutError("redis did not answer in time"))
            for f in futures:  # (each failed alike: retrieved here, raised once)
                if f.done() and not f.cancelled():
                    f.exception()
            raise
        return [f.result() for f in futures]

    async def close(self) -> None:
        if self._protocol is not None:
            self._protocol.fail(ConnectionError("closed"))
            self._protocol = None
