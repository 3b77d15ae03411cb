"""``p2c``: power of two choices, two distinct random candidates, the better one wins.

Without scores (the presets) the lower load wins, which costs two comparisons;
with a profile's scores the higher weighted score wins.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from ..candidate import Candidate
from ..plugin import Options, Picker, Settings, last_in_chain
from ..request import Need, RouteKeys


class P2C:
    needs = Need.NONE

    def __init__(self, rng: random.Random):
        self.rng = rng
        self._randrange = rng.randrange  # bound once: two calls per request

    def pick(self, cands: Sequence[Candidate], keys: RouteKeys,
             scores: Sequence[float] | None = None) -> tuple[Candidate, str]:
        n = len(cands)
        if n == 1:
            return cands[0], "single"
        randrange = self._randrange
        i = randrange(n)
        j = randrange(n - 1)
        if j >= i:
            j += 1
        a, b = cands[i], cands[j]
        if scores is None:
            return (a if a.load <= b.load else b), "p2c"
        return (a if scores[i] >= scores[j] else b), "p2c"


def build(settings: Settings, options: Options, fallback: Picker | None) -> P2C:
    last_in_chain("p2c", fallback)
    return P2C(settings.rng)
