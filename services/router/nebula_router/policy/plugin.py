"""The policy vocabulary: three one-method interfaces, the settings and options plugins get.

A :class:`Filter` narrows the candidates, a :class:`Scorer` rates each one in
[0, 1] (higher is better), a :class:`Picker` chooses one and says why (the
reason is a metric label). Each declares the request facts it uses in ``needs``.
A plugin is built by a factory from the router-wide :class:`Settings` and its
own :class:`Options` (from the profile); the registry maps names to factories.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .candidate import Candidate
from .outlier import OutlierPolicy
from .request import Need, RouteKeys


class PolicyError(ValueError):
    """A profile or plugin configuration is not valid (a one-line message)."""


class Filter(Protocol):
    needs: Need

    def filter(self, cands: Sequence[Candidate], keys: RouteKeys, now: float
               ) -> Sequence[Candidate]:
        """The candidates that may take this request (may return ``cands`` itself)."""
        ...


class Scorer(Protocol):
    needs: Need

    def score(self, cands: Sequence[Candidate], keys: RouteKeys) -> list[float]:
        """One score in [0, 1] per candidate, in order; higher is better."""
        ...


class Picker(Protocol):
    needs: Need

    def pick(self, cands: Sequence[Candidate], keys: RouteKeys,
             scores: Sequence[float] | None = None) -> tuple[Candidate, str]:
        """Choose from non-empty ``cands`` -> (replica, reason).

        ``scores`` are the pipeline's weighted scores, one per candidate, or None
        when it has no scorers (the presets): a picker then uses what it knows.
        """
        ...


@dataclass(frozen=True, slots=True)
class Settings:
    """Router-wide knobs every plugin may use (from the command line)."""

    outlier: OutlierPolicy = field(default_factory=OutlierPolicy)
    bound_c: float = 0.25
    """Bounded-load slack: a preferred replica is skipped above (1 + c) x average load."""
    max_in_flight: int = 0
    """Per-replica in-flight count treated as overloaded (0 = no limit)."""
    rng: random.Random = field(default_factory=random.Random)


class Options:
    """One plugin's options from the profile; the builder refuses any left unread."""

    def __init__(self, plugin: str, values: Mapping[str, object] | None = None):
        self.plugin = plugin
        self.values = dict(values or {})
        self._read: set[str] = set()

    def flag(self, name: str, default: bool = False) -> bool:
        self._read.add(name)
        value = self.values.get(name, default)
        if not isinstance(value, bool):
            raise PolicyError(f"{self.plugin}: option {name!r} must be true or false, "
                              f"got {value!r}")
        return value

    def check_all_read(self) -> None:
        unknown = sorted(set(self.values) - self._read)
        if unknown:
            raise PolicyError(f"{self.plugin}: unknown option {', '.join(map(repr, unknown))}")


FilterFactory = Callable[[Settings, Options], Filter | None]
"""None: the settings make this filter a no-op (the pipeline then never calls it)."""
ScorerFactory = Callable[[Settings, Options], Scorer]
PickerFactory = Callable[[Settings, Options, "Picker | None"], Picker]
"""Pickers form a fallback chain: the factory gets the next picker (None for the last)."""


def last_in_chain(name: str, fallback: Picker | None) -> None:
    """For pickers that always choose: nothing may follow them."""
    if fallback is not None:
        raise PolicyError(f"picker {name!r} always chooses: it must be the last picker")


def needs_fallback(name: str, fallback: Picker | None) -> Picker:
    """For pickers that may pass: a later picker must take over."""
    if fallback is None:
        raise PolicyError(f"picker {name!r} passes requests it cannot place: "
                          f"a picker must follow it (e.g. p2c)")
    return fallback
