"""The bytes of a stream already sent to the client, kept for a resume.

Appending is all the happy path pays: nothing is parsed until a stream breaks. Past
``limit`` bytes the record is dropped and failover is off for that stream (a resume
would have to re-send a very long answer as a prompt anyway).
"""

from __future__ import annotations

DEFAULT_LIMIT = 1024 * 1024
"""Bytes kept per stream by default (``--stream-failover-bytes``)."""

_DONE_TAIL = 32
"""Bytes of the record's end that may hold the ``data: [DONE]`` frame (with its blank line)."""


class Recorder:
    """What one stream forwarded so far; ``data`` is None once over the limit."""

    __slots__ = ("data", "limit")

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self.data: bytearray | None = bytearray()
        self.limit = limit

    def add(self, chunk: bytes) -> None:
        data = self.data
        if data is not None:
            data += chunk
            if len(data) > self.limit:
                self.data = None

    @property
    def active(self) -> bool:
        """Failover is still possible (the record is within its limit)."""
        return self.data is not None

    def ended(self, tail: bytes = b"") -> bool:
        """The client got the ``[DONE]`` marker (in the record, or in ``tail`` still to send)."""
        if tail.rstrip().endswith(b"[DONE]"):
            return True
        data = self.data
        return data is not None and bytes(data[-_DONE_TAIL:]).rstrip().endswith(b"[DONE]")
