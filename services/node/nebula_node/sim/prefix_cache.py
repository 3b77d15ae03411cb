"""A model of vLLM's automatic prefix cache: an LRU of chained prompt-block hashes.

The flattened prompt is cut into blocks of ``block_chars`` characters; block i's
key hashes block i's text together with block i-1's key (as vLLM chains block
hashes), so a block only hits when everything before it matched too. Only full
blocks are cached, as in vLLM. Hits and queries are counted in tokens.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from .tokens import CHARS_PER_TOKEN, count_tokens


@dataclass(frozen=True)
class CacheResult:
    """Outcome of one lookup: prompt tokens queried and how many were cached."""

    query_tokens: int
    hit_tokens: int

    @property
    def uncached_tokens(self) -> int:
        return self.query_tokens - self.hit_tokens


def block_keys(prompt: str, block_chars: int) -> list[bytes]:
    """Chained keys of every full block of ``prompt``."""
    keys: list[bytes] = []
    parent = b""
    for start in range(0, len(prompt) - block_chars + 1, block_chars):
        parent = hashlib.blake2b(parent + prompt[start:start + block_chars].encode(),
                                 digest_size=16).digest()
        keys.append(parent)
    return keys


class PrefixCache:
    """Per-process LRU of ``capacity`` blocks; ``capacity`` 0 disables caching."""

    def __init__(self, capacity: int, block_chars: int = 64) -> None:
        if block_chars <= 0 or block_chars % CHARS_PER_TOKEN:
            raise ValueError(f"block_chars must be a positive multiple of {CHARS_PER_TOKEN}")
        self.capacity = max(0, capacity)
        self.block_chars = block_chars
        self._blocks: OrderedDict[bytes, None] = OrderedDict()
        self.queries = 0
        self.hits = 0

    def __len__(self) -> int:
        return len(self._blocks)

    def lookup_and_insert(self, prompt: str) -> CacheResult:
        """Count the cached leading blocks of ``prompt``, then cache all its full blocks."""
        query = count_tokens(prompt)
        hit_blocks = 0
        if self.capacity:
            keys = block_keys(prompt, self.block_chars)
            blocks = self._blocks
            matching = True
            for key in keys:
                if matching and key in blocks:
                    hit_blocks += 1
                else:
                    matching = False
                blocks[key] = None
                blocks.move_to_end(key)
            while len(blocks) > self.capacity:
                blocks.popitem(last=False)
        hit = min(query, hit_blocks * self.block_chars // CHARS_PER_TOKEN)
        self.queries += query
        self.hits += hit
        return CacheResult(query, hit)

    def clear(self) -> None:
        """Forget every block and zero the counters."""
        self._blocks.clear()
        self.queries = self.hits = 0
