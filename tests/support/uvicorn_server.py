"""A uvicorn.Server with Nebula's protocol on a loopback port, for the protocol's tests."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import uvicorn


@contextlib.asynccontextmanager
async def serving(app: Any, protocol: type, **config: Any) -> AsyncIterator[int]:
    """Serve ``app`` with ``protocol`` (uvicorn's ``http=``) until the block ends; the port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, loop="none", http=protocol, lifespan="off",
                                           access_log=False, log_config=None, **config))
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    for _ in range(200):
        if server.started:
            break
        await asyncio.sleep(0.01)
    assert server.started
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
