"""LeanHttpTools under a real uvicorn.Server on loopback: what the app sees, what goes on
the wire, and how many writes it takes."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from typing import Any

import pytest

from nebula_common.asgi import Message, Receive, Scope, Send, body_writer
from nebula_common.http_servers import MAX_HEAD_BYTES
from nebula_common.uvicorn_protocol import Cycle, LeanHttpTools
from tests.support.uvicorn_server import serving

WRITES: list[bytes] = []  # every transport.write of the server, in order
SEEN: list[Any] = []  # what the apps record
RELEASE: list[asyncio.Event] = []  # a stream waits on this before its first chunk


class Counting(LeanHttpTools):
    """The protocol itself, its transport's writes recorded."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        real = transport.write  # type: ignore[attr-defined]

        def write(data: bytes) -> None:
            WRITES.append(bytes(data))
            real(data)

        transport.write = write  # type: ignore[attr-defined]
        super().connection_made(transport)


async def read_all(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        assert message["type"] == "http.request"
        body += message["body"]
        if not message["more_body"]:
            return body


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    SEEN.append({k: scope[k] for k in ("method", "path", "raw_path", "query_string",
                                         "http_version")})
    if path == "/echo":
        body = await read_all(receive)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"Content-Length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})
    elif path == "/stream":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        await RELEASE[-1].wait()
        for word in (b"one", b"two"):
            await send({"type": "http.response.body", "body": word, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    elif path == "/watch":  # the body, then a receive that must end with the client
        await read_all(receive)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"x", "more_body": True})
        SEEN.append(await asyncio.wait_for(receive(), 10))
    elif path == "/two-watchers":  # two receive() calls wait at once; one is cancelled
        await read_all(receive)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"x", "more_body": True})
        first = asyncio.ensure_future(receive())
        second = asyncio.ensure_future(receive())
        await asyncio.sleep(0)
        first.cancel()
        SEEN.append(await asyncio.wait_for(second, 10))
    elif path == "/write-more":  # parts written without a message, as a proxy's take does
        write = body_writer(scope)
        assert write is not None
        length = scope["query_string"] == b"sized"
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"6")] if length else []})
        SEEN.append(write(b"early"))  # the head has not left: it goes with a body's first part
        await send({"type": "http.response.body", "body": b"one", "more_body": True})
        SEEN.append(write(b"two"))
        await send({"type": "http.response.body", "body": b"end", "more_body": False})
        SEEN.append(write(b"late"))  # the response is complete
    elif path == "/fail":
        raise ValueError("the app broke")
    elif path == "/bad-header":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"x-evil", b"a\r\nset-cookie: b")]})
    elif path == "/too-long":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"2")]})
        try:
            await send({"type": "http.response.body", "body": b"three"})
        except RuntimeError as exc:
            SEEN.append(str(exc))
            raise


@pytest.fixture
async def port() -> AsyncIterator[int]:
    WRITES.clear()
    SEEN.clear()
    RELEASE[:] = [asyncio.Event()]
    async with serving(app, Counting, server_header=False) as bound:
        yield bound


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return head, await asyncio.wait_for(reader.readexactly(length), 5)


async def test_an_answer_leaves_in_one_write_head_and_body(port: int) -> None:
    reader, writer = await connect(port)
    writer.write(b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\n\r\nhello")
    head, body = await response(reader)
    assert body == b"hello"
    assert head.startswith(b"HTTP/1.1 200 OK\r\ndate: ")
    assert b"content-length: 5\r\n" in head  # names go out lower-cased
    assert WRITES == [head + body]
    assert SEEN == [{"method": "POST", "path": "/echo", "raw_path": b"/echo",
                     "query_string": b"", "http_version": "1.1"}]
    writer.close()


async def test_a_stream_head_leaves_before_its_first_chunk(port: int) -> None:
    reader, writer = await connect(port)
    writer.write(b"GET /stream HTTP/1.1\r\nhost: t\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)  # chunks not released
    assert b"transfer-encoding: chunked\r\n" in head
    RELEASE[-1].set()
    rest = b"3\r\none\r\n3\r\ntwo\r\n0\r\n\r\n"
    assert await asyncio.wait_for(reader.readexactly(len(rest)), 5) == rest
    assert WRITES == [head, b"3\r\none\r\n", b"3\r\ntwo\r\n", b"0\r\n\r\n"]
    writer.close()


async def test_the_body_writer_writes_a_chunk_only_where_send_would_write_it_alone(
        port: int) -> None:
    reader, writer = await connect(port)
    writer.write(b"GET /write-more HTTP/1.1\r\nhost: t\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    rest = b"3\r\none\r\n3\r\ntwo\r\n3\r\nend\r\n0\r\n\r\n"
    assert await asyncio.wait_for(reader.readexactly(len(rest)), 5) == rest
    assert SEEN[1:] == [False, True, False]
    assert WRITES == [head + b"3\r\none\r\n", b"3\r\ntwo\r\n", b"3\r\nend\r\n0\r\n\r\n"]
    # a sized body is never chunked by it (nor is a HEAD answer's, which has none)
    for request in (b"GET /write-more?sized HTTP/1.1\r\nhost: t\r\n\r\n",
                    b"HEAD /write-more HTTP/1.1\r\nhost: t\r\n\r\n"):
        SEEN.clear()
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        if request.startswith(b"GET"):
            assert await asyncio.wait_for(reader.readexactly(6), 5) == b"oneend"
        assert SEEN[1:] == [False, False, False]
    writer.close()


async def test_a_served_request_leaves_no_reference_cycle(port: int) -> None:
    # Python's collector runs rarely in a role (settle_heap): what a request leaves in a
    # cycle (its scope holding a method of the cycle that holds the scope) piles up.
    reader, writer = await connect(port)
    gc.collect()
    gc.disable()
    try:
        for _ in range(30):
            writer.write(b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\n\r\nok")
            assert (await response(reader))[1] == b"ok"
        await asyncio.sleep(0)
        alive = [o for o in gc.get_objects() if isinstance(o, Cycle)]
    finally:
        gc.enable()
    assert len(alive) <= 1  # the connection's current one
    writer.close()


async def test_query_percent_and_absolute_targets_are_parsed(port: int) -> None:
    reader, writer = await connect(port)
    for target in (b"/echo?a=1", b"/ec%68o", b"http://t/echo?b=2"):
        writer.write(b"POST " + target + b" HTTP/1.1\r\nhost: t\r\ncontent-length: 0\r\n\r\n")
        await response(reader)
    assert [(s["path"], s["raw_path"], s["query_string"]) for s in SEEN] == [
        ("/echo", b"/echo", b"a=1"), ("/echo", b"/ec%68o", b""), ("/echo", b"/echo", b"b=2")]
    writer.close()


async def test_a_body_in_parts_after_100_continue(port: int) -> None:
    reader, writer = await connect(port)
    writer.write(b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 10\r\n"
                 b"expect: 100-continue\r\n\r\n")
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == (
        b"HTTP/1.1 100 Continue\r\n\r\n")
    writer.write(b"hello")
    await writer.drain()
    await asyncio.sleep(0.05)  # the two halves arrive as two reads
    writer.write(b"world")
    assert (await response(reader))[1] == b"helloworld"
    writer.close()


async def test_a_head_over_the_bound_is_refused_even_with_its_body_in_the_same_write(
        port: int) -> None:
    reader, writer = await connect(port)
    huge = b"x-huge: " + b"a" * (MAX_HEAD_BYTES + 100_000) + b"\r\n"
    writer.write(b"POST /echo HTTP/1.1\r\nhost: t\r\n" + huge
                 + b"content-length: 5\r\n\r\nhello")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 400 "), head
    assert SEEN == []  # the app never saw it
    writer.close()


async def test_a_head_under_the_bound_with_a_large_body_in_one_write_is_served(
        port: int) -> None:
    reader, writer = await connect(port)
    body = b"b" * (4 * MAX_HEAD_BYTES)
    fill = b"x-fill: " + b"f" * (MAX_HEAD_BYTES - 200) + b"\r\n"  # the head just under it
    writer.write(b"POST /echo HTTP/1.1\r\nhost: t\r\n" + fill
                 + b"content-length: %d\r\n\r\n" % len(body) + body)
    assert (await response(reader))[1] == body
    writer.close()


async def test_pipelined_requests_are_answered_in_order(port: int) -> None:
    reader, writer = await connect(port)
    writer.write(b"".join(b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 1\r\n\r\n%d" % i
                          for i in range(3)))
    assert [(await response(reader))[1] for _ in range(3)] == [b"0", b"1", b"2"]
    writer.close()


async def test_head_requests_get_the_head_only(port: int) -> None:
    reader, writer = await connect(port)
    writer.write(b"HEAD /stream HTTP/1.1\r\nhost: t\r\n\r\n")
    RELEASE[-1].set()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding" not in head
    writer.write(b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\n\r\nok")
    assert (await response(reader))[1] == b"ok"  # no body bytes came between
    writer.close()


@pytest.mark.parametrize("path", ["/watch", "/two-watchers"])
async def test_the_disconnect_watch_ends_when_the_client_goes(port: int, path: str) -> None:
    """/two-watchers: two receive() calls wait at once and one is cancelled; the other
    still hears of the disconnect."""
    reader, writer = await connect(port)
    writer.write(b"POST " + path.encode() + b" HTTP/1.1\r\nhost: t\r\ncontent-length: 1"
                 b"\r\n\r\nx")
    await asyncio.wait_for(reader.readuntil(b"1\r\nx\r\n"), 5)
    writer.close()
    for _ in range(500):
        if len(SEEN) == 2:
            break
        await asyncio.sleep(0.01)
    message: Message = SEEN[1]
    assert message == {"type": "http.disconnect"}


async def test_an_app_that_fails_before_answering_gets_500_and_close(port: int) -> None:
    reader, writer = await connect(port)
    writer.write(b"GET /fail HTTP/1.1\r\nhost: t\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 5)  # read() to EOF: closed after it
    assert data.startswith(b"HTTP/1.1 500 Internal Server Error\r\ndate: ")
    assert data.endswith(b"connection: close\r\n\r\nInternal Server Error")
    writer.close()


@pytest.mark.parametrize("path", ["/bad-header", "/too-long"])
async def test_a_response_that_cannot_go_on_the_wire_closes_the_connection(
        port: int, path: str) -> None:
    reader, writer = await connect(port)
    writer.write(b"GET " + path.encode() + b" HTTP/1.1\r\nhost: t\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 5)
    assert b"set-cookie" not in data and b"three" not in data
    if path == "/too-long":
        assert SEEN[-1] == "Response content longer than Content-Length"
    writer.close()
