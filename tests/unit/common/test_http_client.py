"""The request path's HTTP/1.1 client against scripted servers on loopback (real sockets)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from nebula_common.http_client import (
    HIGH_WATER,
    ConnectError,
    ConnectionClosed,
    Pool,
    ProtocolError,
    ReadTimeout,
    parse_origin,
    request_head,
)

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length)


class Server:
    """A loopback server running ``script`` per connection; records the peers it saw."""

    def __init__(self, script: Script):
        self.script = script
        self.peers: list[tuple[str, int]] = []
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.peers.append(writer.get_extra_info("peername"))
        try:
            await self.script(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Script], Awaitable[Server]]]:
    servers: list[asyncio.Server] = []

    async def start(script: Script) -> Server:
        srv = Server(script)
        srv.server = await asyncio.start_server(srv.handle, "127.0.0.1", 0)
        servers.append(srv.server)
        return srv

    yield start
    for s in servers:
        s.close()


async def keep_alive_json(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        _, body = await read_request(reader)
        answer = b'{"echo": %d}' % len(body)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(answer), answer))
        await writer.drain()


async def test_answers_and_reuses_one_connection(serve: Callable[[Script], Awaitable[Server]]
                                                 ) -> None:
    server = await serve(keep_alive_json)
    pool = Pool()
    for body in (b"{}", b'{"a": 1}', b""):
        resp = await pool.request(server.url, "POST", "/v1/x?q=1", {"x-request-id": "r"}, body)
        assert resp.status == 200
        assert resp.content_type == "application/json"
        assert (b"content-length", str(len(f'{{"echo": {len(body)}}}')).encode()) in resp.headers
        assert await resp.readany() == b'{"echo": %d}' % len(body)
        assert resp.at_eof() and await resp.readany() == b""
        resp.release()
        assert pool.idle_count() == 1
    assert len(server.peers) == 1  # three requests, one connection
    await pool.close()
    assert pool.idle_count() == 0


async def test_request_head_is_one_block_with_host_and_length() -> None:
    origin = parse_origin("http://engine:8000")
    head = request_head("POST", "/v1/chat/completions", origin, {"a": "b"}, 12)
    assert head == (b"POST /v1/chat/completions HTTP/1.1\r\nhost: engine:8000\r\n"
                    b"content-length: 12\r\na: b\r\n\r\n")
    with pytest.raises(ValueError, match="line break"):
        request_head("POST", "/", origin, {"a": "b\r\nx-injected: 1"}, 0)
    with pytest.raises(ValueError):
        parse_origin("ftp://engine")
    assert parse_origin("https://engine").port == 443


async def test_chunked_stream_arrives_as_sent_and_buffered_chunks_join(
        serve: Callable[[Script], Awaitable[Server]]) -> None:
    gate = asyncio.Event()

    async def chunks(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await gate.wait()
        writer.write(b"1\r\n \r\n5\r\nworld\r\n0\r\n\r\n")
        await writer.drain()
        await reader.read()

    server = await serve(chunks)
    pool = Pool()
    resp = await pool.request(server.url, "POST", "/", {}, b"{}")
    assert resp.content_type == "text/event-stream"
    assert await resp.readany() == b"hello"
    gate.set()
    await asyncio.sleep(0.05)  # both chunks are in the buffer by now
    assert await resp.readany() == b" world"
    assert await resp.readany() == b"" and resp.at_eof()
    resp.release()
    assert pool.idle_count() == 1
    await pool.close()


async def test_close_mid_body_and_before_answer_fail_the_read(
        serve: Callable[[Script], Awaitable[Server]]) -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    pool = Pool()
    resp = await pool.request((await serve(cut)).url, "POST", "/", {}, b"")
    assert await resp.readany() == b"partial"
    with pytest.raises(ConnectionClosed, match="mid-body"):
        await resp.readany()
    resp.release()
    assert pool.idle_count() == 0
    with pytest.raises(ConnectionClosed, match="before answering"):
        await pool.request((await serve(silent)).url, "POST", "/", {}, b"")
    await pool.close()


async def test_body_until_close_and_connection_close_are_not_pooled(
        serve: Callable[[Script], Awaitable[Server]]) -> None:
    async def http10(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
        await writer.drain()

    pool = Pool()
    resp = await pool.request((await serve(http10)).url, "POST", "/", {}, b"")
    data = b""
    while chunk := await resp.readany():
        data += chunk
    assert data == b"all of it" and resp.at_eof()
    resp.release()
    assert pool.idle_count() == 0
    await pool.close()


async def test_read_timeout_is_per_wait(serve: Callable[[Script], Awaitable[Server]]) -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(4):  # 4 x 0.1 s: longer than the limit in all, never in one wait
            await asyncio.sleep(0.1)
            writer.write(b"1\r\nx\r\n")
            await writer.drain()
        await asyncio.sleep(5)

    pool = Pool()
    resp = await pool.request((await serve(slow)).url, "POST", "/", {}, b"", read_timeout=0.3)
    got = b""
    with pytest.raises(ReadTimeout):
        while True:
            got += await resp.readany()
    assert got == b"xxxx"
    resp.close()
    await pool.close()


async def test_unreachable_and_garbage(serve: Callable[[Script], Awaitable[Server]]) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()
        await reader.read()

    srv = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    srv.close()
    await srv.wait_closed()
    pool = Pool()
    with pytest.raises(ConnectError, match="cannot connect"):
        await pool.request(f"http://127.0.0.1:{port}", "POST", "/", {}, b"")
    with pytest.raises(ProtocolError):
        await pool.request((await serve(garbage)).url, "POST", "/", {}, b"")
    await pool.close()


async def test_large_body_pauses_reading_and_arrives_whole(
        serve: Callable[[Script], Awaitable[Server]]) -> None:
    size = HIGH_WATER * 8

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        writer.write(b"z" * size)
        await writer.drain()
        await reader.read()

    pool = Pool()
    resp = await pool.request((await serve(big)).url, "POST", "/", {}, b"")
    await asyncio.sleep(0.2)  # the server wrote it all; the client read at most ~HIGH_WATER
    assert resp._size <= HIGH_WATER + 256 * 1024
    total = 0
    while chunk := await resp.readany():
        total += len(chunk)
    assert total == size
    resp.release()
    await pool.close()


async def test_connection_the_server_closed_while_idle_is_dropped(
        serve: Callable[[Script], Awaitable[Server]]) -> None:
    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()  # then the handler returns: the server closes it

    server = await serve(once)
    pool = Pool()
    resp = await pool.request(server.url, "POST", "/", {}, b"")
    assert await resp.readany() == b"ok"
    resp.release()
    for _ in range(100):  # the FIN arrives: the idle connection leaves the pool
        if pool.idle_count() == 0:
            break
        await asyncio.sleep(0.01)
    assert pool.idle_count() == 0
    resp = await pool.request(server.url, "POST", "/", {}, b"")
    assert await resp.readany() == b"ok"
    assert len(server.peers) == 2
    resp.release()
    await pool.close()


def paced_chunks(parts: list[bytes], pause: float, then: bytes = b"0\r\n\r\n",
                 linger: float = 0.0) -> Script:
    """An answer of ``parts`` as chunks, ``pause`` apart, each in its own write."""
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for part in parts:
            await asyncio.sleep(pause)
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
        await asyncio.sleep(linger)
        writer.write(then)
        await writer.drain()
        await reader.read()
    return script


async def test_take_gets_each_read_while_the_reader_waits_and_refusals_come_back(
        serve: Callable[[Script], Awaitable[Server]]) -> None:
    server = await serve(paced_chunks([b"a", b"b", b"STOP", b"c"], 0.05))
    pool = Pool()
    resp = await pool.request(server.url, "POST", "/", {}, b"")
    taken: list[bytes] = []
    wakes = 0

    def take(data: bytes) -> bool:
        if data == b"STOP":
            return False
        taken.append(data)
        return True

    got: list[bytes] = []
    while chunk := await resp.readany(take):
        wakes += 1
        got.append(chunk)
    # a and b never woke the reader; the refused one did, and so did c with the end
    # (bytes read together with the body's end go back to the reader, to send with it)
    assert taken == [b"a", b"b"]
    assert got in ([b"STOP", b"c"], [b"STOP"]) and wakes == len(got)
    assert b"".join(taken + got) in (b"abSTOPc", b"abSTOP")
    resp.release()
    await pool.close()


async def test_take_ends_with_the_body_and_read_bytes_are_never_lost(
        serve: Callable[[Script], Awaitable[Server]]) -> None:
    parts = [b"%02d" % i for i in range(20)]
    server = await serve(paced_chunks(parts, 0.01))
    pool = Pool()
    resp = await pool.request(server.url, "POST", "/", {}, b"")
    seen: list[bytes] = []

    def take(data: bytes) -> bool:
        seen.append(data)
        return True

    while chunk := await resp.readany(take):
        seen.append(chunk)
    assert b"".join(seen) == b"".join(parts) and resp.at_eof()
    resp.release()
    assert pool.idle_count() == 1  # read whole: pooled as without take
    await pool.close()


async def test_bytes_take_sends_count_for_the_read_timeout(
        serve: Callable[[Script], Awaitable[Server]]) -> None:
    # 8 chunks 0.1 s apart, then silence: one wait lasts the whole stream, but each taken
    # chunk starts the wait for body bytes again, so only the silence times out
    server = await serve(paced_chunks([b"x"] * 8, 0.1, linger=5))
    pool = Pool()
    resp = await pool.request(server.url, "POST", "/", {}, b"", read_timeout=0.3)
    taken: list[bytes] = []
    with pytest.raises(ReadTimeout):
        await resp.readany(lambda data: taken.append(data) is None)
    assert b"".join(taken) == b"x" * 8
    resp.close()
    await pool.close()


async def test_a_take_that_fails_hands_its_bytes_back_then_its_error(
        serve: Callable[[Script], Awaitable[Server]]) -> None:
    server = await serve(paced_chunks([b"one", b"two"], 0.05, linger=1))
    pool = Pool()
    resp = await pool.request(server.url, "POST", "/", {}, b"")

    def take(data: bytes) -> bool:
        raise ValueError(f"cannot take {data!r}")

    assert await resp.readany(take) == b"one"
    with pytest.raises(ValueError, match="cannot take b'one'"):
        await resp.readany()
    resp.release()
    assert pool.idle_count() == 0  # failed: the connection is not reused
    await pool.close()


async def test_take_is_offered_nothing_once_its_reader_was_cancelled(
        serve: Callable[[Script], Awaitable[Server]]) -> None:
    server = await serve(paced_chunks([b"late"], 0.2, linger=1))
    pool = Pool()
    resp = await pool.request(server.url, "POST", "/", {}, b"")
    taken: list[bytes] = []
    reader = asyncio.ensure_future(resp.readany(lambda data: taken.append(data) is None))
    await asyncio.sleep(0.05)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    assert await resp.readany() == b"late" and taken == []
    resp.close()
    await pool.close()
