"""Processes the benchmark runs, all under one temporary directory, and how they register.

etcd, the router and the gateway come from :class:`devtools.cluster.Cluster`;
the stand-in engines (nginx, nebula-sim) are spawned through it too, so
``stop_all`` stops every one of them (each in its own process group). No node
agent runs: the bench writes the records a node would write for a ready replica
(Endpoint, EndpointStats) and the PlacementPlan the scheduler would write.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from devtools.cluster import Cluster, Proc, free_port, http_get, wait_for
from nebula_common.keys import Keys
from nebula_common.records import (
    Assignment,
    Endpoint,
    EndpointState,
    EndpointStats,
    NodeStatus,
    PlacementPlan,
)
from nebula_common.store import EtcdConfig, EtcdStore

from .standin import nginx_binary, write_nginx_files

NODE_ID = "bench-node"


@dataclass(frozen=True)
class Replica:
    """One engine process registered as replica ``replica_id`` of ``model``."""

    model: str
    engine: str
    replica_id: str
    port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def registration_records(keys: Keys, model: str, engine: str, replicas: Sequence[Replica]
                         ) -> dict[str, bytes]:
    """The etcd key/values that make ``replicas`` routable, as a node and scheduler write them.

    ``model`` is used as both model_uid and model_name.
    """
    plan = PlacementPlan(model_uid=model, model_name=model, engine=engine, version=1,
                         assignments=[Assignment(r.replica_id, NODE_ID, r.port) for r in replicas])
    # The router routes only to endpoints on the advertise host of a live node.
    node = NodeStatus(node_id=NODE_ID, advertise_host="127.0.0.1", engines=[engine])
    out = {keys.placement(model): plan.to_json(), keys.node(NODE_ID): node.to_json()}
    for r in replicas:
        ep = Endpoint(model_uid=model, model_name=model, replica_id=r.replica_id,
                      node_id=NODE_ID, base_url=r.base_url, engine=engine,
                      status=EndpointState.READY,
                      plan_version=1)
        out[keys.endpoint(model, r.replica_id)] = ep.to_json()
        out[keys.endpoint_stats(model, r.replica_id)] = EndpointStats().to_json()
    return out


class Bench:
    """Starts and registers everything; ``close()`` stops it all."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.cluster = Cluster(self.run_dir)
        self.keys = Keys("")
        self.router_url = ""
        self.gateway_url = ""

    # -- processes ---------------------------------------------------------------------
    def start_etcd(self) -> None:
        self.cluster.start_etcd()

    def start_nginx(self, model: str) -> Replica:
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx is not installed (make bench-tools)")
        port = free_port()
        ngx_dir = self.run_dir / "nginx"
        conf = write_nginx_files(ngx_dir, port, model)
        proc = self.cluster.spawn("nginx", [binary, "-c", str(conf), "-p", str(ngx_dir),
                                            "-e", str(ngx_dir / "error.log")])
        self.wait_http(proc, f"http://127.0.0.1:{port}/health")
        return Replica(model, "vllm", "r0", port)

    def start_sim(self, name: str, model: str, replica_id: str, args: Sequence[str]) -> Replica:
        _, url = self.cluster.start_sim(name, model, args=["--log-level", "warning", *args])
        return Replica(model, "sim", replica_id, int(url.rsplit(":", 1)[1]))

    def start_pacer(self, name: str, model: str, interval_ms: float = 10.0,
                    chunks: int = 64) -> Replica:
        """The raw paced-SSE stand-in (:mod:`bench.pacer`)."""
        port = free_port()
        proc = self.cluster.spawn(name, [sys.executable, "-m", "bench.pacer", "--port", str(port),
                                         "--model-name", model, "--chunks", str(chunks),
                                         "--interval-ms", str(interval_ms)])
        self.wait_http(proc, f"http://127.0.0.1:{port}/health")
        return Replica(model, "vllm", "r0", port)

    def start_relay(self, name: str, upstream: Replica) -> str:
        """The byte relay (:mod:`bench.relay`) in front of ``upstream``; its base URL."""
        port = free_port()
        proc = self.cluster.spawn(name, [sys.executable, "-m", "bench.relay", "--port", str(port),
                                         "--upstream-port", str(upstream.port)])
        url = f"http://127.0.0.1:{port}"
        self.wait_http(proc, f"{url}/health")  # answered by the upstream, through the relay
        return url

    def start_router(self, args: Sequence[str] = (), name: str = "router",
                     env: dict[str, str] | None = None) -> str:
        """(Re)start router ``name``; the one named ``router`` is :attr:`router_url`."""
        old = self.cluster.procs.get(name)
        if old is not None and old.alive():
            old.stop()
        _, url = self.cluster.start_router(name=name, args=list(args), env=env)
        if name == "router":
            self.router_url = url
        return url

    def start_gateway(self, args: Sequence[str] = (), name: str = "gateway",
                      router_url: str = "", env: dict[str, str] | None = None) -> str:
        """Gateway ``name`` in front of ``router_url`` (default: :attr:`router_url`)."""
        # The bench measures the request path, not the anonymous callers' default limits.
        limits_off = ["--anonymous-rpm", "0", "--anonymous-concurrency", "0"]
        _, url = self.cluster.start_gateway([router_url or self.router_url], name=name,
                                            args=[*limits_off, *args], env=env)
        if name == "gateway":
            self.gateway_url = url
        return url

    def pid(self, name: str) -> int:
        return self.cluster.procs[name].pid

    def close(self) -> None:
        self.cluster.stop_all(grace=5)

    @staticmethod
    def wait_http(proc: Proc, url: str, timeout: float = 30) -> None:
        """Poll ``url`` for a 200; fail with the log's tail as soon as ``proc`` exits."""
        def ok() -> bool:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited:\n{proc.log()[-2000:]}")
            return http_get(url)[0] == 200
        wait_for(ok, timeout, f"{proc.name} at {url}")

    # -- registration ------------------------------------------------------------------
    def store(self) -> EtcdStore:
        return EtcdStore(EtcdConfig(endpoints=(self.cluster.etcd_endpoint,), timeout=3))

    def register(self, model: str, engine: str, replicas: Sequence[Replica]) -> None:
        """Write the records of ``replicas`` and wait until the router routes to them."""
        async def put() -> None:
            store = self.store()
            try:
                for key, value in registration_records(self.keys, model, engine,
                                                       replicas).items():
                    await store.put(key, value)
            finally:
                await store.close()
        asyncio.run(put())

    def wait_routable(self, model: str, replicas: int, timeout: float = 30,
                      router_url: str = "") -> None:
        """Poll a router's /v1/models until ``model`` has ``replicas`` ready ones."""
        def ready() -> bool:
            status, body = http_get(f"{router_url or self.router_url}/v1/models")
            if status != 200:
                return False
            for item in json.loads(body).get("data", []):
                if item.get("id") == model:
                    return int(item.get("nebula", {}).get("ready_replicas", 0)) >= replicas
            return False
        wait_for(ready, timeout, f"router to see {replicas} ready replicas of {model}", 0.1)


class StatsPublisher:
    """Scrapes each sim's /sim/stats and writes EndpointStats, as the node agent does."""

    def __init__(self, bench: Bench, model: str, replicas: Sequence[Replica],
                 interval_s: float = 0.5):
        self.bench = bench
        self.model = model
        self.replicas = list(replicas)
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        store = self.bench.store()
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
                while True:
                    for r in self.replicas:
                        try:
                            async with http.get(f"{r.base_url}/sim/stats") as resp:
                                data = await resp.json()
                        except (aiohttp.ClientError, TimeoutError, ValueError):
                            continue
                        stats = EndpointStats(
                            running=float(data.get("running", 0)),
                            waiting=float(data.get("waiting", 0)),
                            kv_cache_usage=float(data.get("kv_cache_usage", 0)),
                            prefix_cache_hit_rate=float(
                                data.get("prefix_cache", {}).get("hit_rate", 0)),
                            updated_at=time.time())
                        await store.put(self.bench.keys.endpoint_stats(self.model, r.replica_id),
                                        stats.to_json())
                    await asyncio.sleep(self.interval_s)
        finally:
            await store.close()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
