"""Pure numbers: percentiles, medians and spread across rounds, CPU accounting from /proc.

Nothing here touches the network or starts processes, so it is unit-tested directly.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path


def percentile(values: Sequence[float], pct: float) -> float:
    """The ``pct``-th percentile (0..100) by linear interpolation between closest ranks.

    NaN for an empty sequence, so a scenario that produced nothing shows up as such
    instead of as a misleading zero.
    """
    if not values:
        return math.nan
    if not 0 <= pct <= 100:
        raise ValueError(f"percentile must be within 0..100, got {pct}")
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    rank = (len(ordered) - 1) * pct / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    frac = rank - low
    return float(ordered[low] + (ordered[high] - ordered[low]) * frac)


def mean(values: Sequence[float]) -> float:
    return float(statistics.fmean(values)) if values else math.nan


@dataclass(frozen=True)
class Spread:
    """Median of repeated measurements and how far apart they were."""

    median: float
    low: float
    high: float
    n: int

    @property
    def rel_range(self) -> float:
        """(max - min) / median: 0.05 means the rounds disagreed by 5 %."""
        if self.n == 0 or not self.median or math.isnan(self.median):
            return math.nan
        return (self.high - self.low) / abs(self.median)


def spread(values: Iterable[float]) -> Spread:
    """Median, min and max of the finite values (NaN-filled when there are none)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return Spread(math.nan, math.nan, math.nan, 0)
    return Spread(statistics.median(finite), min(finite), max(finite), len(finite))


# -- CPU accounting ---------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/<pid>/stat`` this benchmark needs."""

    pid: int
    comm: str
    pgrp: int
    utime: int  # clock ticks, every thread of the process
    stime: int

    @property
    def ticks(self) -> int:
        return self.utime + self.stime


def parse_proc_stat(text: str) -> ProcStat:
    """Parse one ``/proc/<pid>/stat`` line.

    ``comm`` is in parentheses and may itself contain spaces and parentheses, so
    the fields are split after the *last* ``)`` (proc(5)).
    """
    open_at = text.index("(")
    close_at = text.rindex(")")
    pid = int(text[:open_at].strip())
    comm = text[open_at + 1:close_at]
    rest = text[close_at + 2:].split()
    # rest[0] is field 3 (state); utime and stime are fields 14 and 15, pgrp field 5
    return ProcStat(pid=pid, comm=comm, pgrp=int(rest[2]), utime=int(rest[11]),
                    stime=int(rest[12]))


def ticks_to_seconds(ticks: int, clk_tck: int = CLK_TCK) -> float:
    return ticks / float(clk_tck)


def group_cpu_ticks(pgid: int, proc: Path = Path("/proc")) -> int:
    """utime+stime of every live process in process group ``pgid`` (all threads included).

    A service is started in its own process group, so this also counts any worker
    process a server might fork. Processes that vanish while being read are skipped.
    """
    total = 0
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = parse_proc_stat((entry / "stat").read_text())
        except (OSError, ValueError, IndexError):
            continue
        if stat.pgrp == pgid:
            total += stat.ticks
    return total


def per_cpu_second(requests: float, cpu_seconds: float) -> float:
    """Requests served per CPU-second; NaN when no CPU time was measured."""
    if cpu_seconds <= 0:
        return math.nan
    return requests / cpu_seconds


def parse_cpu_totals(proc_stat: str) -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from the ``cpu`` line of ``/proc/stat``.

    Idle is ``idle + iowait``; guest time is already inside user/nice, so it is
    not added twice.
    """
    for line in proc_stat.splitlines():
        if line.startswith("cpu "):
            fields = [int(x) for x in line.split()[1:]]
            user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
            total = user + nice + system + idle + iowait + irq + softirq + steal
            return total - idle - iowait, total
    raise ValueError("no aggregate 'cpu' line in /proc/stat")


def machine_cpu_totals(path: Path = Path("/proc/stat")) -> tuple[int, int]:
    return parse_cpu_totals(path.read_text())


def busy_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Fraction of all CPUs' time that was busy between two :func:`parse_cpu_totals`."""
    busy = after[0] - before[0]
    total = after[1] - before[1]
    return busy / total if total > 0 else math.nan
