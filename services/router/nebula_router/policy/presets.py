"""The ``--policy`` names: built-in profiles that route exactly as these names always have.

None has scorers, so no request pays for weighted scoring: each maps to a
direct picker chain (p2c compares two loads). Session affinity on
``x-session-id`` applies under every load-based preset.
"""

from __future__ import annotations

from .plugin import PolicyError
from .profile import Profile, parse_profile

_SPECS: dict[str, dict[str, object]] = {
    "least_load": {"picker": ["session-affinity", "p2c"]},
    "round_robin": {"picker": "round-robin"},
    "random": {"picker": "random"},
    "session": {"picker": [{"session-affinity": {"user": True}}, "p2c"]},
    "prefix": {"picker": ["session-affinity", "prefix-affinity", "p2c"]},
}

PRESETS: dict[str, Profile] = {name: parse_profile(spec, name=name, kind="preset")
                               for name, spec in _SPECS.items()}
POLICIES = tuple(PRESETS)


def preset(name: str) -> Profile:
    try:
        return PRESETS[name]
    except KeyError:
        raise PolicyError(f"unknown policy {name!r} (choose from {', '.join(POLICIES)})"
                         ) from None
