"""The autoscaler's decision: how many replicas a model should have now (pure).

Input per model: its bounds (``ModelSpec.min_replicas``/``max_replicas``), the count it has
now, and the routers' queue signals summed (requests waiting, requests admitted, the
routers' per-replica cap). Rules, in order:

- **wake from zero**: at 0 replicas, any waiting request asks for 1 at once;
- **scale out** when requests have waited continuously for ``out_after_s`` (a queue that
  keeps forming): enough replicas for what runs and waits, at least one more, at most
  ``max``; then ``out_cooldown_s`` before the next scale-out (new replicas need to start);
- **scale in** by one when, for ``in_after_s`` continuously, nothing waited and what runs
  would fit in one replica fewer at ``in_utilisation`` of its capacity; then
  ``in_cooldown_s``. The gap between "a queue forms" (100 %) and "fits at 50 % on one
  fewer" is the hysteresis: a steady load sits between them and moves nothing;
- **to zero** (``min`` 0) after ``idle_to_zero_s`` with nothing admitted or waiting.

Time is passed in; the caller keeps one :class:`ScaleState` per model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ScaleConfig:
    out_after_s: float = 10.0
    out_cooldown_s: float = 30.0
    in_after_s: float = 60.0
    in_cooldown_s: float = 60.0
    in_utilisation: float = 0.5
    idle_to_zero_s: float = 300.0

    @classmethod
    def parse(cls, text: str) -> ScaleConfig:
        """``OUT_AFTER,OUT_COOLDOWN,IN_AFTER,IN_COOLDOWN,IDLE_TO_ZERO`` seconds (the
        scheduler's ``--autoscale-timing``); ValueError when malformed."""
        parts = [float(x) for x in text.split(",")]
        if len(parts) != 5 or min(parts) < 0:
            raise ValueError(f"expected 5 non-negative seconds, got {text!r}")
        out_after, out_cool, in_after, in_cool, idle = parts
        return cls(out_after, out_cool, in_after, in_cool, 0.5, idle)


@dataclass(frozen=True, slots=True)
class Load:
    """One model's queues over every router."""

    waiting: int = 0
    admitted: int = 0
    per_replica: int = 0
    """The routers' ``--max-running-per-replica`` (0: unknown, no router queues it)."""


@dataclass(slots=True)
class ScaleState:
    """What the autoscaler remembers of one model between passes."""

    target: int
    waiting_since: float | None = None
    calm_since: float | None = None
    idle_since: float | None = None
    last_out: float = -math.inf
    last_in: float = -math.inf
    reason: str = "initial"
    events: int = 0
    """Scale events so far (a steady load must not add to it)."""


def decide(state: ScaleState, lo: int, hi: int, load: Load, now: float,
           cfg: ScaleConfig) -> tuple[int, str]:
    """Update ``state`` for this pass; the new target and why (``""``: unchanged)."""
    lo, hi = max(0, lo), max(lo, hi)
    target = min(max(state.target, lo), hi)
    waiting, busy = load.waiting > 0, load.admitted + load.waiting > 0
    state.waiting_since = (state.waiting_since if state.waiting_since is not None else now
                           ) if waiting else None
    state.idle_since = None if busy else (state.idle_since if state.idle_since is not None
                                          else now)
    fits = target > 1 and (not busy or (
        load.per_replica > 0
        and load.admitted <= (target - 1) * load.per_replica * cfg.in_utilisation))
    state.calm_since = None if (waiting or not fits) else (
        state.calm_since if state.calm_since is not None else now)
    reason = ""
    if target == 0 and waiting and hi > 0:
        target, reason = 1, f"{load.waiting} waiting at zero replicas"
    elif (waiting and state.waiting_since is not None
          and now - state.waiting_since >= cfg.out_after_s
          and now - state.last_out >= cfg.out_cooldown_s and target < hi):
        need = target + 1
        if load.per_replica > 0:
            need = max(need, math.ceil((load.admitted + load.waiting) / load.per_replica))
        target, reason = min(need, hi), (
            f"{load.waiting} waiting for {now - state.waiting_since:.0f}s, {load.admitted} "
            "running" + (f", {load.per_replica} per replica" if load.per_replica else ""))
    elif (state.calm_since is not None and now - state.calm_since >= cfg.in_after_s
          and now - max(state.last_in, state.last_out) >= cfg.in_cooldown_s and target > lo
          and target > 1):
        target, reason = target - 1, (
            f"{load.admitted} running fit in {target - 1} at {cfg.in_utilisation:.0%} for "
            f"{now - state.calm_since:.0f}s")
    elif (lo == 0 and target > 0 and state.idle_since is not None
          and now - state.idle_since >= cfg.idle_to_zero_s):
        target, reason = 0, f"idle for {now - state.idle_since:.0f}s"
    if not reason and target != state.target:
        reason = f"bounds {lo}..{hi}"
    if target != state.target:
        if target > state.target:
            state.last_out = now
        else:
            state.last_in = now
        state.waiting_since = state.calm_since = None  # sustained anew at the new size
        state.events += 1
        state.reason = reason
    state.target = target
    return target, reason
