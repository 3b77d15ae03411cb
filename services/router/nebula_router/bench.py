"""Routing-overhead benchmark: the same load direct to a sim engine and through the router.

Run from the repository root (it uses ``devtools.cluster`` to start etcd, one
``nebula-sim`` with no token delay, and a router, all on free loopback ports)::

    .venv/bin/python -m nebula_router.bench [--duration 5] [--concurrency 1,32]

Load comes from ``wrk`` when it is installed (a Lua script POSTs a chat
request), else from an aiohttp client loop. Each row prints requests/s, p50/p99
latency and the router's requests per CPU-second (utime+stime from /proc before
and after), which holds even on a noisy machine. Not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BODY = {"model": "Org/Bench", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
STREAM_BODY = {**BODY, "max_tokens": 64, "stream": True}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk_run(url: str, body: dict, concurrency: int, duration: float, workdir: Path
            ) -> tuple[float, float, float]:
    script = workdir / "post.lua"
    script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      f"wrk.body = {json.dumps(json.dumps(body))}\n")
    out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{max(int(duration), 1)}s",
                          "--latency", "-s", str(script), url + "/v1/chat/completions"],
                         capture_output=True, text=True, check=True).stdout
    rps = float(next(ln for ln in out.splitlines() if "Requests/sec" in ln).split()[-1])

    def pct(tag: str) -> float:
        value = next(ln for ln in out.splitlines() if ln.strip().startswith(tag)).split()[-1]
        for unit, scale in (("us", 1e-3), ("ms", 1.0), ("s", 1000.0)):
            if value.endswith(unit):
                return float(value[: -len(unit)]) * scale
        return float(value)

    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    return rps, pct("50%"), pct("99%")


def python_run(url: str, body: dict, concurrency: int, duration: float
               ) -> tuple[float, float, float]:
    import aiohttp

    async def main() -> tuple[float, float, float]:
        latencies: list[float] = []
        payload = json.dumps(body).encode()
        end = time.monotonic() + duration
        async with aiohttp.ClientSession() as session:
            async def worker() -> None:
                while time.monotonic() < end:
                    t0 = time.perf_counter()
                    async with session.post(url + "/v1/chat/completions", data=payload,
                                            headers={"content-type": "application/json"}) as r:
                        await r.read()
                        if r.status != 200:
                            raise RuntimeError(f"status {r.status}")
                    latencies.append((time.perf_counter() - t0) * 1000)
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        latencies.sort()
        n = len(latencies)
        return n / duration, latencies[n // 2], latencies[min(n - 1, int(n * 0.99))]

    return asyncio.run(main())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="nebula_router.bench", description=__doc__)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--router-args", default="--access-log off",
                        help="extra router flags, space separated")
    args = parser.parse_args(argv)
    sys.path.insert(0, os.getcwd())
    from devtools.cluster import BIN, Cluster, free_port, http_get, wait_for
    from nebula_common.keys import Keys
    from nebula_common.records import Endpoint
    from nebula_common.store import EtcdConfig, EtcdStore

    workdir = Path(tempfile.mkdtemp(prefix="nebula-router-bench-"))
    cluster = Cluster(workdir / "run")
    use_wrk = shutil.which("wrk") is not None
    try:
        cluster.start_etcd()
        port = free_port()
        sim = cluster.spawn("sim", [str(BIN / "nebula-sim"), "--host", "127.0.0.1", "--port",
                                    str(port), "--model-name", "Org/Bench", "--itl-ms", "0",
                                    "--ttft-ms", "0", "--log-level", "warning"])
        sim_url = f"http://127.0.0.1:{port}"
        wait_for(lambda: http_get(f"{sim_url}/health")[0] == 200, 30, "sim health")

        async def register() -> None:
            store = EtcdStore(EtcdConfig(endpoints=(cluster.etcd_endpoint,)))
            ep = Endpoint("bench", "Org/Bench", "0", "bench", sim_url, "sim")
            await store.put(Keys().endpoint("bench", "0"), ep.to_json())
            await store.close()

        asyncio.run(register())
        router, router_url = cluster.start_router(args=args.router_args.split())
        wait_for(lambda: b'"in_flight"' in http_get(f"{router_url}/debug/endpoints")[1], 15,
                 "router table")
        print(f"load from {'wrk' if use_wrk else 'python aiohttp'}; {os.cpu_count()} CPUs; "
              f"load average {os.getloadavg()[0]:.1f}")
        print(f"{'path':7} {'scenario':11} {'conc':>4} {'req/s':>8} {'p50 ms':>8} "
              f"{'p99 ms':>8} {'router req/CPU-s':>17}")
        for scenario, body in (("chat", BODY), ("stream64", STREAM_BODY)):
            for conc in (int(c) for c in args.concurrency.split(",")):
                for path, url in (("direct", sim_url), ("router", router_url)):
                    run = (lambda u=url, b=body, c=conc: wrk_run(u, b, c, args.duration, workdir)
                           ) if use_wrk else (lambda u=url, b=body, c=conc:
                                              python_run(u, b, c, args.duration))
                    c0 = cpu_seconds(router.pid)
                    t0 = time.monotonic()
                    rps, p50, p99 = run()
                    elapsed = time.monotonic() - t0
                    used = cpu_seconds(router.pid) - c0
                    per_cpu = f"{rps * elapsed / used:.0f}" if path == "router" and used else "-"
                    print(f"{path:7} {scenario:11} {conc:>4} {rps:>8.0f} {p50:>8.2f} "
                          f"{p99:>8.2f} {per_cpu:>17}", flush=True)
    finally:
        cluster.stop_all(grace=3)
        shutil.rmtree(workdir, ignore_errors=True)
    del sim


if __name__ == "__main__":
    main()
