"""Serving a role's ASGI app on uvloop, the same way in every role.

The listen socket is bound here, before the HTTP server (:mod:`.http_servers`)
starts, so a port that cannot be bound is one clear line on stderr and a non-zero
exit instead of a traceback or a silent exit. ``/metrics`` answers for every
worker of ``--workers N`` (:mod:`.workers`).
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import uvloop
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from quart import Quart, Response

from .asgi import ASGIApp
from .config import fail, listen_address
from .http_servers import (
    LISTEN_BACKLOG,
    granian_serving,
    hypercorn_serving,
    uvicorn_serving,
)
from .metric_children import flush_metrics
from .tasks import TaskSet, cancel_task
from .workers import MULTIPROC_ENV, worker_index

log = logging.getLogger(__name__)


WARMUP_MAX_S = 15.0
"""How long a worker of ``--workers N`` waits to be ready before it takes connections."""


def bind_socket(listen: str, prog: str) -> socket.socket:
    """Bind and listen on ``HOST:PORT`` or exit with a one-line error.

    A worker of ``--workers N`` only binds: its server listens once the worker is ready
    (``run_app``'s ``warm``), so the kernel gives it no connection its siblings could serve
    while it still loads its state.
    """
    try:
        host, port = listen_address(listen)
    except ValueError as exc:
        fail(prog, str(exc))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    worker = worker_index() is not None
    if worker:  # one of --workers N: the kernel spreads connections
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
        if not worker:
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
        flush_metrics()  # the request path's batched updates (metric_children)
        return Response(generate_latest(scrape_registry()), content_type=CONTENT_TYPE_LATEST)


_multiprocess: CollectorRegistry | None = None


def scrape_registry() -> CollectorRegistry:
    """What ``/metrics`` answers: this process's metrics, or with ``--workers N`` the sums
    over every worker (prometheus_client's multiprocess mode) plus this worker's
    scrape-time collectors (:func:`register_collector`)."""
    global _multiprocess
    if os.environ.get(MULTIPROC_ENV) is None:
        return REGISTRY
    if _multiprocess is None:
        from prometheus_client import multiprocess
        _multiprocess = CollectorRegistry()
        multiprocess.MultiProcessCollector(_multiprocess)  # type: ignore[no-untyped-call]
        for collector in _scrape_collectors:
            _multiprocess.register(collector)
    return _multiprocess


_scrape_collectors: list[Collector] = []


def register_collector(collector: Collector) -> None:
    """A collector computed at scrape time from this process's state (with workers,
    the answering worker's view)."""
    REGISTRY.register(collector)
    _scrape_collectors.append(collector)
    if _multiprocess is not None:
        _multiprocess.register(collector)


def unregister_collector(collector: Collector) -> None:
    REGISTRY.unregister(collector)
    _scrape_collectors.remove(collector)
    if _multiprocess is not None:
        _multiprocess.unregister(collector)


class _AsyncioTasks(Collector):
    """Tasks alive on the answering process's event loop (/metrics is rendered on it).

    Leaked tasks (a stream whose cleanup never runs) show as growth: make soak reads it.
    """

    def collect(self) -> Iterator[Metric]:
        try:
            tasks = len(asyncio.all_tasks())
        except RuntimeError:  # collected outside a loop (registration, a test)
            tasks = 0
        yield GaugeMetricFamily("nebula_common_asyncio_tasks",
                                "asyncio tasks alive on the role's event loop", value=tasks)


register_collector(_AsyncioTasks())


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
    warm: Callable[[], bool] | None = None,
    **hypercorn_overrides: Any,
) -> None:
    """Bind, then serve ``app`` on uvloop until SIGTERM/SIGINT; exit 0 on a clean stop.

    ``before`` runs once the loop exists and before the first request;
    ``after`` runs after the server stopped accepting (drain, deregister...).
    ``server`` is one of :data:`HTTP_SERVERS`; each serves the same ASGI app.
    ``warm`` (a worker of ``--workers N`` only) says when the worker may take
    connections: polled after ``before``, for at most :data:`WARMUP_MAX_S`.
    When a task of ``tasks`` that must not die crashes, the role stops the same
    way (``after`` included) and exits 1 with a one-line reason: never half-alive.
    """
    if server != "hypercorn" and importlib.util.find_spec(server) is None:
        fail(prog, f"--http-server {server} needs the {server} package (pip install {server})")
    sock = bind_socket(listen, prog)
    if server == "uvicorn":
        serving = uvicorn_serving(app, sock)
    elif server == "granian":
        serving = granian_serving(app, sock)
    else:
        serving = hypercorn_serving(app, sock, hypercorn_overrides)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        watcher = None if tasks is None else loop.create_task(_stop_on_failure(tasks, stop))
        if before is not None:
            await before()
        settle_heap()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            if warm is not None and worker_index() is not None:
                await _warm_up(warm, stop)
            await serving(stop)
        finally:
            await cancel_task(watcher)
            if after is not None:
                await after()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
    # Every server closes the socket it was given; closing it again raised EBADF (or
    # could close an unrelated fd that reused the number), so each serving forgets it.
    if tasks is not None and tasks.failed.is_set():
        fail(prog, f"a task it cannot run without crashed: {_reason(tasks.error)}", code=1)


GC_THRESHOLDS = (20_000, 10, 10)
"""The cyclic collector's thresholds once a role serves (Python's are 700, 10, 10).

A request allocates a few hundred objects that nearly all die by reference count; at 700
the youngest generation was collected every few requests and cost 3.6 % of the router's
CPU and 2.3 % of the gateway's at 64 connections (gc callbacks timing every pass under
``make bench``); at 20,000 it is a pass every few thousand requests, 0.2 % and 0.7 %.
What cycles a request leaves (a cancelled task's traceback) wait for that pass: at most
this many objects."""


def settle_heap() -> None:
    """Once start-up is done: what it built (app, modules, tables) is frozen out of every
    GC pass, and the young generation is collected at :data:`GC_THRESHOLDS`."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def _warm_up(warm: Callable[[], bool], stop: asyncio.Event) -> None:
    deadline = time.monotonic() + WARMUP_MAX_S
    while not warm() and not stop.is_set() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


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
