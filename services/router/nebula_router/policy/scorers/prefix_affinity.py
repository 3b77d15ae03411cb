"""``prefix-affinity``: 1.0 for the replica the prompt prefix hashes to, else 0.

The replica a prefix hashes to is the one whose engine most likely holds it in
its prefix cache (every earlier request with that prefix went there too).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..candidate import Candidate
from ..plugin import Options, Settings
from ..rendezvous import affinity_scores
from ..request import Need, RouteKeys


class PrefixAffinityScorer:
    needs = Need.PREFIX

    def score(self, cands: Sequence[Candidate], keys: RouteKeys) -> list[float]:
        return affinity_scores(keys.prefix, cands)


def build(settings: Settings, options: Options) -> PrefixAffinityScorer:
    return PrefixAffinityScorer()
