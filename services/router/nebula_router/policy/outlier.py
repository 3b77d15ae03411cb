"""Passive outlier ejection: a small state machine over a candidate, time passed in.

closed --N consecutive failures--> ejected(period) --period over--> half-open
half-open: exactly one probe request is let through; success -> closed (all reset),
failure -> ejected again for twice the period (capped).
"""

from __future__ import annotations

from dataclasses import dataclass

from .candidate import Candidate


@dataclass(frozen=True, slots=True)
class OutlierPolicy:
    eject_after: int = 3
    """Consecutive failures that eject a replica (0 disables ejection)."""
    base_s: float = 5.0
    max_s: float = 120.0
    answering_s: float = 10.0
    """A connect timeout within this long of the replica's last answer is not its failure."""

    def available(self, c: Candidate, now: float) -> bool:
        """True when a request may go to ``c`` (closed, or half-open with no probe out)."""
        if c.ejected_until == 0.0:
            return True
        return now >= c.ejected_until and not c.probing

    def on_attempt(self, c: Candidate, now: float) -> bool:
        """Call when a request is sent to ``c``; returns True when it is the half-open probe."""
        if c.ejected_until != 0.0 and now >= c.ejected_until:
            c.probing = True
            return True
        return False

    def on_success(self, c: Candidate) -> None:
        c.failures = 0
        c.ejected_until = 0.0
        c.ejections = 0
        c.probing = False

    def on_failure(self, c: Candidate, now: float) -> bool:
        """Record a failed attempt; returns True when this failure (re-)ejects ``c``."""
        c.failures += 1
        if self.eject_after <= 0:
            return False
        if c.probing or (c.ejected_until == 0.0 and c.failures >= self.eject_after):
            c.probing = False
            c.ejections += 1
            period = min(self.base_s * (2 ** (c.ejections - 1)), self.max_s)
            c.ejected_until = now + period
            return True
        return False

    def connect_timeout_counts(self, c: Candidate, now: float) -> bool:
        """Does a connect timeout count against ``c``?

        Not while it is answering: a replica that sent an answer's head within
        :attr:`answering_s` is one whose accept queue is full (a storm of new connections),
        not one that is gone, and ejecting it would move the storm onto the others. A host
        that vanished stops answering, so its timeouts count again once that time is over
        (and a refused connection always counts).
        """
        return c.answered_at == 0.0 or now - c.answered_at > self.answering_s

    def on_abandon(self, c: Candidate) -> None:
        """The attempt ended with no verdict (client went away): free the probe slot."""
        c.probing = False

    def state(self, c: Candidate, now: float) -> str:
        if c.ejected_until == 0.0:
            return "closed"
        return "half_open" if now >= c.ejected_until else "ejected"
