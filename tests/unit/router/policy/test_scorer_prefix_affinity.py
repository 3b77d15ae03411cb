"""The ``prefix-affinity`` scorer: 1 for the replica the prompt prefix hashes to."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from nebula_router.policy import Candidate, Need, RouteKeys
from nebula_router.policy.scorers.prefix_affinity import PrefixAffinityScorer

Replicas = Callable[..., list[Candidate]]


def test_exactly_one_home_per_prefix_and_prefixes_spread(replicas: Replicas) -> None:
    cands = replicas(4)
    scorer = PrefixAffinityScorer()
    homes: Counter[str] = Counter()
    for i in range(400):
        scores = scorer.score(cands, RouteKeys(prefix=f"conv {i}"))
        assert sorted(scores) == [0.0, 0.0, 0.0, 1.0]
        homes[cands[scores.index(1.0)].replica_id] += 1
    assert len(homes) == 4 and min(homes.values()) > 60


def test_no_prefix_scores_zero_and_needs_prefix(replicas: Replicas) -> None:
    assert PrefixAffinityScorer().score(replicas(2), RouteKeys(session="s")) == [0.0, 0.0]
    assert PrefixAffinityScorer().needs == Need.PREFIX
