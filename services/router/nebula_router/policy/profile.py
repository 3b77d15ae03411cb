"""Policy profiles: which filters, weighted scorers and picker chain a router runs.

A profile is plain data (from YAML, or a preset written as a dict) checked here
against the registry; :meth:`Pipeline.build` turns it into plugins. The file
format::

    name: prefix-weighted            # optional; the metric label (default: file name)
    filters: [ready, not-ejected, not-overloaded]   # optional; this is the default
    scorers:                         # optional; name: weight (> 0)
      prefix-affinity: 1.0
      load: 2.0
    picker: max-score                # a name, or a fallback chain [session-affinity, p2c]

A plugin with options is written ``{session-affinity: {user: true}}`` (a scorer:
``session-affinity: {weight: 1.0, user: true}``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .plugin import PolicyError
from .registry import FILTERS, PICKERS, SCORERS

DEFAULT_FILTERS = ("ready", "not-ejected", "not-overloaded")
_KEYS = frozenset({"name", "filters", "scorers", "picker"})
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class PluginRef:
    """A plugin named in a profile, with its options."""

    name: str
    options: Mapping[str, object] = field(default_factory=dict)

    def describe(self) -> str | dict[str, object]:
        """As a profile writes it: the bare name unless there are options."""
        return {self.name: dict(self.options)} if self.options else self.name


@dataclass(frozen=True)
class Profile:
    name: str
    filters: tuple[PluginRef, ...]
    scorers: tuple[tuple[PluginRef, float], ...]
    picker: tuple[PluginRef, ...]
    """The picker chain: each hands what it cannot place to the next; the last always picks."""
    kind: str = "profile"
    """``preset`` (a ``--policy`` name) or ``profile`` (a file)."""
    path: str | None = None

    @property
    def origin(self) -> str:
        return self.path or f"policy {self.name}"

    def spec(self) -> dict[str, object]:
        """The profile as data :func:`parse_profile` reads back (shown at /debug/policy)."""
        scorers: dict[str, object] = {}
        for ref, weight in self.scorers:
            scorers[ref.name] = {"weight": weight, **ref.options} if ref.options else weight
        return {"name": self.name, "filters": [f.describe() for f in self.filters],
                "scorers": scorers, "picker": [p.describe() for p in self.picker]}


def _ref(item: object, known: Mapping[str, object], kind: str) -> PluginRef:
    if isinstance(item, str):
        name, options = item, None
    elif isinstance(item, Mapping) and len(item) == 1:
        ((name, options),) = item.items()
    else:
        raise PolicyError(f"a {kind} is a name or {{name: {{options}}}}, got {item!r}")
    if name not in known:
        raise PolicyError(f"unknown {kind} {name!r} (known: {', '.join(sorted(known))})")
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise PolicyError(f"{kind} {name!r}: options must be a mapping, got {options!r}")
    return PluginRef(name, dict(options))


def _refs(key: str, value: object, known: Mapping[str, object], kind: str
          ) -> tuple[PluginRef, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise PolicyError(f"'{key}' must be a name or a non-empty list, got {value!r}")
    return tuple(_ref(item, known, kind) for item in items)


def _weight(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value) or value <= 0:
        raise PolicyError(f"scorer {name!r}: the weight must be a number above 0, got {value!r}")
    return float(value)


def _scorers(value: object) -> tuple[tuple[PluginRef, float], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise PolicyError(f"'scorers' must map scorer names to weights, got {value!r}")
    out = []
    for name, spec in value.items():
        if isinstance(spec, Mapping):
            options = dict(spec)
            weight = _weight(name, options.pop("weight", None))
        else:
            options, weight = {}, _weight(name, spec)
        out.append((_ref({name: options}, SCORERS, "scorer"), weight))
    return tuple(out)


def parse_profile(data: object, *, name: str, kind: str = "profile",
                  path: str | None = None) -> Profile:
    """Check a profile's structure and plugin names; ``name`` is the default name."""
    if not isinstance(data, Mapping):
        raise PolicyError(f"a profile is a mapping with {', '.join(sorted(_KEYS))}, "
                          f"got {type(data).__name__}")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise PolicyError(f"unknown key {', '.join(map(repr, unknown))} "
                          f"(known: {', '.join(sorted(_KEYS))})")
    name = data.get("name", name)
    if not isinstance(name, str) or not _NAME.match(name):
        raise PolicyError(f"'name' must be letters, digits, '_', '.' or '-', got {name!r}")
    if "picker" not in data:
        raise PolicyError("'picker' is required (e.g. p2c, or max-score with scorers)")
    return Profile(
        name=name,
        filters=_refs("filters", data.get("filters", list(DEFAULT_FILTERS)), FILTERS, "filter"),
        scorers=_scorers(data.get("scorers")),
        picker=_refs("picker", data["picker"], PICKERS, "picker"),
        kind=kind, path=path)


def load_profile(path: str | Path) -> Profile:
    """Read and check a YAML profile; every problem is one :class:`PolicyError` line."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PolicyError(f"cannot read policy profile {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    try:
        return parse_profile(data, name=path.stem, path=str(path))
    except PolicyError as exc:
        raise PolicyError(f"{path}: {exc}") from None
