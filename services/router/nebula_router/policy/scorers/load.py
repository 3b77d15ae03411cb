"""``load``: lighter replicas score higher, relative to the lightest one.

Score ``(1 + least load) / (1 + load)``: 1.0 for the least loaded replica, 0.5
for one carrying about twice as much. A ratio rather than a difference, so the
score means the same on an idle cluster and a busy one.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..candidate import Candidate
from ..plugin import Options, Settings
from ..request import Need, RouteKeys


class LoadScorer:
    needs = Need.NONE

    def score(self, cands: Sequence[Candidate], keys: RouteKeys) -> list[float]:
        loads = [c.load for c in cands]
        floor = 1.0 + min(loads)
        return [floor / (1.0 + load) for load in loads]


def build(settings: Settings, options: Options) -> LoadScorer:
    return LoadScorer()
