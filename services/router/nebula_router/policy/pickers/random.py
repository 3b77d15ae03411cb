"""``random``: a uniformly random candidate (scores ignored)."""

from __future__ import annotations

import random
from collections.abc import Sequence

from ..candidate import Candidate
from ..plugin import Options, Picker, Settings, last_in_chain
from ..request import Need, RouteKeys


class RandomPick:
    needs = Need.NONE

    def __init__(self, rng: random.Random):
        self.rng = rng

    def pick(self, cands: Sequence[Candidate], keys: RouteKeys,
             scores: Sequence[float] | None = None) -> tuple[Candidate, str]:
        return cands[self.rng.randrange(len(cands))], "random"


def build(settings: Settings, options: Options, fallback: Picker | None) -> RandomPick:
    last_in_chain("random", fallback)
    return RandomPick(settings.rng)
