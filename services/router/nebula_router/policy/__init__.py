"""Routing policy: pure filters, scorers and pickers over :class:`Candidate` objects."""

from .candidate import Candidate
from .outlier import OutlierPolicy
from .pipeline import POLICIES, Pipeline, RouteKeys, prefix_text, session_key

__all__ = ["POLICIES", "Candidate", "OutlierPolicy", "Pipeline", "RouteKeys", "prefix_text",
           "session_key"]
