"""A profile as running plugins: filters -> weighted scorers -> picker chain, plus panic.

:meth:`Pipeline.build` makes the plugins a :class:`Profile` names;
:meth:`Pipeline.choose` runs them for one request. Nothing here does IO.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .candidate import Candidate
from .filters.ready import ready
from .outlier import OutlierPolicy
from .plugin import Filter, Options, Picker, PolicyError, Scorer, Settings
from .presets import preset
from .profile import PluginRef, Profile
from .registry import FILTERS, PICKERS, SCORERS
from .request import Need, RouteKeys, need_names


def excluding(cands: Sequence[Candidate], tried: Sequence[Candidate]) -> list[Candidate]:
    return [c for c in cands if all(c is not t for t in tried)]


class Pipeline:
    """The running policy of one router."""

    def __init__(self, profile: Profile, filters: Sequence[Filter],
                 scorers: Sequence[tuple[Scorer, float]], picker: Picker, needs: Need,
                 outlier: OutlierPolicy):
        self.profile = profile
        self.name = profile.name
        self.filters = tuple(filters)
        self.scorers = tuple(scorers)
        self.picker = picker
        self.needs = needs
        """Union of what every plugin reads from a request: the proxy extracts exactly this."""
        self.outlier = outlier
        # Bound once: choose() runs per request, where each lookup and call level shows.
        self._filter_fns = tuple(f.filter for f in self.filters)
        self.pick: Callable[[Sequence[Candidate], RouteKeys], tuple[Candidate, str]] = (
            picker.pick if not self.scorers else self._scored_pick)
        """Score (profiles with scorers only) and pick among non-empty candidates."""

    @classmethod
    def build(cls, profile: Profile | str = "least_load",
              settings: Settings | None = None) -> Pipeline:
        """Plugins for ``profile`` (a preset name or a parsed profile)."""
        if isinstance(profile, str):
            profile = preset(profile)
        settings = settings or Settings()
        try:
            return cls._build(profile, settings)
        except PolicyError as exc:
            raise PolicyError(f"{profile.origin}: {exc}") from None

    @classmethod
    def _build(cls, profile: Profile, settings: Settings) -> Pipeline:
        needs = Need.NONE
        filters: list[Filter] = []
        for ref in profile.filters:
            options = _options("filter", ref)
            f = FILTERS[ref.name](settings, options)
            options.check_all_read()
            if f is not None:
                filters.append(f)
                needs |= f.needs
        scorers: list[tuple[Scorer, float]] = []
        for ref, weight in profile.scorers:
            options = _options("scorer", ref)
            s = SCORERS[ref.name](settings, options)
            options.check_all_read()
            scorers.append((s, weight))
            needs |= s.needs
        picker: Picker | None = None
        for ref in reversed(profile.picker):  # built last first: each wraps its fallback
            options = _options("picker", ref)
            picker = PICKERS[ref.name](settings, options, picker)
            options.check_all_read()
            needs |= picker.needs
        assert picker is not None  # parse_profile refuses an empty chain
        return cls(profile, filters, scorers, picker, needs, settings.outlier)

    def choose(self, cands: Sequence[Candidate], keys: RouteKeys, now: float,
               tried: Sequence[Candidate] = ()) -> tuple[Candidate | None, str]:
        """The replica for one attempt, never one in ``tried``; returns (replica, reason)."""
        kept = excluding(cands, tried) if tried else cands
        for narrow in self._filter_fns:
            kept = narrow(kept, keys, now)
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

    def _scored_pick(self, cands: Sequence[Candidate], keys: RouteKeys
                     ) -> tuple[Candidate, str]:
        return self.picker.pick(cands, keys, self.scores(cands, keys))

    def scores(self, cands: Sequence[Candidate], keys: RouteKeys) -> list[float]:
        """Weighted sum of every scorer's scores, one per candidate."""
        total = [0.0] * len(cands)
        for scorer, weight in self.scorers:
            for i, s in enumerate(scorer.score(cands, keys)):
                total[i] += weight * s
        return total

    def describe(self) -> dict[str, object]:
        """/debug/policy: the profile as data plus where it came from and what it reads."""
        return {**self.profile.spec(), "kind": self.profile.kind, "path": self.profile.path,
                "needs": need_names(self.needs)}


def _options(kind: str, ref: PluginRef) -> Options:
    return Options(f"{kind} {ref.name!r}", ref.options)
