"""What a key with token limits costs the gateway: requests per CPU-second, paired rounds.

One etcd, the nginx stand-in engine, one router, and one gateway per configuration, all
up at once; the rounds alternate between the gateways (open, keyed, open, keyed, ...) so
every configuration sees the same machine. A round is a wrk run of tiny chat requests;
its figure is the requests served divided by the gateway's user+system CPU
(``/proc``, its whole process group). ``--gateway NAME=PYTHONPATH`` runs a gateway from
another copy of the code (e.g. ``git archive`` of the previous commit) for a before/after.

    python -m bench.tenancy_cost --rounds 4 --duration 5

``--state-path`` measures the state path alone instead, in this process: CPU per request
of reserve, a 1 ms turn and settle, 16 at once, on a real redis-server (run it with
``PYTHONPATH=<the other copy>`` for a before/after).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .harness import Bench
from .load import run_wrk
from .run import API_KEY_ENV
from .stats import group_cpu_ticks, per_cpu_second, ticks_to_seconds

MODEL = "bench-model"
BODY = (b'{"model": "bench-model", "max_tokens": 4, '
        b'"messages": [{"role": "user", "content": "Hi"}]}')
SECRET = "nebula-bench-tenancy-key"
LIMITS = "tpm=1000000000 budget=1000000000000/day"
"""Never reached: every request reserves and settles, none is refused."""


@dataclass
class Config:
    name: str
    args: list[str]
    pythonpath: str = ""
    keyed: bool = False
    figures: list[float] = field(default_factory=list)


def state_path_cpu(url: str, requests: int = 4000, parallel: int = 16) -> float:
    """Microseconds of this process' CPU per request through the Redis state (uvloop)."""
    import asyncio
    import time

    import uvloop

    from nebula_gateway.budget import Counter
    from nebula_gateway.state import ResponseLimits, open_state

    async def run() -> float:
        state = open_state(url, None, ResponseLimits(1, 1 << 20, 1 << 20, 60.0))
        ends = time.time() + 3600
        counters = (Counter("tpm", "k" * 64 + ":tpm:m1", 10**12, ends),
                    Counter("budget", "k" * 64 + ":budget:d1", 10**12, ends, "day"))

        async def worker(w: int, n: int) -> None:
            for i in range(n):
                now = time.time()
                assert await state.reserve(f"{w}-{i}", counters, 1030, now, now + 60) is None
                await asyncio.sleep(0.001)  # the request, upstream
                await state.settle(f"{w}-{i}", counters, 12, time.time())

        await asyncio.gather(*(worker(-w, 200) for w in range(1, 5)))  # warm up
        start = time.process_time()
        await asyncio.gather(*(worker(w, requests // parallel) for w in range(parallel)))
        cpu = time.process_time() - start
        await state.close()
        return cpu / requests * 1e6

    return uvloop.run(run())


def configs(run_dir: Path, redis_url: str, extra: list[str]) -> list[Config]:
    keys = run_dir / "keys.txt"
    keys.write_text(f"{hashlib.sha256(SECRET.encode()).hexdigest()} bench-team {LIMITS}\n")
    out = [Config("open", []),
           Config("redis-budget", ["--api-keys-file", str(keys), "--state-url", redis_url],
                  keyed=True)]
    for spec in extra:  # NAME=PYTHONPATH: the keyed Redis gateway from another copy
        name, _, path = spec.partition("=")
        out.append(Config(name, ["--api-keys-file", str(keys), "--state-url", redis_url],
                          pythonpath=path, keyed=True))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--gateway", action="append", default=[], metavar="NAME=PYTHONPATH")
    p.add_argument("--gateway-args", default="--http-server uvicorn",
                   help="flags for every gateway (the same HTTP server for old and new code)")
    p.add_argument("--state-path", action="store_true",
                   help="CPU per request of the state path alone, in this process")
    args = p.parse_args(argv)
    from tests.support.redis import RedisServer  # (the tests' real redis-server helper)

    if args.state_path:
        with tempfile.TemporaryDirectory(prefix="nebula-state-path-") as tmp:
            server = RedisServer(Path(tmp)).start()
            try:
                print(f"{state_path_cpu(server.url):.0f} us of CPU per request")
            finally:
                server.stop()
        return 0

    with tempfile.TemporaryDirectory(prefix="nebula-tenancy-cost-") as tmp:
        run_dir = Path(tmp)
        bench = Bench(run_dir)
        redis = RedisServer(run_dir / "redis")
        try:
            bench.start_etcd()
            redis.start()
            replica = bench.start_nginx(MODEL)
            bench.register(MODEL, "vllm", [replica])
            bench.start_router()
            bench.wait_routable(MODEL, 1)
            urls: dict[str, str] = {}
            limits_off = ["--anonymous-rpm", "0", "--anonymous-concurrency", "0",
                          "--access-log", "off"]
            cfgs = configs(run_dir, redis.url, args.gateway)
            for c in cfgs:
                env = {"PYTHONPATH": c.pythonpath + os.pathsep + os.environ.get(
                    "PYTHONPATH", "")} if c.pythonpath else None
                _, urls[c.name] = bench.cluster.start_gateway(
                    [bench.router_url], name=f"gw-{c.name}",
                    args=[*limits_off, *args.gateway_args.split(), *c.args], env=env)
            for r in range(args.rounds + 1):  # round 0 warms every gateway up
                for c in (cfgs if r % 2 else cfgs[::-1]):  # ABC CBA: the drift cancels
                    os.environ[API_KEY_ENV] = SECRET if c.keyed else ""
                    pgid = bench.pid(f"gw-{c.name}")
                    before = group_cpu_ticks(pgid)
                    result = run_wrk(f"{urls[c.name]}/v1/chat/completions", BODY,
                                     "nebula-bench", connections=args.connections,
                                     duration_s=args.duration, threads=2, work_dir=run_dir)
                    cpu = ticks_to_seconds(group_cpu_ticks(pgid) - before)
                    if result.errors:
                        print(f"{c.name}: {result.errors} errors", file=sys.stderr)
                    if r:
                        c.figures.append(per_cpu_second(result.requests, cpu))
                        print(f"round {r} {c.name}: {result.requests} requests, "
                              f"{cpu:.2f} CPU-s, {c.figures[-1]:.0f} per CPU-s", flush=True)
            for c in cfgs:  # a figure measured on the local fallback would be no figure
                if c.keyed and state_errors(urls[c.name]):
                    raise SystemExit(f"{c.name}: calls to Redis failed (see its log)")
        finally:
            bench.close()
            redis.stop()
    print(table(cfgs))
    return 0


def state_errors(url: str) -> float:
    """``nebula_gateway_state_errors_total`` of a keyed gateway (its /metrics takes the key)."""
    req = urllib.request.Request(f"{url}/metrics", headers={"authorization": f"Bearer {SECRET}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("nebula_gateway_state_errors_total{"))


def table(cfgs: list[Config]) -> str:
    """Markdown: each configuration's median, and its ratio to the open gateway's figure
    of the same round (paired: the rounds drift with the machine's load), median and range."""
    lines = ["| gateway | requests per CPU-second (median) | vs open, paired by round "
             "(median, range) |", "|---|---|---|"]
    base = cfgs[0].figures
    for c in cfgs:
        ratios = sorted(100 * (f / b - 1) for f, b in zip(c.figures, base, strict=True))
        lines.append(f"| {c.name} | {statistics.median(c.figures):,.0f} | "
                     f"{statistics.median(ratios):+.1f} % ({ratios[0]:+.1f} to "
                     f"{ratios[-1]:+.1f} %) |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
