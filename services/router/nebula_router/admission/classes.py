"""Priority classes and the queue's per-class bounds (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field

CLASSES = ("interactive", "default", "batch")
"""Highest first: a class is served only when every class above it has nobody waiting
(aging aside)."""
DEFAULT_CLASS = 1


def class_of(priority: str | None) -> int:
    """The class index of an ``x-nebula-priority`` value; unknown or absent: ``default``."""
    if priority:
        value = priority.strip().lower()
        for i, name in enumerate(CLASSES):
            if value == name:
                return i
    return DEFAULT_CLASS


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """Bounds of one model's queue in one router."""

    max_queue: int = 256
    """Requests waiting per model; past it a new one gets 429 (queue full)."""
    timeouts: tuple[float, ...] = field(default=(30.0, 60.0, 120.0))
    """Seconds a request of each class may wait (then 503), ``CLASSES`` order."""
    aging_s: float = 10.0
    """Every ``aging_s`` seconds waited lifts a request one class (0: no aging), so a
    batch request is never starved by a steady stream of interactive ones."""

    def __post_init__(self) -> None:
        if len(self.timeouts) != len(CLASSES):
            raise ValueError(f"need {len(CLASSES)} class timeouts, got {len(self.timeouts)}")
        if self.max_queue < 0 or self.aging_s < 0 or min(self.timeouts) <= 0:
            raise ValueError("queue bounds must be positive")

    def timeout_of(self, cls: int) -> float:
        return self.timeouts[cls]

    def effective_class(self, cls: int, waited: float) -> int:
        """The class a request of class ``cls`` competes in after ``waited`` seconds."""
        if self.aging_s <= 0 or cls == 0:
            return cls
        return max(0, cls - int(waited // self.aging_s))
