"""Affinity math shared by the affinity scorers and pickers: rendezvous hashing, bounded load.

Rendezvous (highest-random-weight) hashing maps a key to a replica so that
removing a replica moves only its keys, and every router process agrees
(blake2b, not Python's per-process salted ``hash()``). The bounded-load cap
keeps one hot key from piling onto one replica.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from hashlib import blake2b

from .candidate import Candidate


def rendezvous_weight(key: str, c: Candidate) -> int:
    """Highest-random-weight hash of (key, replica): stable across router processes."""
    digest = blake2b(f"{key}\x00{c.ref}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rendezvous_order(key: str, cands: Sequence[Candidate]) -> list[Candidate]:
    """Candidates by descending weight for ``key``: removing one moves only its keys."""
    return sorted(cands, key=lambda c: rendezvous_weight(key, c), reverse=True)


def preferred(key: str, cands: Sequence[Candidate]) -> Candidate:
    """The first of :func:`rendezvous_order` without sorting the rest."""
    return max(cands, key=lambda c: rendezvous_weight(key, c))


def load_cap(cands: Sequence[Candidate], c_factor: float) -> float:
    """Bounded-load ceiling: ceil((1 + c) x the average load after adding this request)."""
    total = sum(c.load for c in cands) + 1.0
    return math.ceil((1.0 + c_factor) * total / len(cands))


def under_cap(c: Candidate, cands: Sequence[Candidate], c_factor: float) -> bool:
    """True when one more request keeps ``c`` within the bounded-load cap."""
    return len(cands) == 1 or c.load + 1.0 <= load_cap(cands, c_factor)


def bounded_affinity(key: str, cands: Sequence[Candidate], c_factor: float
                     ) -> tuple[Candidate, bool]:
    """Consistent hashing with bounded loads.

    Walk the rendezvous order for ``key`` and take the first replica whose load
    stays under the cap; returns (replica, True) when that is the preferred one.
    """
    order = rendezvous_order(key, cands)
    if len(order) == 1:
        return order[0], True
    cap = load_cap(order, c_factor)
    for rank, c in enumerate(order):
        if c.load + 1.0 <= cap:
            return c, rank == 0
    return min(order, key=lambda c: c.load), False


def affinity_scores(key: str | None, cands: Sequence[Candidate]) -> list[float]:
    """Scorer form: 1.0 for the replica ``key`` hashes to, 0.0 for the rest.

    All 0.0 when the request has no key: affinity then leaves the choice to the rest.
    """
    if not key:
        return [0.0] * len(cands)
    home = preferred(key, cands)
    return [1.0 if c is home else 0.0 for c in cands]
