"""The HTTP/1.1 protocol every role serves under uvicorn: httptools, less per request.

``uvicorn.Server`` keeps what it does well: the lifespan, graceful shutdown, the
``date`` header and the bookkeeping of connections and tasks. Its httptools protocol
is kept for what happens per connection (parsing, pipelining, flow control, upgrades);
what happens per request and per chunk is Nebula's own, and does less:

- the request head is bounded (:data:`MAX_HEAD_BYTES`): httptools keeps a header
  however long it grows;
- one keep-alive timer per connection, re-armed for the rest of the wait when it
  fires on a connection that was busy since (uvicorn arms and cancels one per response);
- a response head leaves together with its body's first bytes, in one write (uvicorn
  writes it alone: two ``send`` system calls and often two segments per answer), or at
  the end of the loop turn when no body follows at once, so a stream's head never
  waits for its first chunk;
- response headers are checked with two regular-expression searches in all (uvicorn:
  two per header), and the server's own headers (``date``) are rendered once a second;
- ``receive()`` waits on a future only when it has nothing to hand over, not on an
  ``asyncio.Event`` made for every request;
- a streamed body can be written without an ASGI message: the scope's extension
  :data:`~.asgi.BODY_WRITER` is :meth:`Cycle.write_more`, which a proxy calls from its
  upstream's read callback (``Response.readany``'s ``take``), so a chunk wakes no task.

What the app sees is uvicorn's: the same scope, messages and errors (``RuntimeError``
for a message out of order, 500 for an app that fails before answering).
"""

from __future__ import annotations

import asyncio
import logging
import re
import urllib.parse
from collections.abc import Callable
from typing import Any, cast

import httptools
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT, service_unavailable
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from .asgi import BODY_WRITER, ASGIApp, Message, RawHeaders
from .http_servers import MAX_HEAD_BYTES

_BAD_NAME = re.compile(b'[\x00-\x1f\x7f()<>@,;:\\[\\]={} \t\\\\"]')
_BAD_VALUE = re.compile(b"[\x00-\x08\x0a-\x1f\x7f]")
# Both match one byte, so one search over the names (or values) joined tests each one.

_DISCONNECT: Message = {"type": "http.disconnect"}
_SERVER_ERROR = (b"content-type: text/plain; charset=utf-8\r\ncontent-length: 21\r\n"
                 b"connection: close\r\n\r\nInternal Server Error")
_NO_BODY_STATUSES = frozenset({204, 304})
_log = logging.getLogger("uvicorn.error")


class _ServerHeaders:
    """The server's own headers (``date``, refreshed by uvicorn once a second), rendered
    once per list uvicorn makes, not once per response."""

    def __init__(self) -> None:
        self._source: list[tuple[bytes, bytes]] | None = None
        self.rendered = b""

    def render(self, headers: list[tuple[bytes, bytes]]) -> bytes:
        if headers is not self._source:
            check_headers(headers)
            self._source = headers
            self.rendered = b"".join(b"%s: %s\r\n" % (n.lower(), v) for n, v in headers)
        return self.rendered


def check_headers(headers: RawHeaders) -> None:
    """``RuntimeError`` when a response header name or value cannot go on the wire."""
    if _BAD_NAME.search(b"".join([n for n, _ in headers])):
        raise RuntimeError("Invalid HTTP header name.")
    if _BAD_VALUE.search(b"".join([v for _, v in headers])):
        raise RuntimeError("Invalid HTTP header value.")


class Cycle:
    """One request and its response, as the app sees them through ``receive``/``send``."""

    __slots__ = ("_chunked", "_flush_handle", "_head", "_length_left", "_parts",
                 "_size", "_waiters", "delivered_last", "disconnected", "keep_alive",
                 "more_body", "on_response", "protocol", "response_complete",
                 "response_started", "scope", "waiting_for_100_continue")

    def __init__(self, protocol: LeanHttpTools, scope: dict[str, Any], keep_alive: bool,
                 expect_100_continue: bool):
        self.protocol = protocol
        self.scope = scope
        self.keep_alive = keep_alive
        self.waiting_for_100_continue = expect_100_continue
        self.on_response: Callable[[], None] = protocol.on_response_complete
        self.disconnected = False
        # request body: parts not yet handed to the app
        self._parts: list[bytes] = []
        self._size = 0
        self.more_body = True
        self.delivered_last = False
        self._waiters: list[asyncio.Future[None]] = []  # receive() calls waiting
        # response
        self.response_started = False
        self.response_complete = False
        self._chunked = False
        self._length_left: int | None = None  # content-length still to send, if declared
        self._head = b""  # a response head waiting for its first body bytes
        self._flush_handle: asyncio.Handle | None = None

    # -- the request, from the protocol -------------------------------------------------
    def add_body(self, body: bytes) -> None:
        self._parts.append(body)
        self._size += len(body)
        if self._size > HIGH_WATER_LIMIT:
            self.protocol.flow.pause_reading()
        self.wake()

    def end_body(self) -> None:
        self.more_body = False
        self.wake()

    def wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- ASGI ----------------------------------------------------------------------------
    async def run_asgi(self, app: ASGIApp) -> None:
        try:
            result = await cast(Any, app)(self.scope, self.receive, self.send)
        except BaseException as exc:
            _log.error("Exception in ASGI application\n", exc_info=exc)
            if not self.response_started:
                self._fail()
            else:
                self.protocol.transport.close()
        else:
            if result is not None:
                _log.error("ASGI callable should return None, but returned '%s'.", result)
                self.protocol.transport.close()
            elif not self.response_started and not self.disconnected:
                _log.error("ASGI callable returned without starting response.")
                self._fail()
            elif not self.response_complete and not self.disconnected:
                _log.error("ASGI callable returned without completing response.")
                self.protocol.transport.close()
        finally:
            self.on_response = _nothing
            # The scope's body writer is a method of this cycle, which holds the scope: left
            # in place, every request would leave a reference cycle for the collector.
            self.scope.pop("extensions", None)

    def _fail(self) -> None:
        """500 and close, for an app that failed before it started its answer."""
        if self.disconnected:
            return
        self.response_started = self.response_complete = True
        self.keep_alive = False
        protocol = self.protocol
        transport = protocol.transport
        transport.write(STATUS_LINE[500] + protocol.server_head_lines() + _SERVER_ERROR)
        transport.close()
        self.wake()
        self.on_response()

    async def receive(self) -> Message:
        protocol = self.protocol
        if self.waiting_for_100_continue and not protocol.transport.is_closing():
            protocol.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.waiting_for_100_continue = False
        if not self.disconnected and not self.response_complete:
            protocol.flow.resume_reading()
            if not self._parts and (self.more_body or self.delivered_last):
                # nothing to hand over: wait for body bytes, the end, a disconnect or
                # the response's end (after the last body part: the disconnect watch)
                # (a future each: a cancelled caller cancels its own only)
                waiter = protocol.loop.create_future()
                self._waiters.append(waiter)
                try:
                    await waiter
                finally:
                    self._waiters.remove(waiter)
        if self.disconnected or self.response_complete:
            return _DISCONNECT
        parts = self._parts
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        self._parts, self._size = [], 0
        if not self.more_body:
            self.delivered_last = True
        return {"type": "http.request", "body": body, "more_body": self.more_body}

    async def send(self, message: Message) -> None:
        protocol = self.protocol
        if protocol.flow.write_paused and not self.disconnected:
            await protocol.flow.drain()
        if self.disconnected:
            return
        kind = message["type"]
        if not self.response_started:
            if kind != "http.response.start":
                raise RuntimeError(
                    f"Expected ASGI message 'http.response.start', but got '{kind}'.")
            self._start(message["status"], message.get("headers", ()))
        elif not self.response_complete:
            if kind != "http.response.body":
                raise RuntimeError(
                    f"Expected ASGI message 'http.response.body', but got '{kind}'.")
            self._body(message.get("body", b""), message.get("more_body", False))
        else:
            raise RuntimeError(
                f"Unexpected ASGI message '{kind}' sent, after response already completed.")

    def _start(self, status: int, headers: Any) -> None:
        self.response_started = True
        self.waiting_for_100_continue = False
        headers = list(headers)
        check_headers(headers)
        protocol = self.protocol
        content = [STATUS_LINE[status], protocol.server_head_lines()]
        closing = False
        for name, value in headers:
            name = name.lower()
            if name == b"content-length":
                if self._length_left is None and not self._chunked:
                    self._length_left = int(value)
            elif name == b"transfer-encoding":
                if value.lower() == b"chunked":
                    self._length_left, self._chunked = None, True
            elif name == b"connection":
                if b"close" in [t.strip() for t in value.lower().split(b",")]:
                    self.keep_alive = False
                    closing = True
            content += (name, b": ", value, b"\r\n")
        if not self.keep_alive and not closing:
            content.append(b"connection: close\r\n")
        if (self._length_left is None and not self._chunked
                and self.scope["method"] != "HEAD" and status not in _NO_BODY_STATUSES):
            self._chunked = True
            content.append(b"transfer-encoding: chunked\r\n")
        content.append(b"\r\n")
        self._head = b"".join(content)
        self._flush_handle = protocol.loop.call_soon(self._flush_head)

    def write_more(self, body: bytes) -> bool:
        """One more part of a chunked body written at once, as a ``http.response.body``
        message with ``more_body`` would be; False, with nothing written, when it has to go
        through :meth:`send`: the head is not out yet (it leaves with the first part), the
        body is not chunked, the client is gone or slow to read (``send`` waits for the
        drain), or the response is complete. The caller must not be inside ``send``."""
        if (self._head or not self._chunked or self.disconnected or self.response_complete
                or self.protocol.flow.write_paused or not body
                or self.scope["method"] == "HEAD"):
            return False
        self.protocol.transport.write(b"%x\r\n%s\r\n" % (len(body), body))
        return True

    def _flush_head(self) -> None:
        """The end of the turn came before any body bytes: the head goes alone."""
        self._flush_handle = None
        head, self._head = self._head, b""
        transport = self.protocol.transport
        if head and not transport.is_closing():
            transport.write(head)

    def _body(self, body: bytes, more_body: bool) -> None:
        if self.scope["method"] == "HEAD":
            data = b""
            self._length_left = 0
        elif self._chunked:
            data = b"%x\r\n%s\r\n" % (len(body), body) if body else b""
            if not more_body:
                data += b"0\r\n\r\n"
        else:
            left = self._length_left or 0
            if len(body) > left:
                raise RuntimeError("Response content longer than Content-Length")
            self._length_left = left - len(body)
            data = body
        head = self._head
        if head:
            self._head = b""
            if self._flush_handle is not None:
                self._flush_handle.cancel()
                self._flush_handle = None
            data = head + data
        transport = self.protocol.transport
        if data:
            transport.write(data)
        if not more_body:
            if self._length_left:
                raise RuntimeError("Response content shorter than Content-Length")
            self.response_complete = True
            self.wake()
            if not self.keep_alive:
                transport.close()
            self.on_response()


def _nothing() -> None:
    return None


class LeanHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol, per request as described in the module docstring."""

    cycle: Cycle  # type: ignore[assignment]
    server_headers = _ServerHeaders()  # shared: uvicorn's list is the server's
    _head_bytes = 0
    _in_head = True
    _idle_since: float | None = None
    _idle_timer: asyncio.TimerHandle | None = None
    _scope_base: dict[str, Any]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(cast(asyncio.Transport, transport))
        self._scope_base = {
            "type": "http", "asgi": {"version": self.asgi_version, "spec_version": "2.3"},
            "http_version": "1.1", "server": self.server, "client": self.client,
            "scheme": self.scheme, "root_path": self.root_path,
        }

    def server_head_lines(self) -> bytes:
        """The server's own header lines (``date``), as every response starts them."""
        return self.server_headers.render(self.server_state.default_headers)

    def data_received(self, data: bytes) -> None:
        # A read that crosses the bound while a head is open is parsed up to the bound
        # first: a whole request in one read (a huge header, then its body) must not be
        # parsed, dispatched and answered before the bound is looked at.
        while self._in_head and len(data) > MAX_HEAD_BYTES - self._head_bytes:
            room = MAX_HEAD_BYTES - self._head_bytes  # (never below 0: counted to the bound)
            self._head_bytes = MAX_HEAD_BYTES
            super().data_received(data[:room])
            if self.transport.is_closing():
                return
            if self._head_open():  # the bound reached and the head still open
                self._in_head = False
                self.send_400_response("Request head too large.")
                return
            data = data[room:]
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)

    def _head_open(self) -> bool:
        """Whether a request head is being parsed (read anew: the parser's callbacks set it)."""
        return self._in_head

    def on_message_begin(self) -> None:
        self._in_head, self._head_bytes = True, 0
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self.scope = {**self._scope_base, "headers": self.headers,  # type: ignore[typeddict-item]
                      "state": self.app_state.copy()}

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self.parser
        http_version = parser.get_http_version()
        scope = cast(dict[str, Any], self.scope)
        scope["method"] = parser.get_method().decode("ascii")
        if http_version != "1.1":
            scope["http_version"] = http_version
        if parser.should_upgrade() and self._should_upgrade():
            return
        url = self.url
        if url[:1] == b"/" and b"?" not in url and b"#" not in url:
            raw_path, query = url, b""  # the common origin-form target, not parsed again
        else:
            parsed = httptools.parse_url(url)
            raw_path, query = parsed.path, parsed.query or b""
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        scope["path"] = self.root_path + path
        scope["raw_path"] = self.root_path.encode("ascii") + raw_path
        scope["query_string"] = query
        app: Any = self.app
        limit = self.limit_concurrency
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            app = service_unavailable
            self.logger.warning("Exceeded concurrency limit.")
        previous = self.cycle
        self.cycle = cycle = Cycle(self, scope,
                                   http_version != "1.0" and parser.should_keep_alive(),
                                   self.expect_100_continue)
        scope["extensions"] = {BODY_WRITER: cycle.write_more}
        if previous is None or previous.response_complete:
            self._start_asgi_task(self.cycle, app)  # type: ignore[arg-type]
        else:  # pipelined: queued until the answer before it is complete
            self.flow.pause_reading()
            self.pipeline.appendleft((self.cycle, app))  # type: ignore[arg-type]

    def _body_unwanted(self) -> bool:
        """Body bytes with no app to read them: its answer is complete, or the connection
        is becoming a WebSocket."""
        return self.cycle.response_complete or (self.parser.should_upgrade()
                                                and self._should_upgrade())

    def on_body(self, body: bytes) -> None:
        if not self._body_unwanted():
            self.cycle.add_body(body)

    def on_message_complete(self) -> None:
        if not self._body_unwanted():
            self.cycle.end_body()

    def _unset_keepalive_if_required(self) -> None:
        self._idle_since = None  # busy: the timer, if armed, finds out when it fires

    def on_response_complete(self) -> None:
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self._idle_since = self.loop.time()
        if self._idle_timer is None:
            self._idle_timer = self.loop.call_later(self.timeout_keep_alive,
                                                    self._keep_alive_due)

    def _keep_alive_due(self) -> None:
        self._idle_timer = None
        if self._idle_since is None:  # serving: the next response arms it again
            return
        rest = self._idle_since + self.timeout_keep_alive - self.loop.time()
        if rest > 0:
            self._idle_timer = self.loop.call_later(rest, self._keep_alive_due)
        else:
            self.timeout_keep_alive_handler()

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        cycle = self.cycle
        if cycle is not None:
            if not cycle.response_complete:
                cycle.disconnected = True
            cycle.wake()
        if self.flow is not None:
            self.flow.resume_writing()
        if exc is None:
            self.transport.close()
        self.parser = None  # type: ignore[assignment]

