"""Stored responses (``previous_response_id``, ``GET``/``DELETE /v1/responses/{id}``): pure.

The gateway keeps them in its state store (:mod:`.state`: SQLite, or Redis shared by
gateways), under the same rules as this in-memory store, which stays the reference.

Bounded by bytes, not by count alone: an entry is kept as the JSON it was sent as
(its size is then exact, where a decoded conversation costs several times its
text), an entry over the per-entry cap is not kept at all, the oldest go first
once the budget is spent, and each expires after the TTL. An entry belongs to
the key that created it: for any other key it does not exist.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

ENTRY_OVERHEAD = 256
"""Bytes counted per entry beside its JSON: the id, the record, the dict slot."""
STORE_BYTES = 64 << 20
"""All stored responses together (``--response-store-bytes``)."""
ENTRY_BYTES = 1 << 20
"""One stored response with its input (``--response-entry-bytes``); a larger one is not kept."""
TTL = 3600.0
"""Seconds a stored response is kept (``--response-ttl``)."""


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """One finished response: the Response object sent and the input items the engine got."""

    owner: str
    expires: float
    response: bytes
    items: bytes
    session: str = ""
    """The session key its turn was routed on (a follow-up's replica affinity)."""

    @property
    def size(self) -> int:
        return len(self.response) + len(self.items) + ENTRY_OVERHEAD

    def input_items(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = json.loads(self.items)
        return items

    def output(self) -> list[dict[str, Any]]:
        response = json.loads(self.response)
        output = response.get("output") if isinstance(response, dict) else None
        return [item for item in output if isinstance(item, dict)] if isinstance(
            output, list) else []


class Lookup(Protocol):
    """What reading a stored response needs (:class:`ResponseStore`, :class:`Prefetched`)."""

    @property
    def enabled(self) -> bool: ...

    def get(self, response_id: str, owner: str) -> StoredResponse | None: ...


@dataclass(frozen=True, slots=True)
class Prefetched:
    """One entry already read from the (async) state store, for code that reads a store."""

    enabled: bool
    response_id: str | None
    entry: StoredResponse | None

    def get(self, response_id: str, owner: str) -> StoredResponse | None:
        if response_id != self.response_id or self.entry is None:
            return None
        return self.entry if self.entry.owner == owner else None


class ResponseStore:
    """Responses by id, within ``max_bytes`` and ``capacity`` entries, for ``ttl`` seconds.

    Entries leave in the order they came (oldest first): with one TTL that is also the
    order they expire in, so expired entries are always at the front.
    """

    def __init__(self, capacity: int, *, max_bytes: int = STORE_BYTES,
                 max_entry_bytes: int = ENTRY_BYTES, ttl: float = TTL,
                 clock: Callable[[], float] = time.monotonic):
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        self.ttl = ttl
        self.clock = clock
        self.bytes = 0
        self._items: OrderedDict[str, StoredResponse] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.capacity > 0 and self.max_bytes > 0 and self.max_entry_bytes > 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, response_id: str, owner: str, response: bytes,
            items: list[dict[str, Any]]) -> bool:
        """Keep a response; False when the store is off or the entry is over the cap."""
        if not self.enabled:
            return False
        entry = StoredResponse(owner, self.clock() + self.ttl, response,
                               json.dumps(items, separators=(",", ":")).encode())
        if entry.size > min(self.max_entry_bytes, self.max_bytes):
            return False
        self._drop(response_id)
        self._items[response_id] = entry
        self.bytes += entry.size
        now = self.clock()
        while self._items:
            oldest = next(iter(self._items.values()))
            if (oldest.expires > now and self.bytes <= self.max_bytes
                    and len(self._items) <= self.capacity):
                break
            self.bytes -= self._items.popitem(last=False)[1].size
        return True

    def get(self, response_id: str, owner: str) -> StoredResponse | None:
        """The entry when it exists, has not expired and belongs to ``owner``."""
        entry = self._items.get(response_id)
        if entry is None:
            return None
        if entry.expires <= self.clock():
            self._drop(response_id)
            return None
        return entry if entry.owner == owner else None

    def delete(self, response_id: str, owner: str) -> bool:
        if self.get(response_id, owner) is None:
            return False
        self._drop(response_id)
        return True

    def _drop(self, response_id: str) -> None:
        entry = self._items.pop(response_id, None)
        if entry is not None:
            self.bytes -= entry.size
