"""One asyncio task per replica: start, wait ready, register, watch, restart, drain, stop."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import aiohttp

from nebula_common.errors import error_text
from nebula_common.logs import command_line, scrub
from nebula_common.records import Endpoint, EndpointState, EndpointStats
from nebula_common.retry import backoff_delay
from nebula_common.tasks import TaskSet, cancel_task

from . import node_metrics as m
from .context import NodeContext
from .engines import EngineAdapter, MetricsSample, ReplicaSpec, prefix_hit_rate
from .node_metrics import ReplicaState
from .process import EngineProcess, pick_port

log = logging.getLogger(__name__)

LOG_TAIL_BYTES = 2048
WILDCARDS = frozenset({"", "0.0.0.0", "::", "[::]"})


class EngineFailure(Exception):
    """The engine exited, never became ready, or stopped answering."""


def backoff_seconds(attempt: int, base: float, maximum: float) -> float:
    """Backoff before restart number ``attempt`` (1-based): ``base * 2**(attempt-1)``, capped.

    No jitter: one node restarts its own replica, and tests and operators read the
    delay from ``--restart-backoff``.
    """
    return backoff_delay(attempt, initial=base, maximum=maximum)


def engine_listen_host(engine_host: str, advertise_host: str) -> str:
    """The address engines listen on: ``--engine-host``, or the advertise host for a wildcard.

    Never every interface: an engine has no authentication of its own, and only the
    routers (at the advertised address) and this node (on the same host) call it.
    """
    return advertise_host if engine_host in WILDCARDS else engine_host


def engine_base_env() -> dict[str, str]:
    """The node's environment minus its own ``NEBULA_*`` settings.

    The sim reads ``NEBULA_*`` variables as flag defaults; the node's listen address,
    etcd endpoints and the like must not leak into its engines.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEBULA_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class ReplicaSupervisor:
    """Keeps one replica's engine running and its etcd records true.

    Its loop and its stats loop run in the node's ``tasks``: a crash of either
    (a bug, not an engine failure: those are handled here) restarts it.
    """

    def __init__(self, spec: ReplicaSpec, ctx: NodeContext, tasks: TaskSet):
        self.spec = spec
        self.ctx = ctx
        self.tasks = tasks
        self.adapter: EngineAdapter = ctx.adapters[spec.engine]
        self.state = ReplicaState.STARTING
        self.engine = EngineProcess(spec.name, ctx.settings.state_dir)
        self.port: int | None = None
        self.restarts = 0
        self.failures = 0
        self.last_error = ""
        self.ready_since: float | None = None
        self.registered = False
        self.stats_errors = 0
        self._task: asyncio.Task[None] | None = None
        self._stats_task: asyncio.Task[None] | None = None
        self._previous_sample: MetricsSample | None = None

    # -- keys and urls -----------------------------------------------------------------
    @property
    def endpoint_key(self) -> str:
        return self.ctx.keys.endpoint(self.spec.model_uid, self.spec.replica_id)

    @property
    def stats_key(self) -> str:
        return self.ctx.keys.endpoint_stats(self.spec.model_uid, self.spec.replica_id)

    @property
    def base_url(self) -> str:
        port = self.spec.port if self.port is None else self.port  # refused: never started
        return f"http://{self.ctx.settings.advertise_host}:{port}"

    @property
    def listen_host(self) -> str:
        return engine_listen_host(self.ctx.settings.engine_host, self.ctx.settings.advertise_host)

    @property
    def local_url(self) -> str:
        """Where the node itself probes the engine (same host, the address it listens on)."""
        return f"http://{self.listen_host}:{self.port}"

    def describe(self) -> dict[str, Any]:
        return {
            "model_uid": self.spec.model_uid, "model_name": self.spec.model_name,
            "replica_id": self.spec.replica_id, "engine": self.spec.engine,
            "state": self.state, "port": self.port, "assigned_port": self.spec.port,
            "pid": self.engine.pid if not self.engine.exited else None,
            "base_url": self.base_url if self.port else None,
            "plan_version": self.spec.plan_version, "gpu_indices": list(self.spec.gpu_indices),
            "restarts": self.restarts, "failures": self.failures, "last_error": self.last_error,
            "ready_since": self.ready_since, "log": str(self.engine.log_path),
        }

    def _endpoint(self, status: EndpointState, reason: str = "", log_tail: str = "") -> Endpoint:
        return Endpoint(model_uid=self.spec.model_uid, model_name=self.spec.model_name,
                        replica_id=self.spec.replica_id, node_id=self.ctx.settings.node_id,
                        base_url=self.base_url, engine=self.spec.engine, status=status,
                        plan_version=self.spec.plan_version, reason=reason, log_tail=log_tail,
                        capabilities=sorted(self.adapter.capabilities(self.spec)),
                        max_concurrency=self.adapter.concurrency(self.spec))

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        self._task = self.tasks.supervise(f"replica:{self.spec.name}", self._run)

    async def update_plan_version(self, spec: ReplicaSpec) -> None:
        """Same engine, newer plan: re-announce the endpoint with the new version only."""
        self.spec = spec
        if self.registered and self.state == ReplicaState.READY:
            await self.ctx.publisher.put(self.endpoint_key, self._endpoint(EndpointState.READY)
                                         .to_json())

    async def _run(self) -> None:
        settings = self.ctx.settings
        refused = self.adapter.refusal(self.spec)
        if refused:  # starting it again would not change the plan's arguments
            await self._mark_failed(f"refused: {refused}", tail="")
            log.error("replica model_uid=%s replica_id=%s not started: %s", self.spec.model_uid,
                      self.spec.replica_id, refused)
            return
        while True:
            try:
                await self._start_engine()
                await self._register()
                await self._monitor()
            except Exception as exc:  # EngineFailure, or a bug/OS error: same recovery path
                if not isinstance(exc, EngineFailure):
                    log.exception("replica %s/%s: unexpected error", *self.spec.key)
                self.last_error = error_text(exc)
                await self._deregister_and_kill(str(exc))
                stable_for = time.monotonic() - self.ready_since if self.ready_since else 0.0
                if stable_for >= settings.stable_after:
                    self.failures = 0  # it ran fine for a while: not a crash loop
                self.ready_since = None
                self.failures += 1
                if self.failures > settings.restart_max:
                    await self._mark_failed(str(exc))
                    log.error("replica model_uid=%s replica_id=%s failed %d times in a row; "
                              "not restarting (last: %s)", self.spec.model_uid,
                              self.spec.replica_id, self.failures, exc)
                    return
                delay = backoff_seconds(self.failures, settings.backoff_base, settings.backoff_max)
                self.state = ReplicaState.RESTARTING
                log.warning("engine %s/%s failed (%s); restart %d/%d in %.1fs",
                            self.spec.model_uid, self.spec.replica_id, exc, self.failures,
                            settings.restart_max, delay)
                await asyncio.sleep(delay)
                self.restarts += 1
                m.ENGINE_RESTARTS.labels(engine=self.spec.engine).inc()

    async def _start_engine(self) -> None:
        ctx, settings = self.ctx, self.ctx.settings
        self.state = ReplicaState.STARTING
        if not self.engine.exited:
            # A crashed loop restarted by the task set may have left its engine running.
            await self.engine.stop(settings.stop_grace)
        with ctx.tracer.start_as_current_span("node.engine_start", attributes={
                "nebula.model_uid": self.spec.model_uid, "nebula.replica_id": self.spec.replica_id,
                "nebula.engine": self.spec.engine, "nebula.node_id": settings.node_id}) as span:
            async with ctx.port_lock:
                if self.port is not None:
                    ctx.reserved_ports.discard(self.port)
                self.port = pick_port(self.spec.port, settings.port_range, ctx.reserved_ports,
                                      self.listen_host)
                ctx.reserved_ports.add(self.port)
            span.set_attribute("nebula.port", self.port)
            if self.port != self.spec.port:
                log.warning("port %d is taken on this host; %s/%s uses port %d instead",
                            self.spec.port, self.spec.model_uid, self.spec.replica_id, self.port)
            try:
                argv = self.adapter.command(self.spec, self.port, self.listen_host)
            except Exception as exc:  # a bad spec fails this replica, not the node
                raise EngineFailure(f"cannot build the engine command: {exc}") from None
            env = self.adapter.env(self.spec, engine_base_env())
            self.engine = EngineProcess(self.spec.name, settings.state_dir)
            began = time.monotonic()
            try:
                # Shielded: once spawned, the process must be known even if we are cancelled.
                await asyncio.shield(self.engine.spawn(argv, env, self.port))
            except OSError as exc:
                raise EngineFailure(f"cannot start {argv[0]}: {exc}") from None
            log.info("started engine %s/%s pid=%s port=%d", self.spec.model_uid,
                     self.spec.replica_id, self.engine.pid, self.port,
                     extra={"cmd": command_line(argv)})
            await self._wait_ready(began)
            seconds = time.monotonic() - began
            span.set_attribute("nebula.start_seconds", seconds)
            m.ENGINE_START_SECONDS.labels(engine=self.spec.engine).observe(seconds)

    async def _wait_ready(self, began: float) -> None:
        deadline = began + self.ctx.settings.engine_ready_timeout
        delay = 0.1
        while True:
            if self.engine.exited:
                raise EngineFailure(f"engine exited with code {self.engine.returncode} "
                                    "before it was ready")
            if await self.adapter.ready(self.ctx.session, self.local_url, self.spec):
                return
            if time.monotonic() >= deadline:
                raise EngineFailure(f"engine not ready after "
                                    f"{self.ctx.settings.engine_ready_timeout:.0f}s")
            await self.engine.wait_exit(delay)
            delay = min(delay * 1.5, 1.0)

    async def _register(self) -> None:
        self.state = ReplicaState.READY
        self.ready_since = time.monotonic()
        self.registered = True
        await self.ctx.publisher.put(self.endpoint_key,
                                     self._endpoint(EndpointState.READY).to_json())
        log.info("registered endpoint model_uid=%s replica_id=%s base_url=%s",
                 self.spec.model_uid, self.spec.replica_id, self.base_url)
        await self._stop_stats()  # a restarted loop may have left the previous one
        self._stats_task = self.tasks.supervise(f"stats:{self.spec.name}", self._stats_loop)

    async def _monitor(self) -> None:
        """Return never; raise EngineFailure when the engine dies or stops answering."""
        settings = self.ctx.settings
        misses = 0
        while True:
            if await self.engine.wait_exit(settings.health_interval):
                raise EngineFailure(f"engine exited with code {self.engine.returncode}")
            if await self.adapter.healthy(self.ctx.session, self.local_url, self.spec):
                misses = 0
                continue
            if self.engine.exited:
                continue  # reported as an exit on the next turn
            misses += 1
            if misses >= settings.health_failures:
                raise EngineFailure(f"engine failed {misses} health checks in a row")

    async def _stop_stats(self) -> None:
        task, self._stats_task = self._stats_task, None
        await cancel_task(task)

    async def _deregister_and_kill(self, reason: str) -> None:
        # Deregister first, before anything else, so routers stop sending at once.
        if self.registered:
            self.registered = False
            await self.ctx.publisher.delete(self.endpoint_key)
            log.warning("deregistered endpoint model_uid=%s replica_id=%s: %s",
                        self.spec.model_uid, self.spec.replica_id, reason)
        await self._stop_stats()
        await self.ctx.publisher.delete(self.stats_key)
        await self.engine.stop(self.ctx.settings.stop_grace)

    async def _mark_failed(self, reason: str, tail: str | None = None) -> None:
        """Publish ``failed`` with ``reason`` and the engine log's tail (secrets scrubbed)."""
        self.state = ReplicaState.FAILED
        self.last_error = reason
        if tail is None:
            # Engines print their own arguments (vLLM: api_key=...); the tail goes to etcd.
            tail = scrub(self.engine.log_tail(LOG_TAIL_BYTES))
        await self.ctx.publisher.put(self.endpoint_key,
                                     self._endpoint(EndpointState.FAILED, reason, tail).to_json())

    # -- stats -------------------------------------------------------------------------
    async def scrape(self) -> MetricsSample | None:
        """One read of the engine's /metrics; None when it fails or the engine has none."""
        if not self.adapter.has_metrics:
            return None
        try:
            async with self.ctx.session.get(f"{self.local_url}/metrics",
                                            timeout=aiohttp.ClientTimeout(total=3)) as resp:
                if resp.status != 200:
                    raise ValueError(f"HTTP {resp.status}")
                text = await resp.text()
            return self.adapter.parse_metrics(text)
        except Exception as exc:  # any failure is one scrape error
            self.stats_errors += 1
            m.SCRAPE_ERRORS.labels(engine=self.spec.engine).inc()
            log.debug("scrape of %s failed: %s", self.spec.name, exc)
            return None

    async def _stats_loop(self) -> None:
        interval = self.ctx.settings.stats_interval
        while True:
            sample = await self.scrape()
            if sample is not None or not self.adapter.has_metrics:
                sample = sample or MetricsSample()
                stats = EndpointStats(running=sample.running, waiting=sample.waiting,
                                      kv_cache_usage=sample.kv_cache_usage,
                                      prefix_cache_hit_rate=prefix_hit_rate(
                                          sample, self._previous_sample))
                self._previous_sample = sample
                if self.registered:
                    await self.ctx.publisher.put(self.stats_key, stats.to_json())
            await asyncio.sleep(interval)

    # -- drain and stop -------------------------------------------------------------------
    async def drain_and_stop(self, timeout: float) -> None:
        """Mark draining, wait for in-flight requests (up to ``timeout``), stop, delete keys."""
        task, self._task = self._task, None
        await cancel_task(task)
        was_ready = self.registered and not self.engine.exited
        with self.ctx.tracer.start_as_current_span("node.replica_drain", attributes={
                "nebula.model_uid": self.spec.model_uid,
                "nebula.replica_id": self.spec.replica_id}):
            if was_ready:
                self.state = ReplicaState.DRAINING
                await self.ctx.publisher.put(self.endpoint_key,
                                             self._endpoint(EndpointState.DRAINING).to_json())
                await self._wait_idle(timeout)
            await self._stop_stats()
            await self.ctx.publisher.delete(self.endpoint_key)
            await self.ctx.publisher.delete(self.stats_key)
            self.registered = False
            await self.engine.stop(self.ctx.settings.stop_grace)
        if self.port is not None:
            self.ctx.reserved_ports.discard(self.port)
        self.state = ReplicaState.STOPPED
        log.info("stopped replica model_uid=%s replica_id=%s", self.spec.model_uid,
                 self.spec.replica_id)

    async def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        # Give routers a moment to see "draining" before counting what is in flight.
        await asyncio.sleep(min(0.3, timeout))
        while time.monotonic() < deadline and not self.engine.exited:
            sample = await self.scrape()
            if sample is None and not self.adapter.has_metrics:
                return  # nothing to count: llama.cpp has no metrics
            if sample is not None and sample.running + sample.waiting <= 0:
                return
            await asyncio.sleep(0.2)
        if not self.engine.exited:
            log.warning("drain of %s/%s timed out after %.0fs; stopping anyway",
                        self.spec.model_uid, self.spec.replica_id, timeout)
