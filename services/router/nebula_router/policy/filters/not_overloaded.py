"""``not-overloaded``: drop replicas at ``--max-in-flight`` (0 = no limit).

Soft: when every replica is at the limit the input is kept, so the request
queues on an engine instead of failing.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..candidate import Candidate
from ..plugin import Options, Settings
from ..request import Need, RouteKeys


class NotOverloaded:
    needs = Need.NONE

    def __init__(self, max_in_flight: int):
        self.max_in_flight = max_in_flight

    def filter(self, cands: Sequence[Candidate], keys: RouteKeys, now: float
               ) -> Sequence[Candidate]:
        limit = self.max_in_flight
        if limit <= 0:
            return cands
        kept = [c for c in cands if c.in_flight < limit]
        return kept or cands


def build(settings: Settings, options: Options) -> NotOverloaded | None:
    """None without a limit: nothing to filter, so the pipeline skips the call."""
    return NotOverloaded(settings.max_in_flight) if settings.max_in_flight > 0 else None
