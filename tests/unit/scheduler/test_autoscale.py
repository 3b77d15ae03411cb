"""The autoscaler's decision: scale out on a sustained queue, in on calm, cooldowns,
hysteresis (no flapping under a steady load), bounds, scale to zero and the wake."""

from __future__ import annotations

import pytest

from nebula_scheduler.autoscale import Load, ScaleConfig, ScaleState, decide

CFG = ScaleConfig(out_after_s=10, out_cooldown_s=30, in_after_s=60, in_cooldown_s=60,
                  in_utilisation=0.5, idle_to_zero_s=300)


def run(state: ScaleState, lo: int, hi: int, load: Load, start: float, end: float,
        step: float = 1.0) -> list[tuple[float, int, str]]:
    """Decide every ``step`` seconds; the changes (time, target, reason)."""
    changes = []
    t = start
    while t <= end:
        before = state.target
        target, reason = decide(state, lo, hi, load, t, CFG)
        if target != before:
            changes.append((t, target, reason))
        t += step
    return changes


def test_scale_out_needs_a_sustained_queue_and_respects_the_cooldown() -> None:
    state = ScaleState(target=1)
    load = Load(waiting=4, admitted=8, per_replica=8)
    # A queue shorter than out_after_s moves nothing.
    assert run(state, 1, 3, load, 0, 8) == []
    assert run(state, 1, 3, Load(admitted=8, per_replica=8), 9, 9) == []
    changes = run(state, 1, 3, load, 10, 60)
    # Sustained 10 s (from t=10): 2 replicas for 12 requests of 8 each; then the cooldown
    # (30 s) and 10 s more of queue: 3, the max.
    assert [(t, n) for t, n, _ in changes] == [(20, 2), (50, 3)]
    assert changes[0][2] == "4 waiting for 10s, 8 running, 8 per replica"
    assert state.events == 2


def test_scale_out_jumps_to_what_the_demand_needs_within_max() -> None:
    state = ScaleState(target=1)
    changes = run(state, 1, 4, Load(waiting=40, admitted=8, per_replica=8), 0, 10)
    assert changes == [(10, 4, changes[0][2])]


def test_steady_load_between_the_thresholds_never_flaps() -> None:
    state = ScaleState(target=3)
    # 14 running on 3 replicas of 8: no queue (no scale-out); 14 > 2*8*0.5 (no scale-in).
    assert run(state, 1, 3, Load(waiting=0, admitted=14, per_replica=8), 0, 600) == []
    assert state.events == 0 and state.target == 3


def test_scale_in_on_sustained_calm_one_at_a_time() -> None:
    state = ScaleState(target=3)
    changes = run(state, 1, 3, Load(admitted=2, per_replica=8), 0, 400)
    # The calm period starts anew at the new size (the pass after the change).
    assert [(t, n) for t, n, _ in changes] == [(60, 2), (121, 1)]
    assert [r for _, _, r in changes] == ["2 running fit in 2 at 50% for 60s",
                                          "2 running fit in 1 at 50% for 60s"]
    assert state.target == 1  # never below min


def test_a_brief_queue_resets_the_calm_period() -> None:
    state = ScaleState(target=2)
    run(state, 1, 2, Load(admitted=1, per_replica=8), 0, 50)
    decide(state, 1, 2, Load(waiting=1, admitted=8, per_replica=8), 51, CFG)
    assert run(state, 1, 2, Load(admitted=1, per_replica=8), 52, 110) == []
    assert run(state, 1, 2, Load(admitted=1, per_replica=8), 111, 112)[0][1] == 1


def test_bounds_clamp_the_target() -> None:
    state = ScaleState(target=5)
    target, reason = decide(state, 1, 3, Load(), 0, CFG)
    assert (target, reason) == (3, "bounds 1..3")
    state = ScaleState(target=0)
    assert decide(state, 2, 3, Load(), 0, CFG)[0] == 2


def test_scale_to_zero_after_idle_and_wake_at_once() -> None:
    state = ScaleState(target=1)
    changes = run(state, 0, 2, Load(per_replica=8), 0, 310)
    assert [(t, n) for t, n, _ in changes] == [(300, 0)]
    assert changes[0][2] == "idle for 300s"
    # Busy (even with nothing waiting) is not idle: no scale to zero.
    state2 = ScaleState(target=1)
    assert run(state2, 0, 2, Load(admitted=1, per_replica=8), 0, 400) == []
    # One waiting request at zero: a replica at once, no sustain period.
    target, reason = decide(state, 0, 2, Load(waiting=1), 311, CFG)
    assert (target, reason) == (1, "1 waiting at zero replicas")


def test_min_zero_without_max_never_wakes() -> None:
    state = ScaleState(target=0)
    assert decide(state, 0, 0, Load(waiting=3), 0, CFG)[0] == 0


def test_timing_flag_parses_and_refuses_garbage() -> None:
    cfg = ScaleConfig.parse("1,2,3,4,5")
    assert (cfg.out_after_s, cfg.out_cooldown_s, cfg.in_after_s, cfg.in_cooldown_s,
            cfg.idle_to_zero_s) == (1, 2, 3, 4, 5)
    for bad in ("1,2,3", "a,b,c,d,e", "1,2,3,4,-5"):
        with pytest.raises(ValueError):
            ScaleConfig.parse(bad)
