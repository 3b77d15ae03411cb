"""``python -m bench.run`` (``make bench``): the request-path and routing-quality benchmark.

Starts etcd, the stand-in engines (nginx for instant answers, ``bench.pacer`` for
10 ms-paced streams), the router and the gateway on free loopback ports under a
temporary directory; registers the stand-ins in etcd as a node would; drives load
(``wrk``, or ``bench.rawload`` for the paced streams) against each path (direct,
router, gateway + router) in interleaved, repeated rounds while sampling the CPU
time of the Nebula processes; then compares routing policies on a multi-turn
prefix-cache workload over 4 ``nebula-sim`` replicas. Prints the table and writes
``docs/benchmarks.md``. Everything started is stopped on the way out, whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import hashlib
import json
import math
import os
import platform
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import uvloop

from devtools.cluster import REPO, http_get, http_post_json
from nebula_common.http_servers import DEFAULT_HTTP_SERVER, HTTP_SERVERS

from . import baseline, peers, report
from .harness import Bench, Replica, StatsPublisher
from .load import LoadResult, StreamTiming, run_wrk
from .rawload import drained_closed_loop
from .routing import PolicyResult, Workload, parse_decisions, run_workload, summarize
from .standin import MODEL, STREAM_AGENT
from .stats import (
    CLK_TCK,
    busy_share,
    group_cpu_ticks,
    machine_cpu_totals,
    ticks_to_seconds,
)

PACED_MODEL = "bench-paced"
PACED_SHORT_MODEL = "bench-paced16"
PACED_CHUNKS, PACED_SHORT_CHUNKS = 64, 16
PACED_STREAMS = {PACED_MODEL: PACED_CHUNKS, PACED_SHORT_MODEL: PACED_SHORT_CHUNKS}
"""The paced stand-ins' models and chunks per stream: the CPU per forwarded chunk is the
difference of the two scenarios' CPU per request over the 48 chunks between them
(report.per_chunk_costs)."""
PREFIX_MODEL = "bench-prefix"
POLICIES = ("round_robin", "least_load", "prefix")
DOC = REPO / "docs" / "benchmarks.md"


@dataclass(frozen=True)
class Scenario:
    name: str
    model: str
    stream: bool
    connections: int

    def body(self) -> bytes:
        return json.dumps({
            "model": self.model, "stream": self.stream, "max_tokens": 64,
            "messages": [{"role": "user", "content": "Say something short."}],
        }).encode()

    @property
    def agent(self) -> str:
        return STREAM_AGENT if self.stream else "nebula-bench"


CHAT_C1, CHAT_C64 = "chat c1", "chat c64"
STREAM_C1, STREAM_C64 = "stream64 c1", "stream64 c64"
PACED_C64, PACED_C1000 = "paced10ms c64", "paced10ms c1000"
PACED_SHORT_C64 = "paced10ms/16 c64"

SCENARIOS = (
    Scenario(CHAT_C1, MODEL, False, 1),
    Scenario(CHAT_C64, MODEL, False, 64),
    Scenario(STREAM_C1, MODEL, True, 1),
    Scenario(STREAM_C64, MODEL, True, 64),
    Scenario(PACED_C64, PACED_MODEL, True, 64),
    Scenario(PACED_SHORT_C64, PACED_SHORT_MODEL, True, 64),
    Scenario(PACED_C1000, PACED_MODEL, True, 1000),
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="measured rounds per scenario")
    p.add_argument("--duration", type=float, default=5.0,
                   help="seconds per load run (wrk: whole seconds)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up per path")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 round of 2 s, small routing workload, no doc update")
    p.add_argument("--scenarios", default="",
                   help="comma-separated scenario names to run (default: all)")
    p.add_argument("--skip-routing", action="store_true", help="skip the routing-quality part")
    p.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    p.add_argument("--doc", type=Path, default=DOC, help="where to write the markdown report")
    p.add_argument("--json", type=Path, default=None, help="also write raw samples as JSON")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs) afterwards")
    p.add_argument("--cache-blocks", type=int, default=640,
                   help="prefix-cache blocks per sim replica in the routing workload")
    p.add_argument("--prefill-ms", type=float, default=0.2,
                   help="sim prefill cost per uncached prompt token (ms)")
    p.add_argument("--paced-engine", choices=("pacer", "sim"), default="pacer",
                   help="stand-in for the 10 ms-paced streams: bench.pacer (raw uvloop, "
                        "near-zero cost) or nebula-sim (Quart/Hypercorn)")
    p.add_argument("--router-args", default="",
                   help="extra nebula-router flags, e.g. '--http-server uvicorn'")
    p.add_argument("--gateway-args", default="", help="extra nebula-gateway flags")
    p.add_argument("--servers", default="",
                   help="comma-separated --http-server values to measure the router and "
                        "gateway+router under, side by side (default: the configured one only)")
    p.add_argument("--compare-servers", action="store_true",
                   help="--servers " + ",".join(HTTP_SERVERS))
    p.add_argument("--peers", action="store_true",
                   help="also measure vllm-router and LiteLLM's proxy on the same stand-in "
                        "(make peers installs them; make bench-peers sets this)")
    p.add_argument("--baseline", nargs="?", const=baseline.ISSUE17_BASELINE, default="",
                   metavar="REV",
                   help="also run the router and gateway of commit REV (default "
                        f"{baseline.ISSUE17_BASELINE}, the code issue 17 was filed against) under "
                        "that code's default server, in the same rounds (make bench-peers "
                        "sets this)")
    p.add_argument("--api-key", action="store_true",
                   help="the gateway checks an API key (from a key file) on every request, "
                        "and the load sends it: the cost of a keyed request path")
    p.add_argument("--client", choices=("auto", "wrk", "raw"), default="auto",
                   help="load generator: wrk, raw (bench/rawload.py: waits for every request "
                        "it started) or auto (wrk for nginx, raw for the paced streams)")
    args = p.parse_args(argv)
    if args.compare_servers:
        args.servers = ",".join(HTTP_SERVERS)
    unknown = set(server_list(args.servers)) - set(HTTP_SERVERS)
    if unknown:
        p.error(f"--servers: unknown {', '.join(sorted(unknown))} "
                f"(known: {', '.join(HTTP_SERVERS)})")
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 2.0, 1.0
        args.no_doc = args.no_doc or args.doc == DOC
    return args


def server_list(text: str) -> list[str]:
    return list(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))


def default_server(router_args: str) -> str:
    """The --http-server of the plain router: its flags', else the env's, else the default."""
    flags = shlex.split(router_args)
    chosen = [flags[i + 1] for i, flag in enumerate(flags[:-1]) if flag == "--http-server"]
    chosen += [flag.split("=", 1)[1] for flag in flags if flag.startswith("--http-server=")]
    return chosen[-1] if chosen else os.environ.get("NEBULA_HTTP_SERVER", DEFAULT_HTTP_SERVER)


# -- machine ---------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def version(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
            return (out.stdout + out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return "unknown"

    return {
        "cpus": str(os.cpu_count()), "cpu": cpu,
        "python": platform.python_version(), "kernel": platform.release(),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "wrk": version(["wrk", "--version"]), "nginx": version(["nginx", "-v"]),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


API_KEY_ENV = "BENCH_API_KEY"


# -- request path ----------------------------------------------------------------------------


def client_for(scenario: Scenario, choice: str) -> str:
    """``auto``: wrk for the instant nginx answers, the drained raw client for paced streams."""
    if choice != "auto":
        return choice
    return "raw" if scenario.model in PACED_STREAMS else "wrk"


def load_once(url: str, scenario: Scenario, duration_s: float, client: str,
              work_dir: Path, drain_s: float = 30.0) -> LoadResult:
    client = client_for(scenario, client)
    if client == "wrk":
        return run_wrk(url, scenario.body(), scenario.agent,
                       connections=scenario.connections, duration_s=duration_s,
                       threads=1 if scenario.connections == 1 else 2, work_dir=work_dir)
    return uvloop.run(drained_closed_loop(url, scenario.body(),
                                          connections=scenario.connections,
                                          duration_s=duration_s,
                                          headers={"User-Agent": scenario.agent,
                                                   **auth_headers()},
                                          drain_timeout_s=drain_s))


def auth_headers() -> dict[str, str]:
    """The bench key's header when ``--api-key`` set one (the other hops ignore it)."""
    key = os.environ.get(API_KEY_ENV)
    return {"Authorization": f"Bearer {key}"} if key else {}


def keyed_gateway_args(run_dir: Path) -> list[str]:
    """``--api-key``: a key file with one hashed key, which the load then sends."""
    secret = "nebula-bench-" + secrets.token_hex(8)
    os.environ[API_KEY_ENV] = secret  # wrk's Lua script and the raw client read it
    keys = run_dir / "bench-keys.txt"
    keys.write_text(f"{hashlib.sha256(secret.encode()).hexdigest()} bench-team\n")
    return ["--api-keys-file", str(keys)]


@dataclass(frozen=True)
class Hop:
    """One measured path: where each model's requests go and whose CPU they are charged."""

    path: str  # report path name: direct, router, gateway@granian, vllm-router, ...
    urls: dict[str, str]  # model -> chat completions URL (the models this path serves)
    pids: dict[str, int]  # "router"/"gateway" -> process group charged for that figure
    stream_model: str = ""  # model name a client sends for the streamed answer, if another
    client: str = ""  # the load generator under --client auto, if not the scenario's own
    drain_s: float = 30.0  # how long the drained client waits for what it started
    process: str = ""  # the bench process serving it, when not named after the path

    def client_for(self, choice: str) -> str:
        return self.client if self.client and choice == "auto" else choice

    def scenario_for(self, scenario: Scenario) -> Scenario:
        if scenario.stream and self.stream_model:
            return dataclasses.replace(scenario, model=self.stream_model)
        return scenario


def scenario_groups(scenarios: Sequence[Scenario]) -> list[list[Scenario]]:
    """The scenarios in the order they run, each in its group: the short paced streams run
    with the long ones, round by round and hop by hop, because the CPU per chunk is their
    difference and must not take in the machine's drift between minutes."""
    names = {s.name: s for s in scenarios}
    paired = PACED_C64 in names and PACED_SHORT_C64 in names
    groups = []
    for s in scenarios:
        if paired and s.name == PACED_SHORT_C64:
            continue
        groups.append([s, names[PACED_SHORT_C64]] if paired and s.name == PACED_C64 else [s])
    return groups


def run_request_path(bench: Bench, hops: Sequence[Hop], engines: dict[str, str],
                     scenarios: Sequence[Scenario], args: argparse.Namespace,
                     say: Callable[[str], None], default: str = "") -> list[report.Sample]:
    """Every group of scenarios: warm-up, then ``rounds`` x (every hop that serves it) back
    to back."""
    samples: list[report.Sample] = []
    for group in scenario_groups(scenarios):
        for scenario in group:
            # Warm-up opens the pools and runs every code path; at most 64 connections, so
            # that a 1,000-connection scenario does not pay its accept stall twice.
            warm = dataclasses.replace(scenario, connections=min(scenario.connections, 64))
            for h in hops:
                if scenario.model in h.urls:
                    load_once(h.urls[scenario.model], h.scenario_for(warm), args.warmup,
                              h.client_for(args.client), bench.run_dir, h.drain_s)
        for rnd in range(args.rounds):
            for h in hops:
                for scenario in group:
                    if scenario.model in h.urls:
                        sample = measure(bench, h, scenario, rnd, engines, args)
                        samples.append(sample)
                        say(sample_line(sample, default))
    return samples


def measure(bench: Bench, h: Hop, scenario: Scenario, rnd: int, engines: dict[str, str],
            args: argparse.Namespace) -> report.Sample:
    """One load run of ``scenario`` on hop ``h``, with the CPU its processes used."""
    procs = {**h.pids, "engine": bench.pid(engines[scenario.model])}
    before = {name: group_cpu_ticks(pid) for name, pid in procs.items()}
    box_before = machine_cpu_totals()
    result = load_once(h.urls[scenario.model], h.scenario_for(scenario), args.duration,
                       h.client_for(args.client), bench.run_dir, h.drain_s)
    box_after = machine_cpu_totals()
    after = {name: group_cpu_ticks(pid) for name, pid in procs.items()}
    # A hop without a process for a figure (LiteLLM has no router) costs it 0.
    cpu = {name: 0.0 for name in report.NEBULA_PROCS}
    cpu.update({name: ticks_to_seconds(after[name] - before[name], CLK_TCK)
                for name in procs})
    kinds = result.detail.get("errors", {}) if result.errors else {}
    return report.Sample(scenario.name, h.path, rnd, result.requests, result.duration_s,
                         result.p50_ms, result.p99_ms, result.errors, cpu,
                         busy_share(box_before, box_after), kinds)


def sample_line(sample: report.Sample, default: str) -> str:
    cpu = sample.cpu_s
    return (f"  {sample.scenario:16} {report.path_label(sample.path, default):26} "
            f"round {sample.round + 1}: "
            f"{sample.rps:8.0f} req/s  p50 {sample.p50_ms:8.2f} ms  "
            f"p99 {sample.p99_ms:8.2f} ms  errors {sample.errors}  "
            f"cpu router {cpu['router']:.2f}s gateway {cpu['gateway']:.2f}s "
            f"engine {cpu['engine']:.2f}s  box busy {sample.machine_busy * 100:.0f}%"
            + (f"  error kinds {sample.error_kinds}" if sample.error_kinds else ""))


def check_paths(hops: Sequence[Hop], say: Callable[[str], None]) -> None:
    """One request per path and model (and one streamed one on the nginx stand-in) before
    measuring: fail loudly, not with a table of 0s."""
    for h in hops:
        for model, url in h.urls.items():
            status, body = http_post_json(url, {"model": model, "max_tokens": 4, "messages": [
                {"role": "user", "content": "hello"}]}, timeout=30, headers=auth_headers())
            if status != 200:
                raise RuntimeError(f"{h.path} answered {status} for {model}: {body[:500]!r}")
        if MODEL in h.urls:
            streamed = h.scenario_for(Scenario("check", MODEL, True, 1))
            status, body = http_post_json(h.urls[MODEL], json.loads(streamed.body()),
                                          timeout=30, headers={"User-Agent": streamed.agent,
                                                               **auth_headers()})
            if status != 200 or not body.rstrip().endswith(b"data: [DONE]"):
                raise RuntimeError(f"{h.path} streamed {status}: {body[-500:]!r}")
    say(f"  every path answers 200 ({', '.join(h.path for h in hops)})")


def start_hops(bench: Bench, args: argparse.Namespace, gateway_flags: Sequence[str],
               standin: Replica, paced: dict[str, Replica], say: Callable[[str], None]
               ) -> list[Hop]:
    """direct, router and gateway+router (the configured server, already running), the same
    under each other ``--servers`` value, a byte relay before each paced stand-in (the
    per-chunk floor) and the peers with ``--peers``.

    Each extra process is named after its path (``router@granian``, ``litellm``), which
    :func:`stop_extra_hops` relies on.
    """
    chat = "/v1/chat/completions"
    models = (MODEL, *paced)
    router, gateway = bench.pid("router"), bench.pid("gateway")
    direct = Hop("direct", {MODEL: standin.base_url + chat,
                            **{m: r.base_url + chat for m, r in paced.items()}},
                 {"router": router, "gateway": gateway})
    routers = [Hop("router", {m: bench.router_url + chat for m in models}, {"router": router})]
    gateways = [Hop("gateway", {m: bench.gateway_url + chat for m in models},
                    {"router": router, "gateway": gateway})]
    default = default_server(args.router_args)
    for server in server_list(args.servers):
        if server == default:
            continue
        say(f"  starting router and gateway under --http-server {server} ...")
        r_name = report.server_path("router", server)
        g_name = report.server_path("gateway", server)
        flags = ["--http-server", server]
        r_url = bench.start_router([*shlex.split(args.router_args), *flags], name=r_name)
        for m in models:
            bench.wait_routable(m, 1, router_url=r_url)
        g_url = bench.start_gateway([*gateway_flags, *flags], name=g_name, router_url=r_url)
        r_pid, g_pid = bench.pid(r_name), bench.pid(g_name)
        routers.append(Hop(r_name, {m: r_url + chat for m in models}, {"router": r_pid}))
        gateways.append(Hop(g_name, {m: g_url + chat for m in models},
                            {"router": r_pid, "gateway": g_pid}))
    if args.baseline:
        say(f"  starting the router and gateway of {args.baseline} (the baseline) ...")
        r_hop, g_hop = start_baseline(bench, args.baseline, gateway_flags, models)
        routers.append(r_hop)
        gateways.append(g_hop)
    # The floor of the per-chunk table: a byte relay before each paced stand-in.
    for model, replica in paced.items():
        name = f"{report.RELAY}-{model}"
        url = bench.start_relay(name, replica)
        routers.append(Hop(report.RELAY, {model: url + chat}, {"router": bench.pid(name)},
                           process=name))
    if args.peers:
        say("  starting vllm-router (on nginx and on each pacer) and LiteLLM's proxy ...")
        v_url = peers.start_vllm_router(bench, standin.base_url)
        routers.append(Hop(peers.VLLM_ROUTER, {MODEL: v_url + chat},
                           {"router": bench.pid(peers.VLLM_ROUTER)}))
        # vllm-router routes by worker, not by model: one more fronts each paced stand-in
        for model, replica in paced.items():
            name = f"{peers.VLLM_ROUTER}-{model}"
            url = peers.start_vllm_router(bench, replica.base_url, name=name)
            routers.append(Hop(peers.VLLM_ROUTER, {model: url + chat},
                               {"router": bench.pid(name)}, process=name))
        l_url = peers.start_litellm(bench, standin.base_url + "/v1")
        # LiteLLM keeps serving what a client gave up on, and at 64 streams not one ends
        # inside a 5 s wrk window: the drained client counts every request it started
        # (64 streams took 27-31 s on a busy 2-core box, hence the longer drain).
        gateways.append(Hop(peers.LITELLM, {MODEL: l_url + chat},
                            {"gateway": bench.pid(peers.LITELLM)},
                            stream_model=peers.LITELLM_STREAM_MODEL, client="raw",
                            drain_s=120.0))
    return [direct, *routers, *gateways]


def start_baseline(bench: Bench, rev: str, gateway_flags: Sequence[str],
                   models: Sequence[str]) -> tuple[Hop, Hop]:
    """Commit ``rev``'s router and gateway (:mod:`bench.baseline`), under the HTTP server
    that code chose by default (Hypercorn at issue 17's baseline); the bench's own router
    flags are not passed (that code may not know them)."""
    chat = "/v1/chat/completions"
    env = baseline.export(rev, bench.run_dir / "baseline")
    r_name = report.server_path("router", report.BASELINE)
    g_name = report.server_path("gateway", report.BASELINE)
    env["NEBULA_HTTP_SERVER"] = ""  # the old code's own default, not this shell's choice
    r_url = bench.start_router([], name=r_name, env=env)
    for m in models:
        bench.wait_routable(m, 1, router_url=r_url)
    g_url = bench.start_gateway(gateway_flags, name=g_name, router_url=r_url, env=env)
    r_pid, g_pid = bench.pid(r_name), bench.pid(g_name)
    return (Hop(r_name, {m: r_url + chat for m in models}, {"router": r_pid}),
            Hop(g_name, {m: g_url + chat for m in models}, {"router": r_pid, "gateway": g_pid}))


def start_paced(bench: Bench, engine: str) -> tuple[dict[str, Replica], dict[str, str]]:
    """The two paced stand-ins (64 and 16 chunks), and each model's engine process name."""
    paced: dict[str, Replica] = {}
    engines = {MODEL: "nginx"}
    for model, chunks in PACED_STREAMS.items():
        name = f"{engine}-{model}"
        if engine == "sim":
            paced[model] = bench.start_sim(name, model, "r0", [
                "--itl-ms", "10", "--output-tokens", str(chunks), "--ttft-ms", "0",
                "--prefix-cache-blocks", "0"])
        else:
            paced[model] = bench.start_pacer(name, model, interval_ms=10, chunks=chunks)
        engines[model] = name
    return paced, engines


def stop_extra_hops(bench: Bench, hops: Sequence[Hop]) -> None:
    """Stop every process but the default router and gateway: the rest of the run is theirs."""
    for h in hops:
        proc = (bench.cluster.procs.get(h.process or h.path) if h.path not in report.PATHS
                else None)
        if proc is not None and proc.alive():
            proc.stop(grace=5)


# -- routing quality -------------------------------------------------------------------------


def run_routing(bench: Bench, workload: Workload, cache_blocks: int, prefill_ms: float,
                router_args: str, say: Callable[[str], None]) -> list[PolicyResult]:
    sim_args = ["--ttft-ms", "2", "--itl-ms", "1", "--output-tokens", str(workload.max_tokens),
                "--prefix-cache-blocks", str(cache_blocks),
                "--prefill-ms-per-token", str(prefill_ms)]
    replicas = [bench.start_sim(f"sim-prefix-{i}", PREFIX_MODEL, f"r{i}", sim_args)
                for i in range(4)]
    bench.register(PREFIX_MODEL, "sim", replicas)
    results = []
    for policy in POLICIES:
        url = bench.start_router([*shlex.split(router_args), "--policy", policy])
        bench.wait_routable(PREFIX_MODEL, len(replicas))
        for r in replicas:
            http_post_json(f"{r.base_url}/sim/reset", {})
        timings, stats = asyncio.run(_policy_run(bench, url, replicas, workload))
        status, metrics_text = http_get(f"{url}/metrics")
        decisions = parse_decisions(metrics_text.decode()) if status == 200 else {}
        result = summarize(policy, timings, stats, decisions)
        results.append(result)
        say(f"  {policy:12} TTFT mean {result.ttft_ms['mean']:7.1f} ms  "
            f"p95 {result.ttft_ms['p95']:7.1f} ms  cache hits {result.hit_rate * 100:5.1f}%  "
            f"requests {result.requests}  errors {result.errors}  per replica "
            + " ".join(f"{k}={v['requests']}" for k, v in result.per_replica.items())
            + "  decisions " + _decisions_text(result.decisions))
    return results


async def _policy_run(bench: Bench, url: str, replicas: Sequence[Replica], workload: Workload
                      ) -> tuple[list[StreamTiming], dict[str, dict[str, Any]]]:
    import aiohttp

    publisher = StatsPublisher(bench, PREFIX_MODEL, replicas)
    publisher.start()
    try:
        timings = await run_workload(url, PREFIX_MODEL, workload)
    finally:
        await publisher.stop()
    stats: dict[str, dict[str, Any]] = {}
    async with aiohttp.ClientSession() as http:
        for r in replicas:
            async with http.get(f"{r.base_url}/sim/stats") as resp:
                stats[r.replica_id] = await resp.json()
    return timings, stats


# -- output ----------------------------------------------------------------------------------

ROUTING_HEADERS = ("policy", "TTFT mean ms", "TTFT p50 ms", "TTFT p95 ms", "cache hit rate",
                   "requests", "errors", "per replica", "router decisions")


def _decisions_text(decisions: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(decisions.items())) or "-"


def routing_rows(results: Sequence[PolicyResult]) -> list[list[str]]:
    return [[r.policy, report.fmt(r.ttft_ms["mean"]), report.fmt(r.ttft_ms["p50"]),
             report.fmt(r.ttft_ms["p95"]), report.fmt_pct(r.hit_rate), str(r.requests),
             str(r.errors), "/".join(str(v["requests"]) for v in r.per_replica.values()),
             _decisions_text(r.decisions)]
            for r in results]


# Why each target can miss and what would close it; shown in the doc for misses only.
# The numbers behind these are in bench/findings.md (copied into the doc).
MISS_NOTES = {
    "added_p50": (
        "Each hop parses HTTP in Python (uvicorn's httptools protocol, the ASGI messages), "
        "runs the handler and makes two to three syscalls per request; on 2 cores shared with "
        "the client and the stand-in the hops also wait for a core (see `box busy`)."),
    "added_p99": (
        "The tail on a 2-core box is mostly waiting for a core while four busy processes "
        "share two (see `box busy` and `spread`). Re-run on a quiet machine before reading "
        "much into it."),
    "router_per_cpu": (
        "About two thirds of a request's CPU is the interpreter and a fifth the kernel "
        "(perf); the Python is spread over uvicorn's protocol, the HTTP client, the metrics "
        "and the routing, none a tenth of the hop (findings: 'Per request, the rest of the "
        "Python')."),
    "both_per_cpu": (
        "Two hops, each with its server, client and access log; the gateway also checks "
        "the body and the key, and counts usage (findings: 'Per request, the rest of the "
        "Python')."),
    "paced_p99": (
        "1,000 streams x 100 chunks/s is 100,000 chunks/s through each hop, one wake-up, one "
        "read and one write per chunk; the box is already 75 % busy on the direct path "
        "(client and stand-in). The accept queue no longer adds seconds (our own accept "
        "loop, in the findings below); what is left needs cores this machine does not "
        "have: the byte relay, which parses nothing, misses this bound too (its row at "
        "c1000). On a machine with spare cores: `--workers N` on one SO_REUSEPORT port."),
    "chunk_cost": (
        "Per chunk each hop still has one read and one write, and a chunk that needs only "
        "sending wakes no task (findings: 'No task per chunk'); what the read and the write "
        "cost alone is the byte relay's row (a protocol that parses nothing), on this 2-core "
        "VM more than half the bound. What each hop spends above it (`us over the floor`) is "
        "the parser's callback, the frame check, the stream record and the chunk's framing."),
    "prefix_ttft": (
        "`prefix` leaves the preferred replica once it carries more than (1 + bound-load) x "
        "the average in-flight load; every spill is a cold prefill. `--bound-load 1.0` "
        "measured 4.3x (finding 5)."),
}

FINDINGS = Path(__file__).resolve().parent / "findings.md"


def render_doc(info: dict[str, str], args: argparse.Namespace, request_text: str,
               routing_text: str, targets: Sequence[report.TargetResult],
               workload: Workload, cache_blocks: int, prefill_ms: float,
               ratio_text: str = "", chunk_text: str = "") -> str:
    extra_args = "".join(f", {name} flags `{value}`" for name, value in (
        ("router", args.router_args), ("gateway", args.gateway_args)) if value)
    paced_note = (
        "this run used `nebula-sim --itl-ms 10 --output-tokens 64 --ttft-ms 0` instead "
        "(`--paced-engine sim`): a Quart app whose per-chunk cost saturates a small box at "
        "1,000 streams, so the direct baseline is itself slow"
        if args.paced_engine == "sim" else
        "`--paced-engine sim` uses `nebula-sim --itl-ms 10` instead; a Quart app costs tens "
        "of microseconds per chunk, so at 1,000 streams on 2 cores the sim alone saturates "
        "the machine and the direct baseline stops being one")
    target_rows = [[t.target, t.measured, t.verdict] for t in targets]
    side_by_side = report.side_by_side_text(
        server_list(args.servers), default_server(args.router_args),
        peers.pinned_versions(peers.LOCK.read_text()) if args.peers else {}, ratio_text)
    findings = FINDINGS.read_text() if FINDINGS.exists() else ""
    misses = [t for t in targets if t.passed is False]
    notes = []
    for t in misses:
        note = MISS_NOTES.get(t.key.split(":", 1)[0].split("@", 1)[0], "")
        notes.append(f"- **{t.target}** — measured {t.measured}. {note}")
    return f"""# Benchmarks

The request path (client → gateway → router → engine) measured against the engine
alone, and the routing policies compared on a prefix-cache workload. This page is
written by `make bench` (`python -m bench.run`); the numbers below are from the last
full run.

## Machine

- {info['cpus']} CPUs: {info['cpu']}; kernel {info['kernel']}; load average at start
  {info['load']}
- Python {info['python']}; {info['wrk']}; {info['nginx']}
- run: {info['date']}, {args.rounds} rounds x {args.duration:g} s per path and scenario,
  {args.warmup:g} s warm-up per path, client `{args.client}`, paced stand-in
  `{args.paced_engine}`{extra_args}
- HTTP servers: {", ".join(f"`{s}`" for s in server_list(args.servers))
                 or f"`{default_server(args.router_args)}` (the configured one)"}; peers:
  {"vllm-router and LiteLLM" if args.peers else "none"}

## How to reproduce

```
make bench                                  # installs wrk + nginx-light (Debian), then runs
make bench-peers                            # + every --http-server, vllm-router and LiteLLM
.venv/bin/python -m bench.run --rounds 5 --duration 10
.venv/bin/python -m bench.run --quick       # smoke run, does not touch this page
```

Everything runs on loopback ports picked at start, under a temporary directory, and is
stopped at the end (`--keep` keeps the logs).

## Request path

Median of the rounds, with (min..max) across rounds for req/s. `+p50`/`+p99` are the
extra latency against the direct run of the same round (runs are interleaved: direct,
router, gateway+router, direct, ...), median over rounds. `req/CPU-s` is requests served
divided by the user+system CPU time (`/proc/<pid>/stat` utime+stime, every thread and
every process of the service's process group) that the process used during the run;
`both` divides by the router's and the gateway's CPU time together. It holds even when
the machine is noisy, because waiting for a core costs no CPU time. `spread` is
(max-min)/median of req/s across rounds: how much the machine's noise moved the
figures. `engine cores` is the stand-in's CPU time per second of run (1.00 = a whole
core) and `box busy` the share of all CPUs busy during the run (`/proc/stat`, every
process on the machine, including other people's work): a run at 100 % says the
latency figures measure waiting for a core.

```
{request_text}
```

Scenarios:
- `chat cN`: non-streamed chat completion, N connections (closed loop); nginx answers a
  fixed body from memory (`return 200 '...'`).
- `stream64 cN`: a streamed chat completion of 64 content chunks plus a usage chunk and
  `[DONE]` (12.7 kB, as vLLM frames it); nginx answers it from a file, all at once.
- `paced10ms cN`: 64 chunks 10 ms apart; latency is time to last byte (the ideal is
  630 ms). nginx cannot space the chunks of one response, so this stand-in is
  `bench/pacer.py`, a raw uvloop protocol that writes every open stream's next chunk
  from one shared 10 ms timer ({paced_note}).
- `paced10ms/16 cN`: the same with 16 chunks, from a second stand-in; it is there for the
  CPU per forwarded chunk below.

nginx picks the streamed or the non-streamed answer by the `User-Agent` header
(`nebula-bench-stream`), because that header crosses both hops unchanged; the body is
the same OpenAI request in both cases (`stream` true or false). A non-2xx answer counts
as an error, not as a request.

Clients: the `chat` and `stream64` rows use wrk (Lua script `bench/lua/chat.lua`); its
latency is from writing the request to the end of the response, i.e. time to last byte.
The `paced10ms` rows use `bench/rawload.py`, a closed loop on raw uvloop protocols that
stops sending when the window closes and then waits for every request it started. wrk
only records requests that complete inside its window; with answers of 0.6 s and more at
1,000 connections that leaves out a third or more of the requests, the slowest ones by
construction, so its percentiles would describe the survivors. req/s of the paced rows
is every completed request over the whole run, drain included.

### CPU per forwarded chunk

Each process's CPU per request in `{PACED_C64}` less its CPU per request in
`{PACED_SHORT_C64}`, over the {PACED_CHUNKS - PACED_SHORT_CHUNKS} chunks between them, round
by round (in each round the two ran back to back on each path, so both saw the same
minute of the machine): what a request costs once (its head, the
routing, the access line) is in both and cancels, and what is left is the cost of one
chunk through that hop: one wake-up, one read and one write.
`/ baseline's` is against the same process of the code issue 17 was filed against
(`--baseline`, commit `{args.baseline or baseline.ISSUE17_BASELINE}`: Quart on Hypercorn,
aiohttp to the upstream; `bench/baseline.py` runs it from a `git archive` export in the same
rounds): the
"before" of the issue's "cut at least in half". `/ hypercorn's` is against this code under
`--http-server hypercorn` in this run: every later change to the proxy code but the server,
so the harder bound of the two.
`byte relay (floor)` is `bench/relay.py` before each paced stand-in, measured the same way
in the same rounds: a uvloop protocol that hands every read to the other side's write and
parses nothing, so its cost is the read, the write and the loop turn that any Python proxy
on uvloop pays per chunk on this machine; `us over the floor` is what each process spends
per chunk beyond it.

```
{chunk_text or "(not measured: this run had no paced scenarios)"}
```

## Side by side: the HTTP servers and the peers

{side_by_side}

## Routing quality

4 `nebula-sim` replicas with the prefix-cache model (`--prefix-cache-blocks
{cache_blocks}` blocks of 16 tokens each, `--prefill-ms-per-token {prefill_ms:g}`, so an
uncached {workload.system_tokens}-token system prompt costs {workload.system_tokens *
prefill_ms:.0f} ms before the first token). {workload.conversations} conversations x
{workload.turns} turns, {workload.prompts} distinct system prompts of about
{workload.system_tokens} tokens; each turn sends the whole history plus a new user
message; conversations run concurrently. The router is restarted with each `--policy`
and the engines' caches are reset in between. TTFT is measured by the client (time to
the first streamed content chunk, through the router); the hit rate is the engines' own
(`prefix_cache.hits / queries` in prompt tokens, from `/sim/stats`, the same counters as
`vllm:prefix_cache_hits_total / vllm:prefix_cache_queries_total`). Load stats are
published to etcd every 0.5 s from the sims, as the node agent does.

```
{routing_text}
```

## Targets (issue 9)

{report.markdown_table(("target", "measured", "verdict"), target_rows)}

{"## Misses: why, and what would close them" if misses else ""}

{chr(10).join(notes)}

{findings}"""


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def say(msg: str) -> None:
        print(msg, flush=True)

    wanted = {s.strip() for s in args.scenarios.split(",") if s.strip()}
    scenarios = [s for s in SCENARIOS if not wanted or s.name in wanted]
    workload = (Workload(conversations=8, turns=3, prompts=4) if args.quick else Workload())
    cache_blocks, prefill_ms = args.cache_blocks, args.prefill_ms
    # Rows name the default server only when others are beside it.
    shown_server = default_server(args.router_args) if args.servers else ""
    info = machine()
    say(f"nebula bench: {info['cpus']} CPUs ({info['cpu']}), Python {info['python']}, "
        f"load {info['load']}")
    run_dir = Path(tempfile.mkdtemp(prefix="nebula-bench-"))
    bench = Bench(run_dir)
    samples: list[report.Sample] = []
    routing: list[PolicyResult] = []
    started = time.monotonic()
    try:
        say(f"starting etcd, nginx, {args.paced_engine}, router, gateway under {run_dir} ...")
        bench.start_etcd()
        standin = bench.start_nginx(MODEL)
        paced, engines = start_paced(bench, args.paced_engine)
        bench.register(MODEL, "vllm", [standin])
        for model, replica in paced.items():
            bench.register(model, replica.engine, [replica])
        bench.start_router(shlex.split(args.router_args))
        for model in (MODEL, *paced):
            bench.wait_routable(model, 1)
        gateway_flags = shlex.split(args.gateway_args) + (
            keyed_gateway_args(run_dir) if args.api_key else [])
        bench.start_gateway(gateway_flags)
        hops = start_hops(bench, args, gateway_flags, standin, paced, say)
        check_paths(hops, say)
        if scenarios:
            say("request path (wrk):")
            samples = run_request_path(bench, hops, engines, scenarios, args, say,
                                       shown_server)
        stop_extra_hops(bench, hops)
        if not args.skip_routing:
            say("routing quality (4 sims, multi-turn conversations):")
            bench.cluster.procs["gateway"].stop()
            routing = run_routing(bench, workload, cache_blocks, prefill_ms, args.router_args,
                                  say)
    finally:
        bench.close()
        if args.keep:
            say(f"logs kept in {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)

    rows = report.aggregate(samples)
    request_text = report.text_table(report.REQUEST_HEADERS,
                                     report.request_table_rows(rows, shown_server))
    ratios = report.per_cpu_ratios(samples, report.peer_pairs(s.path for s in samples))
    ratio_text = (report.text_table(report.RATIO_HEADERS,
                                    report.ratio_table_rows(ratios, shown_server))
                  if ratios else "")
    routing_text = report.text_table(ROUTING_HEADERS, routing_rows(routing))
    targets = report.evaluate_targets(rows, {r.policy: r.ttft_ms["mean"] for r in routing},
                                      chat=CHAT_C1, stream=STREAM_C1, paced_wide=PACED_C1000)
    chunk_costs = report.per_chunk_costs(samples, PACED_C64, PACED_SHORT_C64,
                                         PACED_CHUNKS - PACED_SHORT_CHUNKS)
    chunk_text = (report.text_table(report.CHUNK_HEADERS,
                                    report.chunk_table_rows(chunk_costs, shown_server))
                  if chunk_costs else "")
    targets += report.chunk_targets(chunk_costs)
    say("")
    say(request_text)
    if ratio_text:
        say("")
        say(ratio_text)
    if chunk_text:
        say("")
        say(chunk_text)
    say("")
    say(routing_text)
    say("")
    say(report.text_table(("target", "measured", "verdict"),
                          [[t.target, t.measured, t.verdict] for t in targets]))
    say(f"\nbench took {time.monotonic() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({
            "machine": info, "samples": [asdict(s) for s in samples],
            "routing": [asdict(r) for r in routing]}, indent=1, default=_nan_safe))
    if not args.no_doc:
        args.doc.parent.mkdir(parents=True, exist_ok=True)
        args.doc.write_text(render_doc(info, args, request_text, routing_text, targets,
                                       workload, cache_blocks, prefill_ms, ratio_text,
                                       chunk_text))
        say(f"wrote {args.doc}")
    return 0


def _nan_safe(value: object) -> object:
    return None if isinstance(value, float) and math.isnan(value) else str(value)


if __name__ == "__main__":
    sys.exit(main())
