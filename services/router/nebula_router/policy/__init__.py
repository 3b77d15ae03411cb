"""Routing policy: filters, scorers and pickers as plugins over :class:`Candidate` objects.

``plugin`` holds the three interfaces, ``registry`` the names profiles use,
``filters/``, ``scorers/`` and ``pickers/`` one module per plugin, ``profile``
the YAML format, ``presets`` the ``--policy`` names, ``pipeline`` the running
policy. Nothing here does IO but reading a profile file at start.
"""

from .candidate import Candidate
from .outlier import OutlierPolicy
from .pipeline import Pipeline
from .plugin import Filter, Picker, PolicyError, Scorer, Settings
from .presets import POLICIES, PRESETS
from .profile import Profile, load_profile, parse_profile
from .request import KeyReader, Need, RouteKeys, prefix_text

__all__ = ["POLICIES", "PRESETS", "Candidate", "Filter", "KeyReader", "Need", "OutlierPolicy",
           "Picker", "Pipeline", "PolicyError", "Profile", "RouteKeys", "Scorer", "Settings",
           "load_profile",
           "parse_profile", "prefix_text"]
