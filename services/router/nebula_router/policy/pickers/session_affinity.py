"""``session-affinity``: a session's requests to one replica, spilling when it is busy.

Consistent hashing with bounded loads on the session key: the replica the key
hashes to unless one more request would put it above (1 + c) x the average
load, then the next one in the key's rendezvous order. Requests without a key
go to the next picker. Option ``user: true`` also takes the body's ``user``
as the key, and then names keyless requests ``session_none``.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..candidate import Candidate
from ..plugin import Options, Picker, Settings, needs_fallback
from ..rendezvous import bounded_affinity
from ..request import Need, RouteKeys


class SessionAffinity:
    def __init__(self, fallback: Picker, bound_c: float, user: bool = False):
        self.fallback = fallback
        self.bound_c = bound_c
        self.user = user
        self.needs = Need.SESSION | (Need.SESSION_USER if user else Need.NONE)

    def pick(self, cands: Sequence[Candidate], keys: RouteKeys,
             scores: Sequence[float] | None = None) -> tuple[Candidate, str]:
        if keys.session:
            c, home = bounded_affinity(keys.session, cands, self.bound_c)
            return c, "session_affinity" if home else "session_spill_busy"
        # A session policy counts keyless requests; opportunistic affinity stays invisible
        # (and costs no more than its fallback: the hot path of the default preset).
        if self.user:
            return self.fallback.pick(cands, keys, scores)[0], "session_none"
        return self.fallback.pick(cands, keys, scores)


def build(settings: Settings, options: Options, fallback: Picker | None) -> SessionAffinity:
    return SessionAffinity(needs_fallback("session-affinity", fallback), settings.bound_c,
                           user=options.flag("user"))
