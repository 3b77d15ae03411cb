"""``python -m bench.overload``: the router's admission queue on vs off under 2x overload.

Starts etcd, 2 ``nebula-sim`` replicas of capacity 8 each (``--max-concurrency 8``: the rest
queue inside the engine), publishes their stats as a node would, and two routers on the same
replicas: one without a queue (``--max-running-per-replica 0``), one with
``--max-running-per-replica 8``. Each router in turn
gets the same seeded, bounded, open-loop load (Poisson arrivals) at ``--overload`` times the
replicas' capacity from 3 tenants, one sending 10x what each of the others sends:

- ``light-i``: 1 share, class ``interactive``;
- ``light-d``: 1 share, class ``default`` (the heavy tenant's class: fair share shows here);
- ``heavy``: 10 shares, class ``default``.

Prints a markdown table per run (p50/p99 TTFT, goodput, shed requests per tenant) and writes
the raw numbers as JSON. The machine it runs on matters: say which in the doc.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from .harness import Bench, StatsPublisher
from .load import StreamTiming, stream_request
from .report import markdown_table
from .stats import percentile

MODEL = "bench-overload"


@dataclass(frozen=True)
class Tenant:
    name: str
    share: int
    priority: str


TENANTS = (Tenant("light-i", 1, "interactive"), Tenant("light-d", 1, "default"),
           Tenant("heavy", 10, "default"))


@dataclass(frozen=True)
class Arrival:
    at: float
    tenant: Tenant


def arrivals(rate: float, duration_s: float, tenants: Sequence[Tenant], seed: int
             ) -> list[Arrival]:
    """Poisson arrivals at ``rate``/s for ``duration_s``, each tenant by its share (pure)."""
    rng = random.Random(seed)
    weights = [t.share for t in tenants]
    out: list[Arrival] = []
    at = 0.0
    while True:
        at += rng.expovariate(rate)
        if at >= duration_s:
            return out
        out.append(Arrival(at, rng.choices(list(tenants), weights)[0]))


@dataclass
class TenantResult:
    sent: int = 0
    ok: int = 0
    shed: dict[str, int] = field(default_factory=dict)
    """By status: 429 queue_full, 503 queue_timeout."""
    errors: int = 0
    ttft_s: list[float] = field(default_factory=list)

    def add(self, t: StreamTiming) -> None:
        self.sent += 1
        if t.status == 200 and not t.error:
            self.ok += 1
            if t.ttft_s == t.ttft_s:
                self.ttft_s.append(t.ttft_s)
        elif t.status in (429, 503):
            self.shed[str(t.status)] = self.shed.get(str(t.status), 0) + 1
        else:
            self.errors += 1


def summarize(results: dict[str, TenantResult], duration_s: float) -> list[list[str]]:
    """Table rows: tenant, sent, ok, goodput/s, p50 and p99 TTFT (ms), shed, errors (pure)."""
    rows = []
    for name, r in results.items():
        p50, p99 = (percentile(r.ttft_s, p) * 1000 for p in (50, 99))
        shed = ", ".join(f"{n}x{s}" for s, n in sorted(r.shed.items())) or "0"
        rows.append([name, str(r.sent), str(r.ok), f"{r.ok / duration_s:.2f}",
                     "nan" if math.isnan(p50) else f"{p50:.0f}",
                     "nan" if math.isnan(p99) else f"{p99:.0f}", shed, str(r.errors)])
    return rows


HEADERS = ["tenant", "sent", "ok", "goodput/s", "p50 TTFT ms", "p99 TTFT ms", "shed (status)",
           "errors"]


async def drive(url: str, plan: list[Arrival], max_outstanding: int, timeout_s: float
                ) -> dict[str, TenantResult]:
    """Send ``plan`` on time (bounded: at most ``max_outstanding`` at once; arrivals over the
    bound are counted as errors, not queued in the driver)."""
    results = {t.name: TenantResult() for t in TENANTS}
    sem = asyncio.Semaphore(max_outstanding)
    body = json.dumps({"model": MODEL, "stream": True, "max_tokens": 16,
                       "messages": [{"role": "user", "content": "overload"}]}).encode()
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(
            total=timeout_s)) as http:
        async def one(a: Arrival) -> None:
            try:
                results[a.tenant.name].add(await stream_request(http, url, body, {
                    "x-nebula-tenant": a.tenant.name, "x-nebula-priority": a.tenant.priority}))
            finally:
                sem.release()

        tasks = []
        start = time.perf_counter()
        for a in plan:
            delay = a.at - (time.perf_counter() - start)
            if delay > 0:
                await asyncio.sleep(delay)
            if sem.locked():
                results[a.tenant.name].add(StreamTiming(0, math.nan, 0.0, "driver bound"))
                continue
            await sem.acquire()
            tasks.append(asyncio.create_task(one(a)))
        await asyncio.gather(*tasks)
    return results


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.overload", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load per run")
    p.add_argument("--overload", type=float, default=2.0, help="offered load / capacity")
    p.add_argument("--capacity", type=int, default=8, help="concurrent sequences per replica")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--itl-ms", type=float, default=60.0)
    p.add_argument("--ttft-ms", type=float, default=40.0)
    p.add_argument("--queue-timeout", default="10,10,10",
                   help="the queued router's --queue-timeout")
    p.add_argument("--seed", type=int, default=14)
    p.add_argument("--json", type=Path, default=None, help="write the raw numbers here")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    tokens = 16
    service_s = (args.ttft_ms + args.itl_ms * (tokens - 1)) / 1000
    capacity_rps = args.replicas * args.capacity / service_s
    rate = args.overload * capacity_rps
    plan = arrivals(rate, args.duration, TENANTS, args.seed)
    run_dir = Path(tempfile.mkdtemp(prefix="nebula-overload-"))
    bench = Bench(run_dir)
    out: dict[str, Any] = {"rate_rps": rate, "capacity_rps": capacity_rps,
                           "duration_s": args.duration, "requests": len(plan), "runs": {}}
    print(f"capacity {capacity_rps:.1f} req/s, offered {rate:.1f} req/s for "
          f"{args.duration:g}s per run ({len(plan)} requests); logs under {run_dir}",
          file=sys.stderr)
    try:
        bench.start_etcd()
        sims = [bench.start_sim(f"sim-{i}", MODEL, f"r{i}", [
            "--max-concurrency", str(args.capacity), "--itl-ms", str(args.itl_ms),
            "--ttft-ms", str(args.ttft_ms), "--output-tokens", str(tokens)])
            for i in range(args.replicas)]
        bench.register(MODEL, "sim", sims)
        routers = {
            "queue off": bench.cluster.start_router(
                "router-off", args=["--max-running-per-replica", "0"])[1],
            "queue on": bench.cluster.start_router("router-on", args=[
                "--max-running-per-replica", str(args.capacity),
                "--queue-timeout", args.queue_timeout])[1],
        }

        async def run_all() -> None:
            publisher = StatsPublisher(bench, MODEL, sims, interval_s=0.5)
            publisher.start()
            try:
                for label, url in routers.items():
                    bench.router_url = url
                    bench.wait_routable(MODEL, args.replicas)
                    results = await drive(f"{url}/v1/chat/completions", plan,
                                          max_outstanding=2000, timeout_s=180)
                    rows = summarize(results, args.duration)
                    out["runs"][label] = {"rows": rows}
                    print(f"\n{label}\n\n{markdown_table(HEADERS, rows)}")
                    await asyncio.sleep(2)  # the engines' queues drain between runs
            finally:
                await publisher.stop()

        asyncio.run(run_all())
    finally:
        bench.close()
        shutil.rmtree(run_dir, ignore_errors=True)
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
