"""The soak benchmark's pure parts: reading /proc and /metrics, rows, the verdict, the doc section.

:mod:`bench.soak` runs the cluster and the traffic; everything here is arithmetic
and text, so it is unit-tested without starting anything.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .report import TargetResult, fmt, markdown_table, text_table
from .stats import percentile

ROLES = ("router", "gateway")
OK = "ok"
DISCONNECT = "client_disconnect"
"""A client that hangs up mid-stream on purpose: part of the mix, not an error."""
TASKS_METRIC = "nebula_common_asyncio_tasks"
RSS_GROWTH_MAX = 0.05
P99_DRIFT_MAX = 0.20
SECTION_BEGIN = "<!-- soak:begin (written by make soak; keep the markers) -->"
SECTION_END = "<!-- soak:end -->"


@dataclass(frozen=True)
class Finished:
    """One request: when it ended (s since the load started), how, and its latency."""

    t: float
    kind: str  # OK, DISCONNECT or an error kind (http_502, timeout, truncated, ...)
    latency_ms: float
    stream: bool


@dataclass(frozen=True)
class ProcSample:
    """One role's resources at one instant; ``tasks`` is NaN when /metrics did not answer."""

    rss_kib: int
    fds: int
    tasks: float


@dataclass(frozen=True)
class Row:
    """One sample: the window (t - sample, t] of requests and the roles' resources at t."""

    t: float
    phase: str  # "warm-up", "load" or "end" (after the load stopped and the roles settled)
    ok: int
    disconnects: int
    p50_ms: float
    p99_ms: float
    errors: dict[str, int]
    procs: dict[str, ProcSample]
    restarts: int = 0


def stream_kind(body: bytes) -> str:
    """A streamed 200's whole body -> OK, ``stream_error`` (an error event) or ``truncated``."""
    if b"event: error" in body or b'data: {"error"' in body:
        return "stream_error"
    return OK if body.rstrip().endswith(b"data: [DONE]") else "truncated"


def body_kind(body: bytes) -> str:
    """A non-streamed 200's body -> OK when it carries a finish_reason, else ``bad_body``."""
    try:
        reason = json.loads(body)["choices"][0]["finish_reason"]
    except (ValueError, KeyError, IndexError, TypeError):
        return "bad_body"
    return OK if reason else "bad_body"


def parse_vmrss_kib(status_text: str) -> int:
    """``VmRSS`` of a ``/proc/<pid>/status`` text, in KiB."""
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError("no VmRSS line (a kernel thread or a zombie)")


def parse_gauge(metrics_text: str, name: str) -> float:
    """The value of an unlabelled sample ``name`` in Prometheus text; NaN when absent."""
    match = re.search(rf"^{re.escape(name)}(?:{{}})? (\S+)$", metrics_text, re.M)
    return float(match[1]) if match else math.nan


def window_row(t: float, phase: str, finished: Iterable[Finished],
               procs: dict[str, ProcSample], restarts: int = 0) -> Row:
    """A :class:`Row` from the requests that finished in the window that ends at ``t``."""
    done = list(finished)
    latencies = [f.latency_ms for f in done if f.kind == OK]
    errors = Counter(f.kind for f in done if f.kind not in (OK, DISCONNECT))
    return Row(t=t, phase=phase, ok=len(latencies),
               disconnects=sum(1 for f in done if f.kind == DISCONNECT),
               p50_ms=percentile(latencies, 50), p99_ms=percentile(latencies, 99),
               errors=dict(sorted(errors.items())), procs=procs, restarts=restarts)


def between(finished: Iterable[Finished], start: float, end: float) -> list[Finished]:
    """The requests that finished in ``[start, end)``."""
    return [f for f in finished if start <= f.t < end]


def windows(warmup_s: float, duration_s: float, window_s: float) -> tuple[tuple[float, float],
                                                                          tuple[float, float]]:
    """The first and the last comparison windows after warm-up.

    Each is ``window_s`` long, shrunk to half of what follows the warm-up when the
    run is shorter than two windows (a smoke run), so they never overlap.
    """
    span = max(0.0, duration_s - warmup_s)
    width = min(window_s, span / 2)
    return (warmup_s, warmup_s + width), (duration_s - width, duration_s)


def _growth(first: float, last: float) -> float:
    return (last - first) / first if first > 0 else math.nan


def _p99(finished: Sequence[Finished]) -> float:
    return percentile([f.latency_ms for f in finished if f.kind == OK], 99)


def verdict(rows: Sequence[Row], finished: Sequence[Finished], baseline: dict[str, ProcSample],
            final: dict[str, ProcSample], *, warmup_s: float, duration_s: float,
            window_s: float) -> list[TargetResult]:
    """The issue's soak targets, one result per role where the target is per process."""
    out: list[TargetResult] = []
    load = [r for r in rows if r.phase == "load"]
    for role in ROLES:
        have = [r.procs[role] for r in load if role in r.procs]
        if len(have) >= 2:
            growth = _growth(have[0].rss_kib, have[-1].rss_kib)
            peak = _growth(have[0].rss_kib, max(p.rss_kib for p in have))
            measured = (f"{have[0].rss_kib / 1024:.1f} -> {have[-1].rss_kib / 1024:.1f} MiB "
                        f"({growth * 100:+.1f} %, peak {peak * 100:+.1f} %)")
            passed: bool | None = growth <= RSS_GROWTH_MAX
        else:
            measured, passed = "-", None
        out.append(TargetResult(f"rss:{role}", f"{role}: RSS growth after warm-up <= 5 %",
                                measured, passed))
    for role in ROLES:
        for what in ("fds", "tasks"):
            base = getattr(baseline[role], what) if role in baseline else math.nan
            end = getattr(final[role], what) if role in final else math.nan
            ok = None if math.isnan(base) or math.isnan(end) else end <= base
            out.append(TargetResult(f"{what}:{role}",
                                    f"{role}: {what} back to baseline after the load",
                                    f"{fmt(base, 0)} -> {fmt(end, 0)}", ok))
    (a0, a1), (b0, b1) = windows(warmup_s, duration_s, window_s)
    first, last = _p99(between(finished, a0, a1)), _p99(between(finished, b0, b1))
    drift = _growth(first, last)
    out.append(TargetResult(
        "p99", f"p99 of the last {b1 - b0:.0f} s within 20 % of the first {a1 - a0:.0f} s "
        "after warm-up", f"{fmt(first)} -> {fmt(last)} ms ({fmt(drift * 100, 1, True)} %)",
        None if math.isnan(drift) else abs(drift) <= P99_DRIFT_MAX))
    return out


def error_text(errors: dict[str, int]) -> str:
    return " ".join(f"{kind}={n}" for kind, n in errors.items()) or "-"


HEADERS = ("t s", "phase", "ok", "p50 ms", "p99 ms", "router RSS MiB", "router fds",
           "router tasks", "gateway RSS MiB", "gateway fds", "gateway tasks", "hang-ups",
           "restarts", "errors")


def table_rows(rows: Sequence[Row]) -> list[list[str]]:
    out = []
    for r in rows:
        cells = [f"{r.t:.0f}", r.phase, str(r.ok), fmt(r.p50_ms), fmt(r.p99_ms)]
        for role in ROLES:
            p = r.procs.get(role)
            cells += ([f"{p.rss_kib / 1024:.1f}", str(p.fds), fmt(p.tasks, 0)] if p
                      else ["-", "-", "-"])
        cells += [str(r.disconnects), str(r.restarts), error_text(r.errors)]
        out.append(cells)
    return out


def render_text(rows: Sequence[Row], targets: Sequence[TargetResult]) -> str:
    return (text_table(HEADERS, table_rows(rows)) + "\n\n"
            + text_table(("target", "measured", "verdict"),
                         [[t.target, t.measured, t.verdict] for t in targets]))


def render_section(rows: Sequence[Row], targets: Sequence[TargetResult], *, about: str,
                   plot: str, duration_s: float = 1800) -> str:
    """The "Soak" section of docs/benchmarks.md (and bench/findings.md), markers included."""
    minutes = f"{duration_s / 60:g} minutes"
    verdicts = markdown_table(("target", "measured", "verdict"),
                              [[t.target, t.measured, t.verdict] for t in targets])
    return f"""{SECTION_BEGIN}
## Soak: {minutes} of mixed traffic through gateway + router (issue 17; `make soak`)

{about}

![RSS and latency over the soak run]({plot})

{verdicts}

Every sample ({len(rows)} rows; `ok`, `p50`/`p99` (time to last byte), `hang-ups` and
`errors` count the requests that finished since the previous row; RSS, fds and tasks are
read at the row's time; the `end` row is read after the load stopped and the roles
settled):

{markdown_table(HEADERS, table_rows(rows))}
{SECTION_END}"""


def replace_section(text: str, section: str) -> str:
    """``text`` with its soak section replaced by ``section`` (appended when there is none)."""
    start, end = text.find(SECTION_BEGIN), text.find(SECTION_END)
    if start >= 0 and end > start:
        return text[:start] + section + text[end + len(SECTION_END):]
    return text.rstrip("\n") + "\n\n" + section + "\n"
