"""Load generators: ``wrk`` with a Lua script, and aiohttp streaming for per-request timings.

wrk is the efficient closed-loop client (one C thread per core, epoll); its
latency is time to last byte. :func:`stream_request` times one streamed request
(time to first content chunk and to the end) for the routing workload; the
drained client for long streams is :mod:`bench.rawload`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from .stats import percentile

LUA_SCRIPT = Path(__file__).resolve().parent / "lua" / "chat.lua"
MARKER = "BENCH_JSON "


@dataclass(frozen=True)
class LoadResult:
    """One load run: throughput, latency (milliseconds) and failures."""

    requests: int
    duration_s: float
    p50_ms: float
    p99_ms: float
    errors: int = 0
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0


def parse_wrk_output(text: str) -> LoadResult:
    """The ``BENCH_JSON`` line printed by ``chat.lua``'s ``done()`` -> :class:`LoadResult`.

    Non-2xx answers count as errors (wrk still counts them as requests, so they
    are subtracted: a fast 503 must not look like throughput).
    """
    for line in text.splitlines():
        if line.startswith(MARKER):
            data = json.loads(line[len(MARKER):])
            break
    else:
        raise ValueError("wrk printed no BENCH_JSON summary:\n" + text[-2000:])
    errors = data["errors"]
    failed = sum(int(v) for v in errors.values())
    ok = max(0, int(data["requests"]) - int(errors.get("status", 0)))
    return LoadResult(
        requests=ok, duration_s=data["duration_us"] / 1e6,
        p50_ms=data["p50_us"] / 1000.0, p99_ms=data["p99_us"] / 1000.0,
        errors=failed, detail=data,
    )


def wrk_binary() -> str | None:
    return shutil.which("wrk")


def run_wrk(url: str, body: bytes, agent: str, *, connections: int, duration_s: float,
            threads: int, work_dir: Path, timeout_s: float = 30.0) -> LoadResult:
    """Run wrk against ``url`` and return its summary."""
    wrk = wrk_binary()
    if wrk is None:
        raise RuntimeError("wrk is not installed (make bench-tools)")
    body_file = work_dir / f"body-{abs(hash(body))}.json"
    if not body_file.exists():
        body_file.write_bytes(body)
    threads = max(1, min(threads, connections))
    seconds = max(1, round(duration_s))  # wrk takes whole seconds only
    argv = [wrk, "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s",
            "--timeout", f"{timeout_s:g}s", "-s", str(LUA_SCRIPT), url]
    env = {**os.environ, "BENCH_BODY_FILE": str(body_file), "BENCH_AGENT": agent}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env,
                          timeout=seconds + timeout_s + 30)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return parse_wrk_output(proc.stdout)


# -- asyncio client -------------------------------------------------------------------------


@dataclass
class StreamTiming:
    """One streamed request: status, time to first content chunk and to the last byte."""

    status: int
    ttft_s: float
    total_s: float
    error: str = ""


_CONTENT_MARKS = (b'"content":"', b'"text":"')


def first_content_at(buffer: bytes) -> bool:
    """Has an SSE buffer reached a frame that carries generated text?

    A role-only first chunk (``"content":""``) does not count: TTFT is the first token.
    """
    for mark in _CONTENT_MARKS:
        at = buffer.find(mark)
        while at >= 0:
            following = buffer[at + len(mark):at + len(mark) + 1]
            if following and following != b'"':
                return True
            at = buffer.find(mark, at + 1)
    return False


async def stream_request(session: aiohttp.ClientSession, url: str, body: bytes,
                         headers: dict[str, str] | None = None) -> StreamTiming:
    """POST ``body`` and read the SSE answer, timing the first content chunk and the end."""
    started = time.perf_counter()
    ttft = float("nan")
    seen = b""
    try:
        async with session.post(url, data=body, headers={
                "content-type": "application/json", **(headers or {})}) as resp:
            async for chunk in resp.content.iter_any():
                if ttft != ttft:  # still NaN: look for the first token
                    seen += chunk
                    if first_content_at(seen):
                        ttft = time.perf_counter() - started
                        seen = b""
            return StreamTiming(resp.status, ttft, time.perf_counter() - started,
                                "" if resp.status == 200 else f"HTTP {resp.status}")
    except (aiohttp.ClientError, TimeoutError) as exc:
        return StreamTiming(0, ttft, time.perf_counter() - started,
                            type(exc).__name__ + ": " + str(exc)[:200])


def summarize_ms(values: Sequence[float]) -> dict[str, float]:
    ms = [v * 1000.0 for v in values if v == v]
    return {"mean": sum(ms) / len(ms) if ms else float("nan"),
            "p50": percentile(ms, 50), "p95": percentile(ms, 95)}
