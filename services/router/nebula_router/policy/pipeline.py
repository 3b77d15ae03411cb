"""Routing policy as a pipeline: filters -> scorers -> picker, all pure.

Every function here takes candidate objects and plain values (time, a random
source, a counter) and returns a choice; nothing does IO, so each step is
unit-tested without a network. :class:`Pipeline` strings them together for the
``--policy`` the router runs with.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from hashlib import blake2b

from .candidate import Candidate
from .outlier import OutlierPolicy

POLICIES = ("least_load", "round_robin", "random", "session", "prefix")
LOAD_BASED = frozenset({"least_load", "session", "prefix"})

Score = Callable[[Candidate], float]


@dataclass(slots=True)
class RouteKeys:
    """What a request offers for affinity (both optional)."""

    session: str | None = None
    prefix: str | None = None


# -- filters --------------------------------------------------------------------------
def ready(cands: Sequence[Candidate]) -> list[Candidate]:
    """Only ``ready`` endpoints: draining and failed ones get no new requests."""
    return [c for c in cands if c.status == "ready"]


def not_ejected(cands: Sequence[Candidate], outlier: OutlierPolicy, now: float
                ) -> list[Candidate]:
    """Drop ejected replicas; a half-open one passes while its probe slot is free."""
    return [c for c in cands if outlier.available(c, now)]


def not_overloaded(cands: Sequence[Candidate], max_in_flight: int) -> list[Candidate]:
    """Drop replicas at ``max_in_flight`` (0 = no limit).

    Soft: when every replica is at the limit the input is returned, so the
    request queues on the least loaded engine instead of failing.
    """
    if max_in_flight <= 0:
        return list(cands)
    kept = [c for c in cands if c.in_flight < max_in_flight]
    return kept or list(cands)


def excluding(cands: Sequence[Candidate], tried: Sequence[Candidate]) -> list[Candidate]:
    if not tried:
        return list(cands)
    return [c for c in cands if all(c is not t for t in tried)]


# -- scorers ----------------------------------------------------------------------------
def load_score(c: Candidate) -> float:
    return c.load


def rendezvous_weight(key: str, c: Candidate) -> int:
    """Highest-random-weight hash of (key, replica): stable across router processes."""
    digest = blake2b(f"{key}\x00{c.ref}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rendezvous_order(key: str, cands: Sequence[Candidate]) -> list[Candidate]:
    """Candidates by descending weight for ``key``: removing one moves only its keys."""
    return sorted(cands, key=lambda c: rendezvous_weight(key, c), reverse=True)


def load_cap(cands: Sequence[Candidate], c_factor: float, score: Score = load_score) -> float:
    """Bounded-load ceiling: ceil((1 + c) x the average load after adding this request)."""
    total = sum(score(c) for c in cands) + 1.0
    return math.ceil((1.0 + c_factor) * total / len(cands))


# -- pickers ----------------------------------------------------------------------------
def pick_p2c(cands: Sequence[Candidate], rng: random.Random, score: Score = load_score
             ) -> tuple[Candidate, str]:
    """Power of two choices: two distinct random candidates, the lower score wins."""
    n = len(cands)
    if n == 1:
        return cands[0], "single"
    i = rng.randrange(n)
    j = rng.randrange(n - 1)
    if j >= i:
        j += 1
    a, b = cands[i], cands[j]
    return (a if score(a) <= score(b) else b), "p2c"


def pick_round_robin(cands: Sequence[Candidate], counter: int) -> tuple[Candidate, str]:
    return cands[counter % len(cands)], "round_robin"


def pick_random(cands: Sequence[Candidate], rng: random.Random) -> tuple[Candidate, str]:
    return cands[rng.randrange(len(cands))], "random"


def pick_bounded_affinity(key: str, cands: Sequence[Candidate], c_factor: float,
                          score: Score = load_score) -> tuple[Candidate, bool]:
    """Consistent hashing with bounded loads.

    Walk the rendezvous order for ``key`` and take the first replica whose load
    stays under the cap; returns (replica, True) when that is the preferred one.
    """
    order = rendezvous_order(key, cands)
    if len(order) == 1:
        return order[0], True
    cap = load_cap(order, c_factor, score)
    for rank, c in enumerate(order):
        if score(c) + 1.0 <= cap:
            return c, rank == 0
    return min(order, key=score), False


# -- request keys -----------------------------------------------------------------------
def session_key(header: str | None, body: dict) -> str | None:
    """``x-session-id`` header, else the body's ``user``."""
    if header:
        return header
    user = body.get("user")
    return user if isinstance(user, str) and user else None


def _content_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text ones
        return "".join(p.get("text", "") for p in content
                       if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def prefix_text(body: dict, max_chars: int) -> str | None:
    """The leading prompt, chat-template independent.

    Chat: system/developer messages plus the first other message (the start of a
    conversation, shared by every later turn); completions/responses: the first
    ``max_chars`` characters of ``prompt``/``input``.
    """
    messages = body.get("messages")
    if isinstance(messages, list) and messages:
        parts: list[str] = []
        for m in messages:
            if not isinstance(m, dict):
                continue
            role = m.get("role")
            parts.append(f"{role}:{_content_text(m.get('content'))}")
            if role not in ("system", "developer"):
                break
        text = "\n".join(parts)
        return text[:max_chars] if text else None
    for field_name in ("prompt", "input"):
        value = body.get(field_name)
        if isinstance(value, list) and value:
            value = value[0] if isinstance(value[0], str) else _content_text(value)
        if isinstance(value, str) and value:
            return value[:max_chars]
    return None


# -- the pipeline -----------------------------------------------------------------------
@dataclass
class Pipeline:
    """Filters, scorers and picker for one ``--policy``."""

    policy: str = "least_load"
    outlier: OutlierPolicy = field(default_factory=OutlierPolicy)
    bound_c: float = 0.25
    """Bounded-load slack: a preferred replica is skipped above (1 + c) x average load."""
    max_in_flight: int = 0
    rng: random.Random = field(default_factory=random.Random)
    _rr: int = 0

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r} (choose from {', '.join(POLICIES)})")

    def filter(self, cands: Sequence[Candidate], now: float,
               tried: Sequence[Candidate] = ()) -> list[Candidate]:
        kept = not_ejected(ready(cands), self.outlier, now)
        if tried:
            kept = excluding(kept, tried)
        return not_overloaded(kept, self.max_in_flight)

    def pick(self, cands: Sequence[Candidate], keys: RouteKeys) -> tuple[Candidate, str]:
        """Choose among already filtered, non-empty ``cands``; returns (replica, reason)."""
        policy = self.policy
        if keys.session and (policy in LOAD_BASED):
            c, preferred = pick_bounded_affinity(keys.session, cands, self.bound_c)
            return c, "session_affinity" if preferred else "session_spill_busy"
        if policy == "least_load":
            return pick_p2c(cands, self.rng)
        if policy == "round_robin":
            self._rr += 1
            return pick_round_robin(cands, self._rr)
        if policy == "random":
            return pick_random(cands, self.rng)
        if policy == "prefix":
            if keys.prefix is None:
                c, _ = pick_p2c(cands, self.rng)
                return c, "prefix_none"
            c = rendezvous_order(keys.prefix, cands)[0]
            if len(cands) == 1 or c.load + 1.0 <= load_cap(cands, self.bound_c):
                return c, "prefix_hit"
            c, _ = pick_p2c(cands, self.rng)
            return c, "prefix_fallback_busy"
        # session policy without any session key: spread by load
        c, _ = pick_p2c(cands, self.rng)
        return c, "session_none"

    def choose(self, cands: Sequence[Candidate], keys: RouteKeys, now: float,
               tried: Sequence[Candidate] = ()) -> tuple[Candidate | None, str]:
        kept = self.filter(cands, now, tried)
        if kept:
            return self.pick(kept, keys)
        # Panic mode (Envoy's panic threshold at its limit): when outlier detection has
        # ejected every ready replica, ejection protects nothing any more. Route among them
        # rather than refuse the whole model: a wrong ejection (a connect storm, a slow
        # start) must not take a model down, and a truly broken replica still fails loudly.
        kept = excluding(ready(cands), tried)
        if not kept:
            return None, "no_candidate"
        chosen, reason = self.pick(kept, keys)
        return chosen, f"panic_{reason}"
