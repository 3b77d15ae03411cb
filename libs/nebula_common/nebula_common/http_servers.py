"""The ASGI servers a role can serve its port with: Hypercorn, uvicorn and Granian.

Each ``*_serving`` takes the app and the bound socket and returns a coroutine
function that serves until its event is set, then stops accepting and lets what
is in flight finish. :func:`nebula_common.service.run_app` picks one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

from hypercorn.asyncio import serve
from hypercorn.config import Config
from quart import Quart

from .acceptor import Acceptor
from .asgi import ASGIApp
from .config import Parser
from .tasks import cancel_task

if TYPE_CHECKING:
    from hypercorn.typing import Framework

LISTEN_BACKLOG = 2048
"""Accept queue of every role's listen socket: bursts of new connections wait, not fail."""
MAX_HEAD_BYTES = 64 * 1024
"""A request line and headers larger than this get 400 (431 on Hypercorn), never memory."""

def hypercorn_config(sock: socket.socket, **overrides: Any) -> Config:
    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.keep_alive_timeout = 75
    config.graceful_timeout = 5
    config.h11_max_incomplete_size = MAX_HEAD_BYTES  # huge headers -> 4xx
    # Hypercorn re-listens the socket with its own backlog (default 100): at 1,000 new
    # connections the accept queue overflowed and clients waited seconds (make bench).
    config.backlog = LISTEN_BACKLOG
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


HTTP_SERVERS = ("hypercorn", "uvicorn", "granian")


DEFAULT_HTTP_SERVER = "uvicorn"
"""Half the CPU per streamed chunk of Hypercorn in make bench (docs/benchmarks.md)."""


def add_http_server_flag(parser: Parser) -> None:
    """``--http-server`` for the roles on the request path (router, gateway)."""
    parser.add_flag("--http-server", default=DEFAULT_HTTP_SERVER, choices=list(HTTP_SERVERS),
                    help="ASGI server of this role's HTTP port: uvicorn (httptools; the "
                         "default), hypercorn or granian (Rust HTTP, embedded); "
                         "docs/benchmarks.md compares them")


Serving = Callable[[asyncio.Event], Awaitable[None]]
"""Serves until the event is set, then stops accepting and finishes what is in flight."""


def uvicorn_serving(app: Quart | ASGIApp, sock: socket.socket) -> Serving:
    import uvicorn

    from .uvicorn_protocol import LeanHttpTools

    config = uvicorn.Config(
        # lifespan on: the gateway's Quart start-up and shut-down hooks (its loops, the key
        # watch, the last usage written) run on every server alike.
        app, loop="none", http=LeanHttpTools, lifespan="on", access_log=False,
        log_config=None, proxy_headers=False, server_header=False, timeout_keep_alive=75,
        timeout_graceful_shutdown=5, backlog=LISTEN_BACKLOG,
    )

    class Server(uvicorn.Server):
        acceptor: Acceptor | None = None

        # uvicorn re-raises SIGTERM after its graceful stop, so the process would die
        # by the signal; a clean stop here exits 0 like every other role.
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            # uvicorn's own start (lifespan, state), but the socket is accepted on by an
            # Acceptor: uvloop's server takes one connection per loop turn (acceptor.py).
            await super().startup(sockets=[])
            if self.started:
                self.acceptor = Acceptor(sock, self.new_protocol, LISTEN_BACKLOG)

        def new_protocol(self) -> asyncio.Protocol:
            return self.config.http_protocol_class(  # type: ignore[call-arg]
                config=self.config, server_state=self.server_state,
                app_state=self.lifespan.state)

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            if self.acceptor is not None:
                self.acceptor.close()
            await super().shutdown(sockets)

    async def serving(stop: asyncio.Event) -> None:
        server = Server(config)

        async def stopper() -> None:
            await stop.wait()
            server.should_exit = True

        watcher = asyncio.get_running_loop().create_task(stopper())
        try:
            await server.serve(sockets=[sock])
        finally:
            await cancel_task(watcher)
        sock.detach()  # uvicorn closed it

    return serving


def granian_serving(app: Quart | ASGIApp, sock: socket.socket) -> Serving:
    from granian.constants import Interfaces
    from granian.server.embed import Server

    host, port = sock.getsockname()[:2]
    logging.getLogger("_granian").setLevel(logging.ERROR)  # "embedded is experimental"
    server = Server(app, address=host, port=port, interface=Interfaces.ASGI,
                    backlog=LISTEN_BACKLOG, log_enabled=False, websockets=False)

    async def serving(stop: asyncio.Event) -> None:
        # Granian binds its own listener from an address (with SO_REUSEPORT), so the
        # socket that proved the address free is closed just before it does.
        sock.close()
        task = asyncio.get_running_loop().create_task(server.serve())

        async def stopper() -> None:
            await stop.wait()
            server.stop()  # type: ignore[no-untyped-call]

        watcher = asyncio.get_running_loop().create_task(stopper())
        try:
            await task
        finally:
            await cancel_task(watcher)

    return serving


def hypercorn_serving(app: Quart | ASGIApp, sock: socket.socket,
                      overrides: dict[str, Any]) -> Serving:
    hconfig = hypercorn_config(sock, **overrides)

    async def serving(stop: asyncio.Event) -> None:
        # hypercorn types apps with its own TypedDict scopes; any ASGI callable serves.
        await serve(cast("Framework", app), hconfig, shutdown_trigger=stop.wait)
        sock.detach()  # hypercorn closed it

    return serving
