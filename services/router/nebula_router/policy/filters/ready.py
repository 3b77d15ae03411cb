"""``ready``: only endpoints that say they are ready; draining and failed ones get nothing new."""

from __future__ import annotations

from collections.abc import Sequence

from nebula_common.records import EndpointState

from ..candidate import Candidate
from ..plugin import Options, Settings
from ..request import Need, RouteKeys

READY = EndpointState.READY


def ready(cands: Sequence[Candidate]) -> list[Candidate]:
    return [c for c in cands if c.status == READY]


class Ready:
    needs = Need.NONE

    def filter(self, cands: Sequence[Candidate], keys: RouteKeys, now: float
               ) -> list[Candidate]:
        return [c for c in cands if c.status == READY]  # inline: one call less per request


def build(settings: Settings, options: Options) -> Ready:
    return Ready()
