"""``prefix-affinity``: requests sharing a prompt prefix to one replica (its prefix cache).

The replica the prefix hashes to, unless one more request puts it above the
bounded-load cap; then the next picker chooses (``prefix_fallback_busy``).
Requests with no prompt text also go to the next picker (``prefix_none``).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..candidate import Candidate
from ..plugin import Options, Picker, Settings, needs_fallback
from ..rendezvous import preferred, under_cap
from ..request import Need, RouteKeys


class PrefixAffinity:
    needs = Need.PREFIX

    def __init__(self, fallback: Picker, bound_c: float):
        self.fallback = fallback
        self.bound_c = bound_c

    def pick(self, cands: Sequence[Candidate], keys: RouteKeys,
             scores: Sequence[float] | None = None) -> tuple[Candidate, str]:
        if keys.prefix is None:
            return self.fallback.pick(cands, keys, scores)[0], "prefix_none"
        c = preferred(keys.prefix, cands)
        if under_cap(c, cands, self.bound_c):
            return c, "prefix_hit"
        return self.fallback.pick(cands, keys, scores)[0], "prefix_fallback_busy"


def build(settings: Settings, options: Options, fallback: Picker | None) -> PrefixAffinity:
    return PrefixAffinity(needs_fallback("prefix-affinity", fallback), settings.bound_c)
