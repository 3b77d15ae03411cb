"""Serving a role's Quart app with Hypercorn on uvloop, the same way in every role.

The listen socket is bound here, before Hypercorn starts, so a port that
cannot be bound is one clear line on stderr and a non-zero exit instead of a
traceback or a silent exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

import uvloop
from hypercorn.asyncio import serve
from hypercorn.config import Config
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Quart, Response

from .asgi import ASGIApp
from .config import Parser, fail, listen_address
from .tasks import TaskSet, cancel_task

if TYPE_CHECKING:
    from hypercorn.typing import Framework

log = logging.getLogger(__name__)

LISTEN_BACKLOG = 2048
"""Accept queue of every role's listen socket: bursts of new connections wait, not fail."""


def bind_socket(listen: str, prog: str) -> socket.socket:
    """Bind and listen on ``HOST:PORT`` or exit with a one-line error."""
    try:
        host, port = listen_address(listen)
    except ValueError as exc:
        fail(prog, str(exc))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        fail(prog, f"cannot listen on {listen}: {exc.strerror or exc}")
    sock.set_inheritable(True)
    return sock


def add_basic_routes(app: Quart, ready: Callable[[], tuple[bool, str]] | None = None) -> None:
    """``/healthz`` (process alive), ``/readyz`` (dependencies reachable), ``/metrics``."""

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response("ok", content_type="text/plain")

    @app.get("/readyz")
    async def readyz() -> Response:
        ok, detail = ready() if ready else (True, "ready")
        return Response(detail, status=200 if ok else 503, content_type="text/plain")

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), content_type=CONTENT_TYPE_LATEST)


def hypercorn_config(sock: socket.socket, **overrides: Any) -> Config:
    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.keep_alive_timeout = 75
    config.graceful_timeout = 5
    config.h11_max_incomplete_size = 64 * 1024  # bounds header size (huge headers -> 4xx)
    # Hypercorn re-listens the socket with its own backlog (default 100): at 1,000 new
    # connections the accept queue overflowed and clients waited seconds (make bench).
    config.backlog = LISTEN_BACKLOG
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


HTTP_SERVERS = ("hypercorn", "uvicorn")


def add_http_server_flag(parser: Parser) -> None:
    """``--http-server`` for the roles on the request path (router, gateway)."""
    parser.add_flag("--http-server", default="hypercorn", choices=list(HTTP_SERVERS),
                    help="ASGI server of this role's HTTP port: hypercorn (default) or "
                         "uvicorn (httptools; less CPU per request)")


Hook = Callable[[], Awaitable[None]]


def run_app(
    app: Quart | ASGIApp,
    *,
    listen: str,
    prog: str,
    before: Hook | None = None,
    after: Hook | None = None,
    server: str = "hypercorn",
    tasks: TaskSet | None = None,
    **hypercorn_overrides: Any,
) -> None:
    """Bind, then serve ``app`` on uvloop until SIGTERM/SIGINT; exit 0 on a clean stop.

    ``before`` runs once the loop exists and before the first request;
    ``after`` runs after the server stopped accepting (drain, deregister...).
    ``server="uvicorn"`` serves the same ASGI app with uvicorn's httptools protocol.
    When a task of ``tasks`` that must not die crashes, the role stops the same
    way (``after`` included) and exits 1 with a one-line reason: never half-alive.
    """
    if server == "uvicorn":
        try:
            import uvicorn
        except ImportError:
            fail(prog, "--http-server uvicorn needs the uvicorn package (pip install uvicorn)")
    sock = bind_socket(listen, prog)

    if server == "uvicorn":
        config = uvicorn.Config(
            app, loop="none", http="auto", lifespan="off", access_log=False, log_config=None,
            proxy_headers=False, server_header=False, timeout_keep_alive=75,
            timeout_graceful_shutdown=5, backlog=LISTEN_BACKLOG,
        )

        class Server(uvicorn.Server):
            # uvicorn re-raises SIGTERM after its graceful stop, so the process would die
            # by the signal; a clean stop here exits 0 like every other role.
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield

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
    else:
        hconfig = hypercorn_config(sock, **hypercorn_overrides)

        async def serving(stop: asyncio.Event) -> None:
            # hypercorn types apps with its own TypedDict scopes; any ASGI callable serves.
            await serve(cast("Framework", app), hconfig, shutdown_trigger=stop.wait)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        watcher = None if tasks is None else loop.create_task(_stop_on_failure(tasks, stop))
        if before is not None:
            await before()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await serving(stop)
        finally:
            await cancel_task(watcher)
            if after is not None:
                await after()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
    # Both servers close the socket they were given; closing it again raised EBADF (or
    # could close an unrelated fd that reused the number), so only forget it here.
    sock.detach()
    if tasks is not None and tasks.failed.is_set():
        fail(prog, f"a task it cannot run without crashed: {_reason(tasks.error)}", code=1)


async def _stop_on_failure(tasks: TaskSet, stop: asyncio.Event) -> None:
    await tasks.failed.wait()
    stop.set()


def _reason(error: BaseException | None) -> str:
    if error is None:
        return "unknown error"
    text = " ".join(str(error).split())  # one line, whatever the message holds
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def run_forever(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run a non-HTTP coroutine on uvloop, passing an event set on SIGTERM/SIGINT."""

    async def wrapper() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(wrapper())
