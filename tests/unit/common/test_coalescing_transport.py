"""HeadHoldingTransport on a real loopback connection: what it holds, and that order holds."""

from __future__ import annotations

import asyncio

from nebula_common.coalescing_transport import HeadHoldingTransport


class Capture(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.ready = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.ready.set()


WRITERS: list[asyncio.StreamWriter] = []  # a collected StreamWriter closes its connection


async def pair() -> tuple[HeadHoldingTransport, asyncio.StreamReader, asyncio.Server]:
    loop = asyncio.get_running_loop()
    proto = Capture()
    server = await loop.create_server(lambda: proto, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1",
                                                   server.sockets[0].getsockname()[1])
    WRITERS.append(writer)
    await proto.ready.wait()
    assert proto.transport is not None
    return HeadHoldingTransport(proto.transport), reader, server


async def test_head_waits_for_the_body_and_both_leave_together() -> None:
    transport, reader, server = await pair()
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    assert transport.get_write_buffer_size() > 0  # held, not sent
    transport.write(b"ok")
    assert transport.get_write_buffer_size() == 0  # one write took both
    data = await asyncio.wait_for(reader.readexactly(40), 2)
    assert data.endswith(b"\r\n\r\nok")
    transport.close()
    server.close()


async def test_a_head_alone_leaves_at_the_end_of_the_turn_and_close_flushes() -> None:
    transport, reader, server = await pair()
    head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    transport.write(head)
    assert await asyncio.wait_for(reader.readexactly(len(head)), 2) == head
    transport.write(b"5\r\nhello\r\n")  # a body write is never held
    assert transport.get_write_buffer_size() == 0
    assert await asyncio.wait_for(reader.readexactly(10), 2) == b"5\r\nhello\r\n"
    transport.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    transport.close()  # what uvicorn does after a 400: the held head still goes out
    assert await asyncio.wait_for(reader.read(), 2) == b"HTTP/1.1 400 Bad Request\r\n\r\n"
    assert transport.is_closing()  # delegated to the real transport
    server.close()
