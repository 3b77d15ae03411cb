"""``not-ejected``: drop replicas outlier detection ejected (a half-open one passes, to probe)."""

from __future__ import annotations

from collections.abc import Sequence

from ..candidate import Candidate
from ..outlier import OutlierPolicy
from ..plugin import Options, Settings
from ..request import Need, RouteKeys


class NotEjected:
    needs = Need.NONE

    def __init__(self, outlier: OutlierPolicy):
        self.outlier = outlier

    def filter(self, cands: Sequence[Candidate], keys: RouteKeys, now: float
               ) -> list[Candidate]:
        available = self.outlier.available
        return [c for c in cands if available(c, now)]


def build(settings: Settings, options: Options) -> NotEjected:
    return NotEjected(settings.outlier)
