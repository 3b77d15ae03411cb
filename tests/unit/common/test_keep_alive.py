"""uvicorn's protocol as Nebula runs it: one keep-alive timer per connection, re-armed
for the rest of the wait, closes an idle connection on time and never a busy one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from nebula_common.asgi import Receive, Scope, Send
from nebula_common.uvicorn_protocol import LeanHttpTools
from tests.support.uvicorn_server import serving

KEEP_ALIVE_S = 0.3
REQUEST = b"POST /x HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\n\r\nhi"


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    await receive()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
async def port() -> AsyncIterator[int]:
    async with serving(echo, LeanHttpTools, timeout_keep_alive=KEEP_ALIVE_S) as bound:
        yield bound


async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    writer.write(REQUEST)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    return await asyncio.wait_for(reader.readexactly(2), 5)


async def test_an_idle_connection_is_closed_after_the_keep_alive_wait(port: int) -> None:
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await ask(reader, writer) == b"ok"
    answered = loop.time()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # the server closed it
    waited = loop.time() - answered
    assert KEEP_ALIVE_S * 0.8 <= waited < KEEP_ALIVE_S + 2
    writer.close()


async def test_a_connection_in_use_outlives_many_waits(port: int) -> None:
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    until = loop.time() + KEEP_ALIVE_S * 4
    asked = 0
    while True:  # idle gaps shorter than the wait, for four waits
        assert await ask(reader, writer) == b"ok"
        answered = loop.time()
        asked += 1
        if answered >= until:
            break
        await asyncio.sleep(KEEP_ALIVE_S / 3)
    assert asked >= 6
    # and once it goes quiet, the timer (re-armed for the rest) still closes it on time
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert KEEP_ALIVE_S * 0.8 <= loop.time() - answered < KEEP_ALIVE_S + 2
    writer.close()
