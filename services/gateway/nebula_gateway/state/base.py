"""The one interface every gateway state backend implements, and the types it speaks.

What lives here is per request, large or write-heavy, so not in etcd
(docs/architecture.md section 10): token holds and counters, usage per key and model,
stored Responses. Every method is atomic on its own: a reservation checks and holds all of
its counters at once or none.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..budget import Counter, Refusal
from ..response_store import ENTRY_OVERHEAD, StoredResponse


class StateError(Exception):
    """The state store could not be reached or answered wrongly."""


@dataclass(frozen=True, slots=True)
class UsageRow:
    """Tokens counted for one key (its label) and one model since the store began."""

    key: str
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


UsageDelta = Mapping[tuple[str, str], tuple[int, int, int]]
"""(key label, model) -> (requests, prompt tokens, completion tokens) to add."""


@dataclass(frozen=True, slots=True)
class ResponseLimits:
    """The bounds of the stored Responses (``--store-responses``, ``--response-*``)."""

    capacity: int
    max_bytes: int
    max_entry_bytes: int
    ttl: float

    @property
    def enabled(self) -> bool:
        return self.capacity > 0 and self.max_bytes > 0 and self.max_entry_bytes > 0

    def fits(self, response: bytes, items: bytes) -> bool:
        size = len(response) + len(items) + ENTRY_OVERHEAD
        return size <= min(self.max_entry_bytes, self.max_bytes)


def encode_items(items: Sequence[dict[str, Any]]) -> bytes:
    return json.dumps(list(items), separators=(",", ":")).encode()


class GatewayState(abc.ABC):
    """Token holds, counters, usage and stored Responses, shared by the gateways using it."""

    name: str = "state"
    shared: bool = False
    """Do other gateways see what this one writes (Redis), or is it this gateway's (SQLite)?"""

    def __init__(self, limits: ResponseLimits):
        self.limits = limits

    @property
    def enabled(self) -> bool:
        """Are Responses stored at all?"""
        return self.limits.enabled

    # -- tokens ---------------------------------------------------------------------------
    @abc.abstractmethod
    async def reserve(self, hold_id: str, counters: Sequence[Counter], amount: int,
                      now: float, expires: float) -> Refusal | None:
        """Hold ``amount`` on every counter, or on none: the first counter it would exceed."""

    @abc.abstractmethod
    async def settle(self, hold_id: str, counters: Sequence[Counter], charged: int,
                     now: float) -> None:
        """Drop the hold and add what the request cost (once per hold: the caller's
        :class:`~..tenancy.Hold` settles itself once)."""

    @abc.abstractmethod
    async def add_used(self, counters: Sequence[Counter], tokens: int) -> None:
        """Add tokens served without a hold here (reconciling what a fallback counted)."""

    @abc.abstractmethod
    async def counter(self, counter: Counter, now: float) -> tuple[int, int]:
        """(used, reserved) of one counter now."""

    # -- usage ----------------------------------------------------------------------------
    @abc.abstractmethod
    async def add_usage(self, delta: UsageDelta) -> None: ...

    @abc.abstractmethod
    async def usage(self) -> list[UsageRow]: ...

    # -- stored Responses -----------------------------------------------------------------
    @abc.abstractmethod
    async def put_response(self, response_id: str, owner: str, response: bytes,
                           items: bytes, now: float, session: str = "") -> bool:
        """Keep a response for ``owner`` until ``now + ttl``; False when off or too large.
        ``session``: the session key it was routed on, for its follow-ups."""

    @abc.abstractmethod
    async def get_response(self, response_id: str, owner: str, now: float
                           ) -> StoredResponse | None:
        """The entry when it exists, has not expired and belongs to ``owner``."""

    @abc.abstractmethod
    async def delete_response(self, response_id: str, owner: str) -> bool: ...

    # -- files and batches (the Batch API: :mod:`..batches`) ------------------------------
    # A record is one JSON object of a kind ("file", "file_content", "batch", ...), with
    # its owner (the key hash, as for stored Responses) and creation time (list order).
    @abc.abstractmethod
    async def put_record(self, kind: str, record_id: str, owner: str, data: bytes,
                         created: float) -> None:
        """Create or replace a record (its creation time is kept from the first put)."""

    @abc.abstractmethod
    async def get_record(self, kind: str, record_id: str) -> tuple[str, bytes] | None:
        """(owner, data) of a record, or None; the caller checks the owner."""

    @abc.abstractmethod
    async def list_records(self, kind: str, owner: str | None) -> list[bytes]:
        """The records of a kind (of one owner, or of all), newest first."""

    @abc.abstractmethod
    async def delete_record(self, kind: str, record_id: str) -> bool: ...

    @abc.abstractmethod
    async def claim(self, name: str, holder: str, now: float, ttl: float) -> bool:
        """Take or renew the lease ``name`` until ``now + ttl``: False while another
        holder's lease has not expired (two gateways never run one batch at once)."""

    @abc.abstractmethod
    async def release(self, name: str, holder: str) -> None:
        """Give a lease back (only ``holder``'s)."""

    @abc.abstractmethod
    async def put_line_result(self, batch_id: str, index: int, ok: bool, line: bytes) -> bool:
        """Keep one finished line of a batch; False (and nothing changed) when that line
        has a result already."""

    @abc.abstractmethod
    async def line_results(self, batch_id: str) -> dict[int, tuple[bool, bytes]]:
        """Every finished line of a batch: index -> (succeeded, result line)."""

    @abc.abstractmethod
    async def line_counts(self, batch_id: str) -> tuple[int, int]:
        """(completed, failed) lines of a batch so far."""

    @abc.abstractmethod
    async def drop_line_results(self, batch_id: str) -> None: ...

    # -- life -----------------------------------------------------------------------------
    async def persist(self) -> None:  # noqa: B027  (a backend that writes behind says so)
        """Write what is counted only in memory (called every second and at close)."""

    async def ping(self) -> None:  # noqa: B027  (optional: a backend that can fail says so)
        """Raise :class:`StateError` when the backend cannot be reached."""

    @abc.abstractmethod
    async def close(self) -> None: ...
