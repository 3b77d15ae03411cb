"""The soak benchmark (``make soak``): steady mixed traffic through gateway + router for a long run.

A real cluster on loopback (etcd, scheduler, one node agent with two ``nebula-sim``
replicas, router, gateway) takes a fixed rate of chat requests, half streamed, one
stream in ten hung up by its client mid-way, while a replica's engine is SIGKILLed
every few minutes (its node restarts it). Every ``--sample`` seconds the router's
and the gateway's RSS, open file descriptors and asyncio tasks are read, with the
p50/p99 and the errors of the requests that finished since the last sample. The
verdict is against issue 17's targets; the exit status is 0 whatever the verdict
and 1 only when the run itself broke (a role died, the cluster did not start).

    python -m bench.soak [--duration 1800] [--warmup 300] [--sample 30]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

from devtools.cluster import free_port
from nebula_common.http_servers import DEFAULT_HTTP_SERVER, HTTP_SERVERS
from nebula_common.procs import cmd_matches, read_cmdline

from . import soakstats as ss
from .harness import Bench
from .report import fmt, text_table
from .run import machine

REPO = Path(__file__).resolve().parent.parent
MODEL_UID = "soak"
MODEL = "soak-model"
NODE_ID = "soak-node"
REPLICAS = 2
# A small model's pace: 30 ms to the first token, 5 ms per token, 20 tokens (about 130 ms).
ENGINE_ARGS = "--ttft-ms 30 --itl-ms 5 --output-tokens 20"
# Quick engine health checks and restarts, so a killed replica is back within seconds.
NODE_ARGS = ["--health-interval", "0.5", "--health-failures", "2", "--restart-backoff", "0.5",
             "--stats-interval", "1", "--engine-host", "127.0.0.1"]
ROLES_THAT_MUST_LIVE = ("etcd", "scheduler", f"node-{NODE_ID}", "router", "gateway")
Say = Callable[[str], None]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=1800, help="seconds of load (1800)")
    p.add_argument("--warmup", type=float, default=300,
                   help="seconds at the start that the RSS and p99 targets leave out (300)")
    p.add_argument("--sample", type=float, default=30, help="seconds between samples (30)")
    p.add_argument("--window", type=float, default=300,
                   help="length of the first and last p99 windows after warm-up (300)")
    p.add_argument("--rate", type=float, default=25, help="request starts per second (25)")
    p.add_argument("--concurrency", type=int, default=64,
                   help="most requests in flight; a start beyond it counts as client_busy")
    p.add_argument("--restart-every", type=float, default=180,
                   help="seconds between engine kills, alternating replicas (0: none)")
    p.add_argument("--settle", type=float, default=90,
                   help="how long fds and tasks may take to return to baseline after the load "
                        "(the gateway keeps idle router connections 60 s)")
    p.add_argument("--timeout", type=float, default=30, help="per-request timeout (30)")
    p.add_argument("--http-server", choices=HTTP_SERVERS, default=DEFAULT_HTTP_SERVER,
                   help=f"the router's and the gateway's HTTP server ({DEFAULT_HTTP_SERVER})")
    p.add_argument("--plot", type=Path, default=REPO / "docs" / "soak.png")
    p.add_argument("--doc", type=Path, default=REPO / "docs" / "benchmarks.md")
    p.add_argument("--findings", type=Path, default=REPO / "bench" / "findings.md")
    p.add_argument("--no-doc", action="store_true",
                   help="leave docs/benchmarks.md and bench/findings.md alone")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    p.add_argument("--keep", action="store_true", help="keep the run's logs")
    args = p.parse_args(argv)
    if min(args.duration, args.sample, args.rate) <= 0 or args.warmup < 0:
        p.error("--duration, --sample and --rate must be positive, --warmup not negative")
    if args.warmup >= args.duration:
        p.error("--warmup must be shorter than --duration")
    return args


# -- the cluster --------------------------------------------------------------------------------

def start_cluster(bench: Bench, say: Say, http_server: str = DEFAULT_HTTP_SERVER) -> None:
    """etcd, scheduler, node, router, gateway; deploy the sim model and wait until it answers."""
    c = bench.cluster
    bench.start_etcd()
    c.start_scheduler()
    port = free_port()
    c.start_node(NODE_ID, args=[*NODE_ARGS, "--port-range", f"{port}-{port + 40}"])
    bench.start_router(["--http-server", http_server])
    bench.start_gateway(["--http-server", http_server])
    done = c.nebula("deploy", MODEL_UID, "--model", MODEL, "--engine", "sim", "--replicas",
                    str(REPLICAS), "--engine-args", ENGINE_ARGS, "--port", str(port))
    if done.returncode != 0:
        raise RuntimeError(f"nebula deploy failed: {done.stdout}{done.stderr}")
    c.wait_ready(MODEL_UID, REPLICAS, timeout=90)
    bench.wait_routable(MODEL, REPLICAS, timeout=60)
    say(f"cluster up under {c.run_dir}: router {bench.router_url}, gateway {bench.gateway_url}")


def kill_engine(nodes_dir: Path, turn: int) -> str:
    """SIGKILL the engine of replica ``turn % n`` by its pid file; '' when none is running."""
    files = sorted(nodes_dir.rglob("*.pid"))
    if not files:
        return ""
    path = files[turn % len(files)]
    try:
        rec = json.loads(path.read_text())
        pid = int(rec["pgid"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    # A restart in progress may have left a pid that now names another program.
    if not cmd_matches(read_cmdline(pid), [str(x) for x in rec.get("cmd") or []]):
        return ""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return path.stem


# -- reading the roles --------------------------------------------------------------------------

def rss_and_fds(pid: int) -> tuple[int, int]:
    """VmRSS (KiB) and the open file descriptors of ``pid``; two small /proc reads."""
    return (ss.parse_vmrss_kib(Path(f"/proc/{pid}/status").read_text()),
            len(os.listdir(f"/proc/{pid}/fd")))


async def read_proc(pid: int, url: str, http: aiohttp.ClientSession) -> ss.ProcSample:
    """RSS and fds from /proc, tasks from the role's /metrics (NaN when it does not answer)."""
    rss, fds = rss_and_fds(pid)
    tasks = math.nan
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with http.get(f"{url}/metrics") as resp:
            tasks = ss.parse_gauge(await resp.text(), ss.TASKS_METRIC)
    return ss.ProcSample(rss, fds, tasks)


async def read_roles(bench: Bench, http: aiohttp.ClientSession) -> dict[str, ss.ProcSample]:
    for name in ROLES_THAT_MUST_LIVE:
        if not bench.cluster.procs[name].alive():
            raise RuntimeError(f"{name} exited during the soak:\n"
                               + bench.cluster.procs[name].log()[-2000:])
    urls = {"router": bench.router_url, "gateway": bench.gateway_url}
    return {role: await read_proc(bench.pid(role), urls[role], http) for role in ss.ROLES}


# -- the traffic --------------------------------------------------------------------------------

class Traffic:
    """Open-loop starts at ``rate`` per second, at most ``concurrency`` in flight.

    Request ``i`` is streamed when ``i`` is even; every tenth stream is hung up by
    the client after three frames. A start that finds ``concurrency`` requests in
    flight is not sent and counts as ``client_busy``: the path fell behind.
    """

    def __init__(self, url: str, rate: float, concurrency: int, timeout: float):
        self.url = url
        self.rate = rate
        self.concurrency = concurrency
        self.timeout = timeout
        self.finished: list[ss.Finished] = []
        self.t0 = 0.0

    def _record(self, kind: str, started: float, stream: bool) -> None:
        now = time.monotonic()
        latency = (now - started) * 1000 if kind == ss.OK else math.nan
        self.finished.append(ss.Finished(now - self.t0, kind, latency, stream))

    async def one(self, http: aiohttp.ClientSession, i: int) -> None:
        stream = i % 2 == 0
        hang_up = stream and i % 20 == 0
        body = {"model": MODEL, "stream": stream,
                "messages": [{"role": "user", "content": f"soak request {i}"}]}
        started = time.monotonic()
        kind = "lost"
        try:
            async with asyncio.timeout(self.timeout):
                async with http.post(self.url, json=body) as resp:
                    if resp.status != 200:
                        await resp.read()
                        kind = f"http_{resp.status}"
                    elif not stream:
                        kind = ss.body_kind(await resp.read())
                    else:
                        buf = bytearray()
                        async for chunk in resp.content.iter_any():
                            buf += chunk
                            if hang_up and buf.count(b"data:") >= 3:
                                resp.close()  # drop the connection mid-stream
                                kind = ss.DISCONNECT
                                break
                        else:
                            kind = ss.stream_kind(bytes(buf))
        except TimeoutError:
            kind = "timeout"
        except aiohttp.ClientError as exc:
            kind = type(exc).__name__
        self._record(kind, started, stream)

    async def run(self, duration: float) -> None:
        """Send for ``duration`` seconds from ``t0``, then wait (bounded) for what is in flight."""
        connector = aiohttp.TCPConnector(limit=self.concurrency)
        pending: set[asyncio.Task[None]] = set()
        async with aiohttp.ClientSession(connector=connector) as http:
            i = 0
            while i / self.rate < duration:
                delay = self.t0 + i / self.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if len(pending) >= self.concurrency:
                    self._record("client_busy", time.monotonic(), i % 2 == 0)
                else:
                    task = asyncio.create_task(self.one(http, i))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                i += 1
            if pending:
                await asyncio.wait(pending, timeout=self.timeout + 5)


# -- the run ------------------------------------------------------------------------------------

async def prime(url: str) -> None:
    """One request of each kind, so that what a role builds on first use is in the baseline."""
    traffic = Traffic(url, 1, 4, 30)
    traffic.t0 = time.monotonic()
    async with aiohttp.ClientSession() as http:
        for i in (1, 2):  # non-streamed, streamed (0 would hang up)
            await traffic.one(http, i)
    bad = [f.kind for f in traffic.finished if f.kind != ss.OK]
    if bad:
        raise RuntimeError(f"the gateway does not answer the soak model: {bad}")


@dataclass
class SoakResult:
    """What a finished run hands to the report: rows, every request, the fd/task end points."""

    rows: list[ss.Row]
    finished: list[ss.Finished]
    baseline: dict[str, ss.ProcSample]
    final: dict[str, ss.ProcSample]
    restarts: list[float]


async def soak(bench: Bench, args: argparse.Namespace, say: Say) -> SoakResult:
    chat_url = f"{bench.gateway_url}/v1/chat/completions"
    await prime(chat_url)
    # One connection per scrape: the sampler's own keep-alive must not count as a role's fd.
    scrape = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True),
                                   timeout=aiohttp.ClientTimeout(total=5))
    rows: list[ss.Row] = []
    restarts: list[float] = []
    traffic = Traffic(chat_url, args.rate, args.concurrency, args.timeout)
    try:
        await asyncio.sleep(1)
        baseline = await read_roles(bench, scrape)
        say("baseline: " + ", ".join(f"{r} {p.rss_kib / 1024:.1f} MiB {p.fds} fds "
                                     f"{fmt(p.tasks, 0)} tasks" for r, p in baseline.items()))
        started = traffic.t0 = time.monotonic()
        load = asyncio.create_task(traffic.run(args.duration))
        killer = asyncio.create_task(restart_loop(bench, args.restart_every, restarts, traffic,
                                                  say))
        seen, k = 0, 1
        try:
            while k * args.sample <= args.duration + 1e-6:
                await asyncio.sleep(max(0.0, started + k * args.sample - time.monotonic()))
                t = k * args.sample
                procs = await read_roles(bench, scrape)
                done = traffic.finished[seen:]
                seen = len(traffic.finished)
                n_restarts = sum(1 for r in restarts if t - args.sample <= r < t)
                row = ss.window_row(t, "warm-up" if t <= args.warmup else "load", done, procs,
                                    n_restarts)
                rows.append(row)
                say(text_table(ss.HEADERS, ss.table_rows([row])).splitlines()[-1])
                k += 1
            await load
        finally:
            killer.cancel()
            load.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(killer, load)
        final = await settle(bench, scrape, baseline, args.settle)
        end_t = time.monotonic() - started
        rows.append(ss.window_row(end_t, "end", traffic.finished[seen:], final))
    finally:
        await scrape.close()
    return SoakResult(rows, traffic.finished, baseline, final, restarts)


async def restart_loop(bench: Bench, every: float, restarts: list[float], traffic: Traffic,
                       say: Say) -> None:
    if every <= 0:
        return
    turn = 0
    while True:
        await asyncio.sleep(every)
        killed = kill_engine(bench.cluster.nodes_dir, turn)
        turn += 1
        if killed:
            restarts.append(time.monotonic() - traffic.t0)
            say(f"  killed the engine of {killed} (SIGKILL); its node restarts it")


async def settle(bench: Bench, http: aiohttp.ClientSession, baseline: dict[str, ss.ProcSample],
                 bound: float) -> dict[str, ss.ProcSample]:
    """Poll until every role's fds and tasks are back to baseline, or ``bound`` seconds pass."""
    deadline = time.monotonic() + bound
    while True:
        now = await read_roles(bench, http)
        back = all(now[r].fds <= baseline[r].fds and now[r].tasks <= baseline[r].tasks
                   for r in ss.ROLES)
        if back or time.monotonic() >= deadline:
            return now
        await asyncio.sleep(2)


def plot(rows: Sequence[ss.Row], restarts: Sequence[float], warmup: float, path: Path) -> None:
    """RSS of both roles (top) and p50/p99 per sample (bottom) against time, restarts marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    load = [r for r in rows if r.phase != "end"]
    ts = [r.t / 60 for r in load]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(9, 6))
    for role in ss.ROLES:
        top.plot(ts, [r.procs[role].rss_kib / 1024 for r in load], marker=".", label=role)
    top.set_ylabel("RSS (MiB)")
    # Growth against the whole, not a zoom that makes 1 % look steep; headroom for the legend.
    top.set_ylim(0, 1.25 * max(r.procs[role].rss_kib / 1024 for r in load for role in ss.ROLES))
    bottom.plot(ts, [r.p50_ms for r in load], marker=".", label="p50")
    bottom.plot(ts, [r.p99_ms for r in load], marker=".", label="p99")
    bottom.set_ylabel("latency to last byte (ms)")
    bottom.set_xlabel("minutes since the load started")
    for ax in (top, bottom):
        ax.axvspan(0, warmup / 60, color="0.9", label="warm-up" if ax is top else None)
        for i, t in enumerate(restarts):
            ax.axvline(t / 60, color="tab:red", linestyle=":", linewidth=1,
                       label="engine killed" if i == 0 and ax is top else None)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right" if ax is top else "upper right", fontsize="small")
    top.set_title("make soak: gateway + router under steady mixed traffic")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def about(args: argparse.Namespace, info: dict[str, str], finished: Sequence[ss.Finished],
          restarts: Sequence[float]) -> str:
    kinds: dict[str, int] = {}
    for f in finished:
        kinds[f.kind] = kinds.get(f.kind, 0) + 1
    errors = {k: n for k, n in sorted(kinds.items()) if k not in (ss.OK, ss.DISCONNECT)}
    return (
        f"Run {info['date']} on {info['cpus']} CPUs ({info['cpu']}), load average at start "
        f"{info['load']}, shared with other work: `python -m bench.soak --duration "
        f"{args.duration:g} --warmup {args.warmup:g} --sample {args.sample:g}`. One node agent "
        f"with {REPLICAS} `nebula-sim` replicas (`{ENGINE_ARGS}`), a scheduler, a router and a "
        f"gateway on loopback; {args.rate:g} requests/s started open-loop (at most "
        f"{args.concurrency} in flight), every other one streamed, every tenth stream hung up "
        f"by its client after three frames, and a replica's engine SIGKILLed every "
        f"{args.restart_every:g} s ({len(restarts)} kills; the node restarts it); both roles on "
        f"`--http-server {args.http_server}`. "
        f"{kinds.get(ss.OK, 0):,} requests answered in full, {kinds.get(ss.DISCONNECT, 0):,} "
        f"hung up on purpose, errors: {ss.error_text(errors) if errors else 'none'}. "
        f"Baseline fds and tasks are read idle before the load (after one request of each "
        f"kind); the `end` row up to "
        f"{args.settle:g} s after it stopped. `make soak` prints the verdict and exits 0 "
        f"whatever it is; it exits 1 only when the run broke (a role died, the cluster did "
        f"not start).")


def write_docs(args: argparse.Namespace, section: str, say: Say) -> None:
    for path in (args.findings, args.doc):
        if path.exists():
            path.write_text(ss.replace_section(path.read_text(), section))
            say(f"wrote the soak section of {path}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def say(msg: str) -> None:
        print(msg, flush=True)

    info = machine()
    run_dir = Path(tempfile.mkdtemp(prefix="nebula-soak-"))
    bench = Bench(run_dir)
    say(f"nebula soak: {args.duration:g} s at {args.rate:g} req/s, warm-up {args.warmup:g} s, "
        f"a sample every {args.sample:g} s; {info['cpus']} CPUs, load {info['load']}")
    say(text_table(ss.HEADERS, []).splitlines()[0])
    try:
        start_cluster(bench, say, args.http_server)
        result = asyncio.run(soak(bench, args, say))
    except (RuntimeError, TimeoutError, OSError, ValueError) as exc:
        print(f"bench.soak: error: {exc}", file=sys.stderr)
        say(f"logs in {run_dir}")
        bench.close()
        return 1
    bench.close()
    if args.keep:
        say(f"logs kept in {run_dir}")
    else:
        shutil.rmtree(run_dir, ignore_errors=True)

    rows, finished, restarts = result.rows, result.finished, result.restarts
    targets = ss.verdict(rows, finished, result.baseline, result.final,
                         warmup_s=args.warmup, duration_s=args.duration, window_s=args.window)
    say("")
    say(ss.render_text(rows, targets))
    plot(rows, restarts, args.warmup, args.plot)
    say(f"wrote {args.plot}")
    if args.json:
        args.json.write_text(json.dumps({"rows": [asdict(r) for r in rows],
                                         "restarts": restarts,
                                         "targets": [asdict(t) for t in targets]},
                                        indent=1, default=str))
    if not args.no_doc:
        rel = os.path.relpath(args.plot, args.doc.parent)
        write_docs(args, ss.render_section(rows, targets, about=about(args, info, finished,
                                                                      restarts), plot=rel,
                                           duration_s=args.duration), say)
    return 0


if __name__ == "__main__":
    sys.exit(main())
