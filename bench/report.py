"""Turning samples into rows, rows into an aligned table, and checking the issue's targets.

All pure: :mod:`bench.run` collects the samples, this module does the arithmetic
and the text, so both are unit-tested without starting anything.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .stats import Spread, per_cpu_second, spread

PATHS = ("direct", "router", "gateway")
PATH_LABELS = {"direct": "direct", "router": "router", "gateway": "gateway+router"}
NEBULA_PROCS = ("router", "gateway")
# The peers (bench/peers.py), each labelled and charged as the hop it stands in for:
# vllm-router's CPU is the "router" figure, LiteLLM's the "gateway" (and "both") one.
# The byte relay (bench/relay.py), the per-chunk table's floor, is charged as a router too.
RELAY = "relay"
PEER_LABELS = {"vllm-router": "vllm-router", "litellm": "LiteLLM", RELAY: "byte relay (floor)"}
PEER_HOPS = {"vllm-router": "router", "litellm": "gateway", RELAY: "router"}
SERVER_SEP = "@"  # "router@granian": the router (and gateway) run with --http-server granian
BASELINE = "baseline"
"""``router@baseline``: an earlier commit's router (bench/baseline.py), charged as a router."""


def server_path(path: str, server: str) -> str:
    """The name of ``path`` ("router" or "gateway") served by ``--http-server server``."""
    return f"{path}{SERVER_SEP}{server}"


def is_baseline(path: str) -> bool:
    """Whether ``path`` runs the baseline commit's code, not this checkout's."""
    return path.endswith(SERVER_SEP + BASELINE)


def hop(path: str) -> str:
    """Which hop a path measures: "direct", "router" (one hop) or "gateway" (two)."""
    return PEER_HOPS.get(path) or path.split(SERVER_SEP, 1)[0]


def path_label(path: str, default_server: str = "") -> str:
    """``router``, ``gateway+router (granian)``, ``vllm-router``...

    ``default_server`` names the server of the plain ``router``/``gateway`` paths when
    a run compares servers (it is left out otherwise, as the page always showed it).
    """
    if path in PEER_LABELS:
        return PEER_LABELS[path]
    base, _, server = path.partition(SERVER_SEP)
    server = server or (default_server if base != "direct" else "")
    return PATH_LABELS[base] + (f" ({server})" if server else "")


@dataclass(frozen=True)
class Sample:
    """One load run of one scenario on one path in one round."""

    scenario: str
    path: str
    round: int
    requests: int
    duration_s: float
    p50_ms: float
    p99_ms: float
    errors: int = 0
    cpu_s: dict[str, float] = field(default_factory=dict)  # process name -> CPU seconds
    machine_busy: float = math.nan  # share of all CPUs busy during the run (0..1)
    error_kinds: dict[str, int] = field(default_factory=dict)  # the load client's, if any

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else math.nan

    def per_cpu(self, procs: Sequence[str]) -> float:
        """Requests per CPU-second of ``procs`` together (NaN if not all were measured)."""
        if not procs or any(p not in self.cpu_s for p in procs):
            return math.nan
        return per_cpu_second(self.requests, sum(self.cpu_s[p] for p in procs))


@dataclass(frozen=True)
class Row:
    scenario: str
    path: str
    rps: Spread
    p50: Spread
    p99: Spread
    added_p50: Spread
    added_p99: Spread
    per_cpu_router: Spread
    per_cpu_gateway: Spread
    per_cpu_both: Spread
    errors: int
    engine_cores: Spread = field(default_factory=lambda: spread([]))
    machine_busy: Spread = field(default_factory=lambda: spread([]))


def aggregate(samples: Iterable[Sample]) -> list[Row]:
    """Median and range across rounds per (scenario, path), in first-seen scenario order.

    Added latency is computed per round against the direct run of the same round
    (they ran back to back), then the median of those differences is taken.
    """
    samples = list(samples)
    scenarios: list[str] = []
    for s in samples:
        if s.scenario not in scenarios:
            scenarios.append(s.scenario)
    rows: list[Row] = []
    for scenario in scenarios:
        mine = [s for s in samples if s.scenario == scenario]
        direct = {s.round: s for s in mine if s.path == "direct"}
        paths = sorted(dict.fromkeys(s.path for s in mine), key=_path_order)
        for path in paths:
            runs = [s for s in mine if s.path == path]
            paired = [(s, direct[s.round]) for s in runs if s.round in direct]
            nan = spread([])
            kind = hop(path)
            rows.append(Row(
                scenario=scenario, path=path,
                rps=spread(s.rps for s in runs),
                p50=spread(s.p50_ms for s in runs),
                p99=spread(s.p99_ms for s in runs),
                added_p50=spread(s.p50_ms - d.p50_ms for s, d in paired)
                if kind != "direct" else nan,
                added_p99=spread(s.p99_ms - d.p99_ms for s, d in paired)
                if kind != "direct" else nan,
                per_cpu_router=spread(s.per_cpu(["router"]) for s in runs)
                if kind != "direct" else nan,
                per_cpu_gateway=spread(s.per_cpu(["gateway"]) for s in runs)
                if kind == "gateway" else nan,
                per_cpu_both=spread(s.per_cpu(list(NEBULA_PROCS)) for s in runs)
                if kind == "gateway" else nan,
                errors=sum(s.errors for s in runs),
                engine_cores=spread(s.cpu_s["engine"] / s.duration_s for s in runs
                                    if "engine" in s.cpu_s and s.duration_s > 0),
                machine_busy=spread(s.machine_busy for s in runs),
            ))
    return rows


def _path_order(path: str) -> tuple[int, int, str]:
    """direct, then each hop's Nebula paths (default server first), then its peer."""
    kind = hop(path)
    return ({"direct": 0, "router": 1, "gateway": 2}.get(kind, 3), path in PEER_HOPS,
            "" if SERVER_SEP not in path and path not in PEER_HOPS else path)


def find_row(rows: Sequence[Row], scenario: str, path: str) -> Row | None:
    return next((r for r in rows if r.scenario == scenario and r.path == path), None)


# -- formatting ------------------------------------------------------------------------------


def fmt(value: float, digits: int = 1, signed: bool = False) -> str:
    if value is None or math.isnan(value):
        return "-"
    if abs(value) >= 1000:
        text = f"{value:,.0f}"
        return ("+" + text) if signed and value > 0 else text
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def fmt_range(sp: Spread, digits: int = 1) -> str:
    """``median (min..max)``; just the median when there was one round."""
    if sp.n == 0:
        return "-"
    if sp.n == 1:
        return fmt(sp.median, digits)
    return f"{fmt(sp.median, digits)} ({fmt(sp.low, digits)}..{fmt(sp.high, digits)})"


def fmt_pct(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value * 100:.0f}%"


REQUEST_HEADERS = ("scenario", "path", "req/s (min..max)", "p50 ms", "p99 ms", "+p50 ms",
                   "+p99 ms", "req/CPU-s router", "req/CPU-s gateway", "req/CPU-s both",
                   "errors", "spread", "engine cores", "box busy")


def noise(row: Row) -> float:
    """(max-min)/median of req/s across rounds: how much the machine moved the figure.

    Throughput is the steadiest figure of a closed-loop run; latency percentiles of
    sub-millisecond answers swing by multiples on a shared box and would drown it.
    """
    return row.rps.rel_range


def request_table_rows(rows: Sequence[Row], default_server: str = "") -> list[list[str]]:
    return [[
        r.scenario, path_label(r.path, default_server), fmt_range(r.rps, 0), fmt(r.p50.median, 2),
        fmt(r.p99.median, 2), fmt(r.added_p50.median, 2, signed=True),
        fmt(r.added_p99.median, 2, signed=True), fmt(r.per_cpu_router.median, 0),
        fmt(r.per_cpu_gateway.median, 0), fmt(r.per_cpu_both.median, 0), str(r.errors),
        fmt_pct(noise(r)), fmt(r.engine_cores.median, 2), fmt_pct(r.machine_busy.median),
    ] for r in rows]


_NUMERIC = re.compile(r"^(-|[+-]?[\d,]+(\.\d+)?( ?(%|x|ms|s))?( \([^)]*\))?)$")


def is_numeric(cell: str) -> bool:
    """A figure such as ``1,258``, ``+0.49``, ``12%``, ``2.1x`` or ``0.51 (0.50..0.60)``."""
    return bool(_NUMERIC.match(cell))


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain aligned table: text left-aligned, numbers right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str], header: bool = False) -> str:
        parts = []
        for i, cell in enumerate(cells):
            right = not header and is_numeric(cell)
            parts.append(cell.rjust(widths[i]) if right else cell.ljust(widths[i]))
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers, True), rule, *(line(r) for r in rows)])


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def esc(cell: str) -> str:
        return cell.replace("|", "\\|")
    out = ["| " + " | ".join(esc(h) for h in headers) + " |",
           "|" + "|".join("---" if i < 2 else "---:" for i in range(len(headers))) + "|"]
    out += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


# -- side by side: Nebula against the peers ---------------------------------------------------


@dataclass(frozen=True)
class Ratio:
    """Per-round (numerator's req/CPU-s) / (denominator's) in one scenario, across rounds."""

    scenario: str
    numerator: str  # path names
    denominator: str
    ratios: Spread

    @property
    def target(self) -> float | None:
        """Issue 17's bound for this ratio, if it states one (at 64 connections, on the
        instant stand-in; the paced rows are for reading the per-chunk cost)."""
        if (not self.scenario.endswith("c64") or self.scenario.startswith("paced")
                or is_baseline(self.numerator)):
            return None
        return RATIO_TARGETS.get((hop(self.numerator), self.denominator))


# Issue 17: the router alone at least half of vllm-router's requests per CPU-second at 64
# connections, gateway + router together at least a quarter of it.
RATIO_TARGETS = {("router", "vllm-router"): 0.5, ("gateway", "vllm-router"): 0.25}


def hop_procs(path: str) -> list[str]:
    """The CPU a path's req/CPU-s divides by: the router's, or both hops' together."""
    return ["router"] if hop(path) == "router" else list(NEBULA_PROCS)


def peer_pairs(paths: Iterable[str]) -> list[tuple[str, str]]:
    """Every Nebula path against the peers of its hop that ran: each router path against
    vllm-router; each gateway+router path against LiteLLM and (issue 17's target) against
    vllm-router."""
    paths = list(dict.fromkeys(paths))
    pairs: list[tuple[str, str]] = []
    for path in sorted(paths, key=_path_order):
        if path in PEER_HOPS or hop(path) == "direct":
            continue
        peers = ("vllm-router",) if hop(path) == "router" else ("litellm", "vllm-router")
        pairs += [(path, peer) for peer in peers if peer in paths]
    return pairs


def per_cpu_ratios(samples: Iterable[Sample], pairs: Sequence[tuple[str, str]]
                   ) -> list[Ratio]:
    """Each pair's ratio in each scenario, round by round (the two ran back to back)."""
    samples = list(samples)
    scenarios = list(dict.fromkeys(s.scenario for s in samples))
    out: list[Ratio] = []
    for scenario in scenarios:
        runs = {(s.path, s.round): s for s in samples if s.scenario == scenario}
        for num, den in pairs:
            values = []
            for (path, rnd), a in runs.items():
                b = runs.get((den, rnd))
                if path != num or b is None:
                    continue
                top, bottom = a.per_cpu(hop_procs(num)), b.per_cpu(hop_procs(den))
                if math.isfinite(top) and math.isfinite(bottom) and bottom > 0:
                    values.append(top / bottom)
            if values:
                out.append(Ratio(scenario, num, den, spread(values)))
    return out


RATIO_HEADERS = ("scenario", "ratio of req/CPU-s", "median", "min..max", "rounds", "target",
                 "verdict")


def ratio_table_rows(ratios: Sequence[Ratio], default_server: str = "") -> list[list[str]]:
    rows = []
    for r in ratios:
        target = r.target
        verdict = ("" if target is None or math.isnan(r.ratios.median)
                   else "PASS" if r.ratios.median >= target else "MISS")
        rows.append([
            r.scenario,
            f"{path_label(r.numerator, default_server)} / {path_label(r.denominator)}",
            f"{r.ratios.median:.2f}x", f"{r.ratios.low:.2f}..{r.ratios.high:.2f}",
            str(r.ratios.n), "-" if target is None else f">= {target:.2f}x", verdict or "-"])
    return rows


# -- targets ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TargetResult:
    key: str
    target: str
    measured: str
    passed: bool | None  # None: not measured in this run

    @property
    def verdict(self) -> str:
        return "n/a" if self.passed is None else ("PASS" if self.passed else "MISS")


def _ms(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{fmt(value, 2, signed=True)} ms"


def _check(value: float, ok: bool) -> bool | None:
    return None if value is None or math.isnan(value) else ok


LATENCY_BOUNDS = ((9, 2.0, 10.0), (17, 1.0, 3.0))
"""(issue, p50 ms, p99 ms): what gateway + router may add at one connection."""
PACED_BOUNDS = ((9, "router", 0.05), (9, "gateway", 0.05), (17, "router", 0.10),
                (17, "gateway", 0.20))
"""(issue, path, bound): p99 time to last byte over direct, 1,000 paced streams."""


def evaluate_targets(rows: Sequence[Row], ttft_means: dict[str, float],
                     *, chat: str, stream: str, paced_wide: str) -> list[TargetResult]:
    """The issue's targets against this run's medians.

    ``chat``/``stream`` name the non-streamed and 64-chunk scenarios at concurrency 1
    (latency) and their concurrency-64 counterparts are found by replacing ``c1``
    with ``c64`` (throughput per CPU-second is best measured under load).
    """
    results: list[TargetResult] = []
    for scenario in (chat, stream):
        gw = find_row(rows, scenario, "gateway")
        p50 = gw.added_p50.median if gw else math.nan
        p99 = gw.added_p99.median if gw else math.nan
        for issue, bound50, bound99 in LATENCY_BOUNDS:
            suffix = "" if issue == 9 else f"@{issue}"
            results.append(TargetResult(
                f"added_p50{suffix}:{scenario}",
                f"gateway+router add <= {bound50:g} ms p50 ({scenario}; issue {issue})",
                _ms(p50), _check(p50, p50 <= bound50)))
            results.append(TargetResult(
                f"added_p99{suffix}:{scenario}",
                f"gateway+router add <= {bound99:g} ms p99 ({scenario}; issue {issue})",
                _ms(p99), _check(p99, p99 <= bound99)))
    loaded = chat.replace("c1", "c64")
    router = find_row(rows, loaded, "router")
    value = router.per_cpu_router.median if router else math.nan
    results.append(TargetResult("router_per_cpu",
                                f"router alone >= 2,500 requests per CPU-second ({loaded})",
                                fmt(value, 0), _check(value, value >= 2500)))
    gw = find_row(rows, loaded, "gateway")
    value = gw.per_cpu_both.median if gw else math.nan
    results.append(TargetResult("both_per_cpu",
                                f"gateway+router >= 1,000 requests per CPU-second ({loaded})",
                                fmt(value, 0), _check(value, value >= 1000)))
    direct = find_row(rows, paced_wide, "direct")
    for issue, path, bound in PACED_BOUNDS:
        row = find_row(rows, paced_wide, path)
        ratio, shown = math.nan, "-"
        if row is not None and direct is not None:
            ratio = row.p99.median / direct.p99.median - 1.0
            shown = (f"{ratio * 100:+.1f} % "
                     f"({fmt(row.p99.median, 0)} vs {fmt(direct.p99.median, 0)} ms)")
        results.append(TargetResult(
            f"paced_p99{'' if issue == 9 else f'@{issue}'}:{path}",
            f"10 ms-spaced streams, c1000: time-to-last-byte p99 within {bound:.0%} of direct "
            f"({PATH_LABELS[path]}; issue {issue})",
            "-" if math.isnan(ratio) else shown, _check(ratio, ratio <= bound)))
    rr, pf = ttft_means.get("round_robin", math.nan), ttft_means.get("prefix", math.nan)
    speedup = rr / pf if pf and not math.isnan(pf) and pf > 0 else math.nan
    results.append(TargetResult("prefix_ttft", "prefix cuts mean TTFT >= 2x vs round_robin",
                                "-" if math.isnan(speedup) else f"{speedup:.2f}x",
                                _check(speedup, speedup >= 2.0)))
    return results


# -- CPU per forwarded chunk -------------------------------------------------------------------


@dataclass(frozen=True)
class ChunkCost:
    """One process's CPU per forwarded chunk on one path, round by round."""

    path: str
    proc: str  # "router" or "gateway": whose CPU
    micros: Spread


CHUNK_TARGET = 0.5
"""Issue 17: the CPU per forwarded chunk at least halved on both hops. The baseline rows
(``--baseline``: the code the issue was filed against, in the same rounds) are the "before"
it names; this code's own rows under Hypercorn carry every later change to the proxy code
but the server, a stricter bound checked beside it."""


def chunk_procs(path: str) -> list[str]:
    """The processes whose per-chunk cost a path shows (the peers: the hop they stand in)."""
    if path in PEER_HOPS:
        return [PEER_HOPS[path]]
    return {"router": ["router"], "gateway": ["gateway", "router"]}.get(hop(path), [])


def per_chunk_costs(samples: Iterable[Sample], long: str, short: str, extra_chunks: int
                    ) -> list[ChunkCost]:
    """CPU microseconds per forwarded chunk, from two paced scenarios that differ only in
    the chunks per stream: per round, (CPU per request of ``long``) - (CPU per request of
    ``short``), over the ``extra_chunks`` between them. What a request costs once (its
    head, routing, access line) is in both and cancels."""
    longs = [s for s in samples if s.scenario == long]
    shorts = {(s.path, s.round): s for s in samples if s.scenario == short}
    out: list[ChunkCost] = []
    for path in sorted(dict.fromkeys(s.path for s in longs), key=_path_order):
        for proc in chunk_procs(path):
            values = []
            for a in longs:
                b = shorts.get((path, a.round))
                if (a.path != path or b is None or not a.requests or not b.requests
                        or proc not in a.cpu_s or proc not in b.cpu_s):
                    continue
                values.append(1e6 * (a.cpu_s[proc] / a.requests - b.cpu_s[proc] / b.requests)
                              / extra_chunks)
            if values:
                out.append(ChunkCost(path, proc, spread(values)))
    return out


CHUNK_HEADERS = ("path", "CPU of", "us per chunk", "min..max", "rounds", "/ baseline's",
                 "/ hypercorn's", "/ vllm-router's", "us over the floor")


def _chunk_of(costs: Sequence[ChunkCost], path: str, proc: str) -> float:
    for c in costs:
        if c.path == path and c.proc == proc:
            return c.micros.median
    return math.nan


def _ratio(value: float, base: float) -> float:
    """value / base, NaN when either was not measured."""
    return value / base if math.isfinite(value) and math.isfinite(base) and base > 0 else math.nan


def _over(value: float, base: float) -> str:
    ratio = _ratio(value, base)
    return "-" if math.isnan(ratio) else f"{ratio:.2f}x"


def chunk_table_rows(costs: Sequence[ChunkCost], default_server: str = "") -> list[list[str]]:
    """One row per path and process; "over the floor" is what it spends per chunk beyond
    the byte relay's read, write and loop turn, measured in the same rounds."""
    floor = _chunk_of(costs, RELAY, "router")
    rows = []
    for c in costs:
        base = hop(c.path)
        mine = c.path not in PEER_HOPS and not is_baseline(c.path)
        hypercorn = _chunk_of(costs, server_path(base, "hypercorn"), c.proc) if mine else math.nan
        before = _chunk_of(costs, server_path(base, BASELINE), c.proc) if mine else math.nan
        rows.append([path_label(c.path, default_server), c.proc, fmt(c.micros.median, 1),
                     f"{fmt(c.micros.low, 1)}..{fmt(c.micros.high, 1)}", str(c.micros.n),
                     _over(c.micros.median, before),
                     _over(c.micros.median, hypercorn) if c.path != server_path(
                         base, "hypercorn") else "-",
                     _over(c.micros.median, _chunk_of(costs, "vllm-router", "router"))
                     if c.proc == "router" and c.path != "vllm-router" else "-",
                     fmt(c.micros.median - floor, 1, signed=True)
                     if c.path != RELAY and math.isfinite(floor) else "-"])
    return rows


CHUNK_BASES = {BASELINE: "the baseline code's", "hypercorn": "this code under Hypercorn"}
"""What each per-chunk bound compares against (the ``@`` suffix of its rows): the issue's
own "before", then the stricter one."""


def chunk_targets(costs: Sequence[ChunkCost]) -> list[TargetResult]:
    """Issue 17's per-chunk bound on each hop of the configured server, against each base
    that ran beside it (a base not run reads n/a)."""
    results = []
    for suffix, wording in CHUNK_BASES.items():
        for path in ("router", "gateway"):
            value = _chunk_of(costs, path, path)
            base = _chunk_of(costs, server_path(path, suffix), path)
            ratio = _ratio(value, base)
            shown = "-" if math.isnan(ratio) else (
                f"{ratio:.2f}x ({fmt(value, 1)} vs {fmt(base, 1)} us)")
            results.append(TargetResult(
                f"chunk_cost:{path}@{suffix}",
                f"CPU per forwarded chunk <= {CHUNK_TARGET:g}x {wording}, same run "
                f"({path} process; issue 17)", shown, _check(ratio, ratio <= CHUNK_TARGET)))
    return results


# -- page text: the side-by-side section -------------------------------------------------------


def side_by_side_text(servers: Sequence[str], default_server: str, peer_versions: dict[str, str],
                      ratio_text: str) -> str:
    """docs/benchmarks.md's section on the HTTP servers' and the peers' rows.

    ``servers``: the ``--http-server`` values measured (empty: the configured one only);
    ``peer_versions``: name -> pinned version of the peers measured (empty: none).
    """
    others = [s for s in servers if s != default_server]
    if not others and not peer_versions:
        return f"""This run measured Nebula under its configured HTTP server (`{default_server}`)
only, and no peer. `make bench-peers` (`bench.run --peers --compare-servers`) runs the same
table with the router and gateway+router under each `--http-server` (hypercorn, uvicorn,
granian) and with vllm-router and LiteLLM's proxy on the same nginx stand-in, and adds the
ratio table that issue 17's targets are stated in."""
    parts = []
    if others:
        names = ", ".join(f"`{s}`" for s in others)
        parts.append(f"""`router (S)` and `gateway+router (S)` are the same code under
`--http-server S`. Each other server ({names}) gets a router and a gateway of its own,
on the same etcd and stand-ins, measured in the same rounds as the configured server
(`{default_server}`). The targets below read the `{default_server}` rows. Only the server
differs; every process runs `--workers 1`.""")
    if peer_versions:
        vr = peer_versions.get("vllm-router", "?")
        ll = peer_versions.get("litellm", "?")
        parts.append(f"""The peers run on the same nginx stand-in, in the same rounds, so each
ratio below compares runs made back to back on the same machine. LiteLLM runs only the nginx
scenarios (`chat`, `stream64`); vllm-router runs the paced ones too, as a second instance in
front of the pacer (it routes by worker, not by model). Both come from their own venv
(`make peers`:
`.cache/peers-venv`, pins in `requirements/peers.lock`), configured as their docs say for
one OpenAI backend (`bench/peers.py`):

- `vllm-router` {vr} (Rust): `vllm-router --worker-urls <stand-in> --policy round_robin`,
  its regular mode. It is charged to the `router` column.
- `LiteLLM` is `litellm[proxy]` {ll}: `litellm --config config.yaml --num_workers 1`. The
  config has one model, `openai/bench-model` at the stand-in's `api_base`. There is no
  database and no master key; callbacks, spend logs and uvicorn's access log are off, and
  the cost map is the bundled one (`LITELLM_LOCAL_MODEL_COST_MAP`). It stands in for both
  Nebula hops (keys, limits, routing), so it is charged to `gateway` and `both`.
- LiteLLM calls the engine through the openai SDK, which sends its own `User-Agent`. The
  streamed scenario therefore names a second model entry, `bench-model-stream`: the same
  backend with `extra_headers` `User-Agent: nebula-bench-stream`, so nginx answers the same
  SSE body. LiteLLM parses and rebuilds every chunk (and drops the usage chunk, which the
  request did not ask for with `stream_options`). That work is part of what it costs.
- LiteLLM's rows use the drained client (`bench/rawload.py`) in every scenario. LiteLLM goes
  on serving requests a client gave up on, and at 64 streamed connections no answer ends
  inside a 5 s wrk window. So its req/s counts every request started, drain included, as
  in the paced rows, and its CPU covers the drain too.
- CPU is counted the same way for the peers as for Nebula: user+system time of every
  process and thread in the peer's process group (vllm-router's tokio threads included).""")
    if ratio_text:
        parts.append(f"""Ratios of requests per CPU-second are computed round by round: the Nebula
path's figure over the peer's from the same round (they ran back to back), then the median
and min..max over the rounds, as in the feature check under the profile findings. A
`router` row divides by the router's CPU; a `gateway+router` row divides by both hops'
CPU together. `target` is issue 17's bound at 64 connections: the router alone at least
0.5x vllm-router, gateway+router together at least 0.25x vllm-router. The LiteLLM rows
carry no target.

```
{ratio_text}
```""")
    return "\n\n".join(parts)
