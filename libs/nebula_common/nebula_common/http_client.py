"""The request path's HTTP/1.1 client: pooled keep-alive connections, one write per request.

The router and the gateway forwarded through aiohttp's ``ClientSession`` until a profile
of ``make bench`` showed it spent about 30 % of the router's CPU per proxied request there (a
``ClientRequest`` and its auto headers, a payload writer that sends head and body apart, a
timer re-armed per packet; ``bench/findings.md``). A proxy needs much less, so this client
does only that:

- the request head and body go out in one ``transport.write``;
- the answer is parsed by httptools (llhttp, the parser uvicorn serves with);
- the body is handed over as it arrives, and chunks already buffered come out of one
  :meth:`Response.readany` joined; a reader that can pass bytes on at once gives
  ``readany`` a ``take`` callback, which is offered each read from the connection's own
  callback while the reader waits, so a steady stream wakes no task per chunk;
- one read-idle timer per response, re-armed only when it fires (aiohttp re-arms one per
  packet: about 3 % of the gateway's CPU on 10 ms-paced streams);
- idle connections are kept per origin, newest first, and dropped when the peer closes them
  or after ``keepalive_s``; reading pauses while :data:`HIGH_WATER` bytes wait unread.

It never retries, follows redirects, decompresses or reads proxy settings from the
environment: the bytes pass through as they came, and retrying is the caller's decision.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

HIGH_WATER = 256 * 1024
"""Unread body bytes at which the socket stops being read (resumed once they are taken)."""
NOT_WAITING = float("inf")

RawHeaders = list[tuple[bytes, bytes]]
Take = Callable[[bytes], bool]
"""Offered body bytes as they arrive (:meth:`Response.readany`): True when it took them."""


class HttpClientError(Exception):
    """The exchange with the upstream failed (base of this module's errors)."""


class ConnectError(HttpClientError):
    """No connection could be made."""


class ConnectTimeout(ConnectError):
    """No connection within the connect timeout."""


class ConnectionClosed(HttpClientError):
    """The upstream closed or reset the connection before its answer was complete."""


class ProtocolError(HttpClientError):
    """The upstream's answer is not HTTP/1.1 this client can read."""


class ReadTimeout(HttpClientError, TimeoutError):
    """One wait for body bytes lasted the read timeout."""


@dataclass(frozen=True, slots=True, eq=False)
class Origin:
    """Where a base URL's connections go (parsed once per base URL, and pooled by identity:
    the pool looks one up per request, and a field-wise hash costs a tuple each time)."""

    host: str
    port: int
    tls: bool
    host_header: bytes


def parse_origin(base_url: str) -> Origin:
    """``http(s)://host[:port]`` -> :class:`Origin`; ValueError for anything else."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) origin: {base_url!r}")
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    return Origin(parts.hostname, port, tls, parts.netloc.encode("idna"))


def request_head(method: str, target: str, origin: Origin, headers: Mapping[str, str],
                 body_length: int) -> bytes:
    """The request line and headers; ``host`` and ``content-length`` are set here.

    A name or value holding CR or LF is refused (ValueError): it would split the head.
    """
    lines = [f"{method} {target} HTTP/1.1\r\nhost: ".encode("latin-1"), origin.host_header,
             b"\r\ncontent-length: ", str(body_length).encode(), b"\r\n"]
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise ValueError(f"header {name!r} holds a line break")
        lines.append(f"{name}: {value}\r\n".encode("latin-1"))
    lines.append(b"\r\n")
    return b"".join(lines)


class Response:
    """One answer: :attr:`status` and :attr:`headers` once it arrived, then its body.

    Call :meth:`release` when done with it (the connection goes back to the pool when the
    answer was read whole, else it is closed) or :meth:`close` to drop it at once.
    """

    __slots__ = (
        "_body",
        "_buffer",
        "_conn",
        "_eof",
        "_error",
        "_head",
        "_idle",
        "_limit",
        "_loop",
        "_since",
        "_size",
        "_take",
        "_waiter",
        "content_type",
        "headers",
        "status",
    )

    def __init__(self, conn: _Connection, read_timeout: float | None) -> None:
        self._conn = conn
        self._loop = conn.loop
        self.status = 0
        self.headers: RawHeaders = []
        self.content_type = ""
        """The media type, lowercased, without parameters (``text/event-stream``)."""
        self._buffer: list[bytes] = []
        self._body: bytes | None = None
        self._size = 0
        self._eof = False
        self._error: BaseException | None = None
        self._head: asyncio.Future[None] = self._loop.create_future()
        self._waiter: asyncio.Future[None] | None = None
        self._take: Take | None = None
        self._limit = read_timeout or 0.0
        self._idle: asyncio.TimerHandle | None = None
        self._since = NOT_WAITING  # when the pending read began waiting (for the idle timer)

    # -- the consumer's side -------------------------------------------------------------
    def at_eof(self) -> bool:
        """The whole body was read."""
        return self._eof and not self._buffer

    async def readany(self, take: Take | None = None) -> bytes:
        """The body bytes that arrived since the last call (waits for some); b"" at the end.

        While it waits, each read from the connection is first offered to ``take``, from
        the connection's callback: bytes it takes are done with (and count as body bytes
        for the read timeout), and it goes on waiting. What it refuses, and the body's end,
        come back from this call as without it. ``take`` runs only while this call waits,
        so nothing it writes can overtake what its caller is still sending.
        """
        while not self._buffer:
            if self._error is not None:
                raise self._error
            if self._eof:
                return b""
            self._take = take
            try:
                await self._wait()
            finally:
                self._take = None
        data = self._joined()
        self._buffer.clear()
        if self._size > HIGH_WATER:
            self._conn.resume()
        self._size = 0
        return data

    async def read(self) -> bytes:
        """The rest of the body, whole; a second call gives the same bytes again."""
        if self._body is None:
            chunks = []
            while chunk := await self.readany():
                chunks.append(chunk)
            self._body = b"".join(chunks)
        return self._body

    async def iter_any(self) -> AsyncIterator[bytes]:
        """The body as :meth:`readany` hands it over, to its end."""
        while chunk := await self.readany():
            yield chunk

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lowercase), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()

    async def _wait(self) -> None:
        waiter = self._waiter = self._loop.create_future()
        if self._limit and self._idle is None:
            self._idle = self._loop.call_later(self._limit, self._check_idle)
        self._since = self._loop.time()
        try:
            await waiter
        finally:
            self._since = NOT_WAITING
            self._waiter = None

    def _check_idle(self) -> None:
        waited = self._loop.time() - self._since
        if waited >= self._limit:
            self._idle = None
            self._fail(ReadTimeout(f"no body bytes for {self._limit:g}s"))
            self._conn.abort()
            return
        left = self._limit - waited if self._since != NOT_WAITING else self._limit
        self._idle = self._loop.call_later(left, self._check_idle)

    def release(self) -> None:
        """Done with the answer: its connection is pooled if it was read whole."""
        self._stop_idle()
        conn, self._conn = self._conn, None  # type: ignore[assignment]
        if conn is not None:
            conn.finished(self, reusable=self._eof and self._error is None)

    def close(self) -> None:
        """Drop the answer (and its connection, unless it was already released)."""
        self._stop_idle()
        conn, self._conn = self._conn, None  # type: ignore[assignment]
        if conn is not None:
            conn.finished(self, reusable=False)

    def _stop_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    # -- the connection's side -----------------------------------------------------------
    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _feed(self, data: bytes) -> None:
        self._buffer.append(data)
        self._size += len(data)
        if self._size > HIGH_WATER:
            self._conn.pause()
        if self._take is None:  # else offered once the whole read is parsed (_offer)
            self._wake()

    def _offer(self) -> None:
        """A read is parsed: its body bytes go to the waiting reader's ``take``, else to it."""
        take = self._take
        if take is None or not self._buffer:
            return
        if self._eof or self._error is not None:
            self._wake()  # the end came with them: the reader sends the two together
            return
        data = self._joined()
        try:
            taken = take(data)
        except Exception as exc:  # the reader's own failure: it gets the bytes, then this
            self._take = None
            self._fail(exc)
            return
        if taken:
            self._buffer.clear()
            if self._size > HIGH_WATER:
                self._conn.resume()
            self._size = 0
            self._since = self._loop.time()  # the wait for body bytes starts again
        else:
            self._take = None
            self._wake()

    def _joined(self) -> bytes:
        """The buffered body bytes as one, left in the buffer as its only part."""
        buffer = self._buffer
        if len(buffer) > 1:
            buffer[:] = (b"".join(buffer),)
        return buffer[0]

    def _end(self) -> None:
        self._eof = True
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if self._eof or self._error is not None:
            return
        self._error = exc
        if not self._head.done():
            self._head.set_exception(exc)
            self._head.exception()  # retrieved here: the caller may be gone already
        self._wake()


class _Connection(asyncio.Protocol):
    """One keep-alive connection; at most one :class:`Response` under way on it."""

    def __init__(self, pool: Pool, origin: Origin) -> None:
        self.loop = asyncio.get_running_loop()
        self.pool = pool
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.response: Response | None = None
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._paused = False
        self._framed = False  # the answer has a content-length or is chunked
        self._keep_alive = False  # read with the head: llhttp forgets it once the body ended

    # -- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.response is None:  # bytes on an idle connection: nothing asked for them
            self.abort()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._lose(ProtocolError(f"unreadable answer: {exc}"))
            return
        response = self.response
        if response is not None and response._take is not None:
            response._offer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.forget(self)
        self.transport = None
        response = self.response
        if response is None:
            return
        if response._head.done() and not self._framed and response._error is None:
            response._end()  # a body delimited by the connection's end is complete now
            return
        when = "mid-body" if response._head.done() else "before answering"
        detail = f": {exc}" if exc is not None else ""
        response._fail(ConnectionClosed(f"the upstream closed the connection {when}{detail}"))

    def eof_received(self) -> bool | None:
        return None  # close the transport: HTTP/1.1 has no half-closed requests

    # -- httptools callbacks -------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.response is not None
        name = name.lower()
        if name == b"content-length" or (name == b"transfer-encoding"
                                         and b"chunked" in value.lower()):
            self._framed = True
        elif name == b"content-type":
            self.response.content_type = value.split(b";", 1)[0].strip().lower().decode(
                "latin-1")
        self.response.headers.append((name, value))

    def on_headers_complete(self) -> None:
        response = self.response
        assert response is not None
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # an interim answer: the real one follows
            response.headers.clear()
            return
        response.status = status
        self._keep_alive = self._parser.should_keep_alive()
        if status in (204, 304):
            self._framed = True
        if not response._head.done():
            response._head.set_result(None)

    def on_body(self, body: bytes) -> None:
        assert self.response is not None
        self.response._feed(body)

    def on_message_complete(self) -> None:
        response = self.response
        if response is not None and response.status:
            response._end()

    # -- the pool's and the response's side ----------------------------------------------
    def send(self, head: bytes, body: bytes, read_timeout: float | None) -> Response:
        assert self.transport is not None
        self.response = response = Response(self, read_timeout)
        self._framed = False
        if len(body) < 65536:
            self.transport.write(head + body)
        else:  # joining would copy a large body once more
            self.transport.write(head)
            self.transport.write(body)
        return response

    def finished(self, response: Response, *, reusable: bool) -> None:
        if self.response is not response:
            return
        self.response = None
        self.resume()
        if reusable and self._keep_alive and self.transport is not None:
            self.idle_since = self.loop.time()
            self.pool.keep(self)
        else:
            self.abort()

    def pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _lose(self, exc: HttpClientError) -> None:
        if self.response is not None:
            self.response._fail(exc)
        self.abort()


class Pool:
    """Keep-alive connections per origin, and the requests made on them."""

    def __init__(self, *, connect_timeout: float = 2.0, keepalive_s: float = 4.0,
                 tls: ssl.SSLContext | None = None) -> None:
        self.connect_timeout = connect_timeout
        self.keepalive_s = keepalive_s
        self._tls = tls
        self._origins: dict[str, Origin] = {}
        self._idle: dict[Origin, list[_Connection]] = {}
        self._closed = False

    async def request(self, base_url: str, method: str, target: str,
                      headers: Mapping[str, str], body: bytes,
                      read_timeout: float | None = None) -> Response:
        """Send a request and wait for the answer's status and headers.

        ``read_timeout`` bounds each wait for body bytes afterwards (:class:`ReadTimeout`);
        the wait for the head is the caller's to bound (``asyncio.timeout``).
        """
        origin = self._origins.get(base_url)
        if origin is None:
            origin = self._origins[base_url] = parse_origin(base_url)
        head = request_head(method, target, origin, headers, len(body))
        conn = self._take(origin) or await self._connect(origin)
        response = conn.send(head, body, read_timeout)
        try:
            await response._head
        except BaseException:
            response.close()
            raise
        return response

    def _take(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        oldest = asyncio.get_running_loop().time() - self.keepalive_s
        while idle:
            conn = idle.pop()
            if conn.idle_since >= oldest and conn.transport is not None and (
                    not conn.transport.is_closing()):
                return conn
            conn.abort()  # idle too long: the engine may be closing it right now
        return None

    async def _connect(self, origin: Origin) -> _Connection:
        if self._closed:
            raise ConnectError("the client is closed")
        loop = asyncio.get_running_loop()
        tls: ssl.SSLContext | None = None
        if origin.tls:
            tls = self._tls = self._tls or ssl.create_default_context()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self, origin), origin.host, origin.port, ssl=tls,
                    server_hostname=origin.host if tls is not None else None)
        except TimeoutError:
            raise ConnectTimeout(f"no connection to {origin.host}:{origin.port} within "
                                 f"{self.connect_timeout:g}s") from None
        except OSError as exc:  # refused, unreachable, unresolvable, TLS refused
            raise ConnectError(f"cannot connect to {origin.host}:{origin.port}: {exc}"
                               ) from None
        return conn

    def keep(self, conn: _Connection) -> None:
        if self._closed:
            conn.abort()
            return
        self._idle.setdefault(conn.origin, []).append(conn)

    def forget(self, conn: _Connection) -> None:
        idle = self._idle.get(conn.origin)
        if idle and conn in idle:
            idle.remove(conn)

    def idle_count(self) -> int:
        """Connections kept open for reuse (for tests and metrics)."""
        return sum(len(conns) for conns in self._idle.values())

    async def close(self) -> None:
        """Close every idle connection; answers under way end as their callers drop them."""
        self._closed = True
        for conns in self._idle.values():
            for conn in conns:
                conn.abort()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports run connection_lost
