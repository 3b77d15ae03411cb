"""``round-robin``: each request to the next candidate in turn (one counter per router)."""

from __future__ import annotations

from collections.abc import Sequence

from ..candidate import Candidate
from ..plugin import Options, Picker, Settings, last_in_chain
from ..request import Need, RouteKeys


class RoundRobin:
    needs = Need.NONE

    def __init__(self) -> None:
        self.turn = 0

    def pick(self, cands: Sequence[Candidate], keys: RouteKeys,
             scores: Sequence[float] | None = None) -> tuple[Candidate, str]:
        self.turn += 1
        return cands[self.turn % len(cands)], "round_robin"


def build(settings: Settings, options: Options, fallback: Picker | None) -> RoundRobin:
    last_in_chain("round-robin", fallback)
    return RoundRobin()
