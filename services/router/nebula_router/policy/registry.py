"""Every plugin by the name profiles use: adding a policy is a module and one line here."""

from __future__ import annotations

from .filters import not_ejected, not_overloaded, ready
from .pickers import max_score, p2c, random, round_robin
from .pickers import prefix_affinity as prefix_picker
from .pickers import session_affinity as session_picker
from .plugin import FilterFactory, PickerFactory, ScorerFactory
from .scorers import load
from .scorers import prefix_affinity as prefix_scorer
from .scorers import session_affinity as session_scorer

FILTERS: dict[str, FilterFactory] = {
    "ready": ready.build,
    "not-ejected": not_ejected.build,
    "not-overloaded": not_overloaded.build,
}

SCORERS: dict[str, ScorerFactory] = {
    "load": load.build,
    "prefix-affinity": prefix_scorer.build,
    "session-affinity": session_scorer.build,
}

PICKERS: dict[str, PickerFactory] = {
    "p2c": p2c.build,
    "round-robin": round_robin.build,
    "random": random.build,
    "max-score": max_score.build,
    "session-affinity": session_picker.build,
    "prefix-affinity": prefix_picker.build,
}
