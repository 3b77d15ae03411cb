"""A drained closed-loop HTTP/1.1 client on raw uvloop protocols, for long streamed answers.

wrk stops when its window closes and only records requests that completed: with
1,000 connections and 0.6-3 s per answer, a 5 s window leaves about a third to
half of the requests (the slow ones, by construction) unrecorded, so its
percentiles describe the survivors. This client keeps ``connections`` requests in
flight until the window closes, then stops sending and waits for every request
it started, so every latency is counted. Latency is time to last byte: from
writing the request to the end of the response (length- or chunk-framed).
A response costs one ``data_received`` per TCP read, so the client stays cheap.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .load import LoadResult
from .stats import percentile

MAX_HEAD = 64 * 1024


class ProtocolError(ValueError):
    """The server's answer is not HTTP/1.1 this parser understands."""


@dataclass
class ResponseParser:
    """Incremental HTTP/1.1 response framing: feed bytes, learn when a response ended.

    Bodies are skipped, not kept. Supports ``content-length`` and ``chunked``.
    """

    status: int = 0
    done: bool = False
    _buf: bytes = b""
    _state: str = "head"  # head, length, chunk_size, chunk_data, trailer
    _remaining: int = 0

    def reset(self) -> None:
        self.status, self.done, self._state, self._remaining = 0, False, "head", 0

    def feed(self, data: bytes) -> bytes:
        """Consume ``data``; returns bytes past the end of this response (pipelining)."""
        buf = self._buf + data if self._buf else data
        self._buf = b""
        pos = 0
        n = len(buf)
        while pos < n and not self.done:
            state = self._state
            if state == "head":
                end = buf.find(b"\r\n\r\n", pos)
                if end < 0:
                    if n - pos > MAX_HEAD:
                        raise ProtocolError("response head too large")
                    self._buf = buf[pos:]
                    return b""
                self._start(buf[pos:end])
                pos = end + 4
            elif state == "length" or state == "chunk_data":
                take = min(self._remaining, n - pos)
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    if state == "length":
                        self.done = True
                    else:
                        self._state = "chunk_size"
            elif state == "chunk_size":
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    self._buf = buf[pos:]
                    return b""
                try:
                    size = int(buf[pos:end].split(b";", 1)[0], 16)
                except ValueError:
                    raise ProtocolError(f"bad chunk size {buf[pos:end][:20]!r}") from None
                pos = end + 2
                if size == 0:
                    self._state = "trailer"
                else:
                    self._state, self._remaining = "chunk_data", size + 2  # data + CRLF
            elif state == "trailer":
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    self._buf = buf[pos:]
                    return b""
                line_empty = end == pos
                pos = end + 2
                if line_empty:
                    self.done = True
        return buf[pos:]

    def _start(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:60]!r}")
        self.status = int(parts[1])
        length = None
        chunked = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value.strip())
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            self._state = "chunk_size"
        elif length is not None:
            self._state, self._remaining = "length", length
            if length == 0:
                self.done = True
        elif self.status in (204, 304) or 100 <= self.status < 200:
            self.done = True
        else:
            raise ProtocolError("response without length or chunked framing")


def build_request(url: str, body: bytes, headers: dict[str, str]) -> tuple[str, int, bytes]:
    """(host, port, raw request bytes) for a keep-alive POST of ``body`` to ``url``."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    lines = [f"POST {parts.path or '/'} HTTP/1.1", f"Host: {host}:{port}",
             "Content-Type: application/json", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return host, port, ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class _Run:
    request: bytes
    deadline: float
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    active: int = 0
    finished: asyncio.Event = field(default_factory=asyncio.Event)


class _Conn(asyncio.Protocol):
    def __init__(self, run: _Run):
        self.run = run
        self.parser = ResponseParser()
        self.sent_at = 0.0
        self.busy = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream connection is given a Transport; the base signature says BaseTransport.
        self.transport = transport  # type: ignore[assignment]
        self.send()

    def send(self) -> None:
        assert self.transport is not None
        self.parser.reset()
        self.busy = True
        self.sent_at = time.perf_counter()
        self.transport.write(self.run.request)

    def data_received(self, data: bytes) -> None:
        if not self.busy:
            return
        try:
            self.parser.feed(data)
        except (ProtocolError, ValueError):
            self._fail()
            return
        if self.parser.done:
            now = time.perf_counter()
            self.busy = False
            if self.parser.status == 200:
                self.run.latencies.append(now - self.sent_at)
            else:
                self.run.errors += 1
            if now < self.run.deadline:
                self.send()
            else:
                self._retire()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.busy:
            self.busy = False
            self.run.errors += 1
            self._retire()

    def _fail(self) -> None:
        self.busy = False
        self.run.errors += 1
        if self.transport is not None:
            self.transport.close()
        self._retire()

    def _retire(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self.run.active -= 1
        if self.run.active == 0:
            self.run.finished.set()


async def drained_closed_loop(url: str, body: bytes, *, connections: int, duration_s: float,
                              headers: dict[str, str] | None = None,
                              drain_timeout_s: float = 30.0) -> LoadResult:
    """``connections`` keep-alive connections send back to back until ``duration_s``,
    then every request already sent is awaited (up to ``drain_timeout_s``)."""
    loop = asyncio.get_running_loop()
    host, port, request = build_request(url, body, headers or {})
    started = time.perf_counter()
    run = _Run(request, started + duration_s)
    run.active = connections
    conns: list[_Conn] = []

    async def connect() -> None:
        try:
            _, proto = await loop.create_connection(lambda: _Conn(run), host, port)
            conns.append(proto)
        except OSError:
            run.errors += 1
            run.active -= 1
            if run.active == 0:
                run.finished.set()

    await asyncio.gather(*(connect() for _ in range(connections)))
    try:
        await asyncio.wait_for(run.finished.wait(), duration_s + drain_timeout_s)
    except TimeoutError:
        run.errors += sum(1 for c in conns if c.busy)
    finally:
        for c in conns:
            if c.transport is not None:
                c.transport.close()
    elapsed = time.perf_counter() - started
    ms = [x * 1000.0 for x in run.latencies]
    return LoadResult(len(ms), elapsed, percentile(ms, 50), percentile(ms, 99), run.errors,
                      {"mean_ms": sum(ms) / len(ms) if ms else float("nan"),
                       "max_ms": max(ms) if ms else float("nan")})
