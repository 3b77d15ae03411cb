"""``session-affinity``: 1.0 for the replica the session key hashes to (rendezvous), else 0.

Option ``user: true`` also takes the body's ``user`` as the session key when the
request has no ``x-session-id``. Combine with ``load`` to bound the stickiness.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..candidate import Candidate
from ..plugin import Options, Settings
from ..rendezvous import affinity_scores
from ..request import Need, RouteKeys


class SessionAffinityScorer:
    def __init__(self, user: bool = False):
        self.needs = Need.SESSION | (Need.SESSION_USER if user else Need.NONE)

    def score(self, cands: Sequence[Candidate], keys: RouteKeys) -> list[float]:
        return affinity_scores(keys.session, cands)


def build(settings: Settings, options: Options) -> SessionAffinityScorer:
    return SessionAffinityScorer(user=options.flag("user"))
