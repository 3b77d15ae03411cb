"""Optional uvicorn serving for the router (``--http-server uvicorn``).

The default is nebula_common's Hypercorn ``run_app`` like every role. uvicorn's
HTTP/1.1 protocol costs less CPU per request, which matters on the request
path; this serves the same ASGI app on the same pre-bound socket (a busy port
is still one line on stderr and exit 2), on uvloop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

from nebula_common.config import fail
from nebula_common.service import bind_socket


def run_uvicorn(app: Any, *, listen: str, prog: str,
                before: Callable[[], Awaitable[None]] | None = None,
                after: Callable[[], Awaitable[None]] | None = None) -> None:
    try:
        import uvicorn
    except ImportError:
        fail(prog, "--http-server uvicorn needs the uvicorn package (pip install uvicorn)")

    sock = bind_socket(listen, prog)
    config = uvicorn.Config(
        app, loop="none", http="auto", lifespan="off", access_log=False, log_config=None,
        proxy_headers=False, server_header=False, timeout_keep_alive=75,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)

    async def main() -> None:
        if before is not None:
            await before()
        try:
            await server.serve(sockets=[sock])  # handles SIGTERM/SIGINT itself
        finally:
            if after is not None:
                await after()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
    sock.close()
