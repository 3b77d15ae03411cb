"""Backoff shared by the roles: one pure function instead of hand-built tenacity states."""

from __future__ import annotations

import random


def backoff_delay(attempt: int, *, initial: float, maximum: float, jitter: float = 0.0,
                  rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based).

    ``initial * 2 ** (attempt - 1)`` capped at ``maximum``, plus up to ``jitter``
    seconds drawn uniformly (so many clients retrying at once spread out); the
    result never exceeds ``maximum``.
    """
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    # 2 ** 64 is far above any cap; bounding the exponent keeps the float finite.
    delay = min(initial * 2.0 ** min(attempt - 1, 64), maximum)
    if jitter > 0:
        delay += (rng or random).uniform(0.0, jitter)
    return min(delay, maximum)
