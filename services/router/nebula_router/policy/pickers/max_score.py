"""``max-score``: the candidate with the highest weighted score; ties broken at random.

Random tie-breaking matters: with equal scores (an idle cluster, no affinity key)
taking the first candidate would send everything to one replica.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from ..candidate import Candidate
from ..plugin import Options, Picker, Settings, last_in_chain
from ..request import Need, RouteKeys


class MaxScore:
    needs = Need.NONE

    def __init__(self, rng: random.Random):
        self.rng = rng

    def pick(self, cands: Sequence[Candidate], keys: RouteKeys,
             scores: Sequence[float] | None = None) -> tuple[Candidate, str]:
        if scores is None:  # no scorers: every candidate ties
            return cands[self.rng.randrange(len(cands))], "max_score"
        best = max(scores)
        top = [c for c, s in zip(cands, scores, strict=True) if s == best]
        return (top[0] if len(top) == 1 else self.rng.choice(top)), "max_score"


def build(settings: Settings, options: Options, fallback: Picker | None) -> MaxScore:
    last_in_chain("max-score", fallback)
    return MaxScore(settings.rng)
