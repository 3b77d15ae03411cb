"""The chaos cluster: 3 node agents x 2 sim replicas, a scheduler, two routers, a gateway.

One cluster is shared by the scenarios of a module (starting 14 processes costs
about 15 s on two cores); before each scenario ``chaos`` checks that it is whole
again (every process alive, every replica ready) and rebuilds it if not, so a
scenario that broke it for good cannot poison the next one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from devtools.cluster import Cluster, Proc, free_port, group_alive, http_get, wait_for
from nebula_common.records import EndpointState
from tests.chaos.driver import LoadResult, LoadSpec, LoadThread

NODE_IDS = ("n1", "n2", "n3")
MODELS = {"chaos-a": "alpha", "chaos-b": "beta"}  # model_uid -> model_name
REPLICAS = 3
# Realistic latency for a small model: 30 ms to the first token, 5 ms per token after.
ENGINE_ARGS = "--ttft-ms 30 --itl-ms 5 --output-tokens 20"
# Generous but bounded: a hung replica costs the router TTFB_TIMEOUT before the retry.
TTFB_TIMEOUT = 3.0
ROUTER_ARGS = ["--connect-timeout", "1", "--ttfb-timeout", str(TTFB_TIMEOUT),
               "--idle-timeout", "5", "--total-timeout", "30", "--max-retries", "2",
               "--eject-after", "3", "--eject-base", "2", "--eject-max", "10",
               # A non-streamed answer is not retried after it was sent; a hung engine is
               # found by its node's health check (its restart drops the connection, which
               # is retried) well inside this bound.
               "--response-timeout", "10"]
# The driver and the mid-stream scenario read which replica served: the header is off by default.
# Anonymous limits off: the scenarios measure failure handling, not the default limits.
GATEWAY_ARGS = ["--request-timeout", "20", "--body-timeout", "5", "--expose-replica-header",
                "--anonymous-rpm", "0", "--anonymous-concurrency", "0"]
NODE_ARGS = ["--lease-ttl", "3", "--health-interval", "0.5", "--health-failures", "3",
             "--restart-backoff", "0.2", "--drain-timeout", "10", "--stop-grace", "2",
             "--stats-interval", "0.5", "--engine-host", "127.0.0.1"]
SCHEDULER_ARGS = ["--reschedule-grace", "2", "--lease-ttl", "3"]
CONVERGE_S = 30.0
"""Stated convergence bound: every replica of every model ready again after a scenario."""
RESULTS_ENV = "NEBULA_CHAOS_RESULTS"
REPO = Path(__file__).resolve().parents[2]


def results_path() -> Path:
    return Path(os.environ.get(RESULTS_ENV) or REPO / ".run" / "chaos-results.json")


@dataclass
class ChaosCluster:
    """A running cluster plus the facts a scenario needs to damage and judge it."""

    cluster: Cluster
    marker: str
    gateway_url: str = ""
    router_urls: list[str] = field(default_factory=list)
    router_ports: list[int] = field(default_factory=list)
    port_base: int = 0

    # -- start ----------------------------------------------------------------------------
    def start(self) -> None:
        c = self.cluster
        c.start_etcd()
        c.start_scheduler(args=SCHEDULER_ARGS)
        for node_id in NODE_IDS:
            self.start_node(node_id)
        for i in (1, 2):
            port = free_port()
            _, url = c.start_router(f"router{i}", port=port, args=ROUTER_ARGS)
            self.router_ports.append(port)
            self.router_urls.append(url)
        _, self.gateway_url = c.start_gateway(self.router_urls, args=GATEWAY_ARGS)
        for offset, (uid, name) in enumerate(MODELS.items()):
            result = c.nebula("deploy", uid, "--model", name, "--engine", "sim",
                              "--replicas", str(REPLICAS), "--engine-args", ENGINE_ARGS,
                              "--port", str(self.port_base + offset * 10))
            assert result.returncode == 0, result.stdout + result.stderr
        self.wait_converged(60)

    def start_node(self, node_id: str) -> Proc:
        # Engines get ports from a window of our own (other suites may run at once).
        proc, _ = self.cluster.start_node(node_id, args=[
            *NODE_ARGS, "--port-range", f"{self.port_base}-{self.port_base + 300}"])
        return proc

    def restart_router(self, index: int) -> None:
        """Start router ``index`` (1-based) again on its old port (the gateway's list)."""
        self.cluster.start_router(f"router{index}", port=self.router_ports[index - 1],
                                  args=ROUTER_ARGS)

    # -- facts ----------------------------------------------------------------------------
    def proc(self, name: str) -> Proc:
        return self.cluster.procs[name]

    def endpoints(self, model_uid: str) -> list[dict[str, Any]]:
        return list(self.cluster.etcd_items(f"/endpoints/{model_uid}/").values())

    def ready_counts(self) -> dict[str, int]:
        return {uid: sum(1 for e in self.endpoints(uid) if e.get("status") == EndpointState.READY)
                for uid in MODELS}

    def pidfiles(self, node_id: str) -> list[tuple[Path, dict[str, Any]]]:
        folder = self.cluster.run_dir / "nodes" / node_id / "engines"
        out = []
        for path in sorted(folder.glob("*.pid")):
            with contextlib.suppress(ValueError, OSError):
                out.append((path, json.loads(path.read_text())))
        return out

    def engine_for(self, node_id: str | None = None, model_uid: str | None = None
                   ) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """A ready replica (optionally on ``node_id``/of ``model_uid``): (node, endpoint, pid)."""
        for uid in MODELS:
            if model_uid and uid != model_uid:
                continue
            for ep in sorted(self.endpoints(uid), key=lambda e: e["replica_id"]):
                elsewhere = node_id and ep["node_id"] != node_id
                if ep.get("status") != EndpointState.READY or elsewhere:
                    continue
                for path, rec in self.pidfiles(ep["node_id"]):
                    if path.stem == f"{uid}__{ep['replica_id']}" and group_alive(rec["pgid"]):
                        return ep["node_id"], ep, rec
        raise AssertionError(f"no ready replica with a live pid file (node={node_id})")

    def sim_stats(self) -> list[dict[str, Any]]:
        stats = []
        for uid in MODELS:
            for ep in self.endpoints(uid):
                with contextlib.suppress(OSError, ValueError):
                    status, body = http_get(ep["base_url"] + "/sim/stats")
                    if status == 200:
                        stats.append({"ref": f"{uid}/{ep['replica_id']}", **json.loads(body)})
        return stats

    def router_in_flight(self, url: str) -> float:
        _status, body = http_get(url + "/metrics")
        total = 0.0
        for line in body.decode().splitlines():
            if line.startswith("nebula_router_in_flight{") or \
                    line.startswith("nebula_router_in_flight "):
                total += float(line.rsplit(" ", 1)[1])
        return total

    # -- judgement --------------------------------------------------------------------------
    def node_alive(self, node_id: str) -> bool:
        proc = self.cluster.procs.get(f"node-{node_id}")
        return proc is not None and proc.alive()

    def orphans(self) -> list[str]:
        """Engines with no live node to own them (what issue 10 forbids).

        - every process group named in a node's pid files is gone, or its node is alive;
        - every ``nebula-sim`` process of this run (found by an environment marker,
          since a pid file may be gone) has a live node agent of ours as its parent.
        """
        problems = []
        for node_id in NODE_IDS:
            for path, rec in self.pidfiles(node_id):
                if group_alive(int(rec["pgid"])) and not self.node_alive(node_id):
                    problems.append(f"{path.name}: group {rec['pgid']} alive, node {node_id} "
                                    f"dead")
        node_pids = {p.pid for name, p in self.cluster.procs.items()
                     if name.startswith("node-") and p.alive()}
        for pid, ppid, cmd in self.marked_processes():
            if "nebula-sim" in cmd and ppid not in node_pids:
                problems.append(f"nebula-sim pid {pid} (parent {ppid}) has no live node: {cmd}")
        return problems

    def marked_processes(self) -> Iterator[tuple[int, int, str]]:
        needle = f"CHAOS_RUN={self.marker}".encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if needle not in (entry / "environ").read_bytes().split(b"\0"):
                    continue
                stat = (entry / "stat").read_text()
                fields = stat[stat.rindex(")") + 2:].split()
                if fields[0] == "Z":
                    continue
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (OSError, ValueError):
                continue
            yield int(entry.name), int(fields[1]), cmd

    def processes_dead(self) -> list[str]:
        return [name for name, p in self.cluster.procs.items() if not p.alive()]

    def whole(self) -> bool:
        if self.processes_dead():
            return False
        try:
            return all(n >= REPLICAS for n in self.ready_counts().values())
        except Exception:
            return False

    def wait_converged(self, timeout: float = CONVERGE_S) -> float:
        """Wait until every model has all its replicas ready; returns the seconds it took."""
        started = time.monotonic()
        wait_for(lambda: all(n >= REPLICAS for n in self.ready_counts().values()), timeout,
                 f"{REPLICAS} ready replicas of each model ({self.ready_counts_safe()})", 0.25)
        return time.monotonic() - started

    def ready_counts_safe(self) -> dict[str, int] | str:
        try:
            return self.ready_counts()
        except Exception as exc:
            return f"etcd unreadable: {exc}"

    def wait_routers_see_all(self, timeout: float = 15) -> None:
        """Both routers' tables hold every replica (so a scenario starts from calm).

        A replica the router ejected after a previous scenario counts: ejection is
        the router's own passive health state, lifted by its next successful probe.
        """
        want = REPLICAS * len(MODELS)

        def table_ok(url: str) -> bool:
            _status, body = http_get(url + "/metrics")
            known = 0.0
            for line in body.decode().splitlines():
                if line.startswith(('nebula_router_endpoints{state="ready"}',
                                    'nebula_router_endpoints{state="ejected"}',
                                    'nebula_router_endpoints{state="half_open"}')):
                    known += float(line.rsplit(" ", 1)[1])
            return known >= want
        for url in self.router_urls:
            wait_for(lambda u=url: table_ok(u), timeout, f"router {url} sees every replica",
                     0.2)

    # -- load ------------------------------------------------------------------------------
    def load(self, total: int = 200, concurrency: int = 8, rate: float = 0.0,
             timeout: float = 25.0, **kw: Any) -> LoadThread:
        spec = LoadSpec(self.gateway_url, tuple(MODELS.values()), total=total,
                        concurrency=concurrency, rate=rate, timeout=timeout, **kw)
        return LoadThread(spec).start()


class ConvergenceWatch:
    """Samples "every replica ready?" from the moment of damage, in a thread.

    Convergence time = first "whole" sample after the last "not whole" one,
    counted from the damage; 0 when the damage never showed in etcd (a router).
    """

    def __init__(self, chaos: ChaosCluster, interval: float = 0.25):
        self.chaos = chaos
        self.interval = interval
        self.started = time.monotonic()
        self.samples: list[tuple[float, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-converge", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                whole = all(n >= REPLICAS for n in self.chaos.ready_counts().values())
            except Exception:
                whole = False  # etcd unreachable: not known to be whole
            self.samples.append((time.monotonic(), whole))
            self._stop.wait(self.interval)

    def stop(self, whole_now: bool) -> float | None:
        """Seconds from damage to convergence (None if it never converged).

        ``whole_now`` is the caller's own check, just made: it covers the moment
        between the watcher's last sample and now.
        """
        self._stop.set()
        self._thread.join(10)
        if whole_now:
            self.samples.append((time.monotonic(), True))
        broken = [t for t, whole in self.samples if not whole]
        if not broken:
            return 0.0
        healed = [t for t, whole in self.samples if whole and t > broken[-1]]
        return round(healed[0] - self.started, 1) if healed else None


@dataclass
class ScenarioReport:
    """What one scenario did, written to tmp and appended to the results file."""

    name: str
    title: str
    figures: dict[str, Any] = field(default_factory=dict)

    def record(self, tmp_path: Path, result: LoadResult, **extra: Any) -> dict[str, Any]:
        self.figures = {"scenario": self.name, "title": self.title, **result.summary(),
                        **extra, "samples": result.samples(),
                        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (tmp_path / f"chaos-{self.name}.json").write_text(json.dumps(self.figures, indent=1))
        append_result(self.figures)
        print(f"\n[chaos] {self.name}: " + json.dumps(
            {k: v for k, v in self.figures.items() if k != "samples"}))
        return self.figures


def append_result(figures: dict[str, Any]) -> None:
    path = results_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, list):
            data = []
    except (OSError, ValueError):
        data = []
    data.append({**figures, "machine": machine()})
    path.write_text(json.dumps(data, indent=1))


def machine() -> str:
    cpus = os.cpu_count() or 0
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{cpus} CPUs {model}".strip()


def stop_cluster(cluster: Cluster) -> None:
    cluster.stop_all(grace=3)


def _build(run_dir: Path, attempts: int = 2) -> ChaosCluster:
    """Start a cluster; once more if a port was taken between picking and binding it.

    Other suites run at the same time on this machine: a port found free can be
    bound by someone else before our process binds it (then a foreign server may
    even answer our /healthz probe), so every process must still be alive at the end.
    """
    for attempt in range(attempts):
        marker = uuid.uuid4().hex[:12]
        cluster = Cluster(run_dir / f"try{attempt}", env={"CHAOS_RUN": marker})
        chaos = ChaosCluster(cluster, marker, port_base=_port_base())
        try:
            chaos.start()
            time.sleep(0.5)  # a process that lost a bind race exits at once
            dead = chaos.processes_dead()
            if not dead:
                return chaos
            problem = f"died during start: {dead}"
        except Exception as exc:
            problem = str(exc)
        stop_cluster(cluster)
        if attempt == attempts - 1:
            raise RuntimeError(f"chaos cluster did not start: {problem}")
    raise AssertionError("unreachable")


def _port_base() -> int:
    """A random 300-port window above the ephemeral range's usual floor of free ports."""
    import random
    return random.randrange(20000, 30000, 10)


def logs_root() -> Path:
    """Where cluster run dirs (logs, pid files) go: kept after the run for post-mortems.

    pytest's own tmp dirs rotate after three sessions, which loses the logs of a
    failure seen in CI or in a long session; this keeps the last five. Not under
    the repo's ``.run/``: ``make down`` reaps every pid file below ``.run/``, and
    would stop the engines of a chaos cluster in the middle of a scenario.
    """
    base = Path(os.environ.get("NEBULA_CHAOS_RUNS") or
                Path(tempfile.gettempdir()) / "nebula-chaos-runs")
    base.mkdir(parents=True, exist_ok=True)
    runs = sorted(base.iterdir(), key=lambda p: p.stat().st_mtime)
    for old in runs[:-4]:
        shutil.rmtree(old, ignore_errors=True)
    root = base / f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
    root.mkdir()
    return root


@pytest.fixture(scope="module")
def chaos_holder() -> Iterator[dict[str, Any]]:
    holder: dict[str, Any] = {"root": logs_root(), "n": 0}
    try:
        yield holder
    finally:
        if holder.get("cluster"):
            stop_cluster(holder["cluster"].cluster)


@pytest.fixture
def chaos(chaos_holder: dict[str, Any]) -> Iterator[ChaosCluster]:
    """The module's cluster, whole and calm; rebuilt when a scenario left it broken."""
    current: ChaosCluster | None = chaos_holder.get("cluster")
    if current is not None and not current.whole():
        stop_cluster(current.cluster)
        current = None
    if current is None:
        chaos_holder["n"] += 1
        current = _build(chaos_holder["root"] / f"run{chaos_holder['n']}")
        chaos_holder["cluster"] = current
    current.wait_routers_see_all()
    yield current
