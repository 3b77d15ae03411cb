"""The sim's prefix-cache model: chained block hashes in an LRU, counted in tokens."""

from __future__ import annotations

import pytest

from nebula_node.sim.prefix_cache import PrefixCache, block_keys

SYSTEM = "You are a helpful assistant. " * 10  # 290 chars -> 4 full 64-char blocks


def test_first_query_misses_then_the_shared_prefix_hits() -> None:
    cache = PrefixCache(capacity=100, block_chars=64)
    first = cache.lookup_and_insert(SYSTEM + "question one")
    assert first.hit_tokens == 0
    assert first.query_tokens == first.uncached_tokens == -(-len(SYSTEM + "question one") // 4)
    second = cache.lookup_and_insert(SYSTEM + "question two, longer")
    assert second.hit_tokens == 4 * 16  # four full blocks of the shared system prompt
    assert second.uncached_tokens == second.query_tokens - 64
    assert cache.queries == first.query_tokens + second.query_tokens
    assert cache.hits == 64


def test_blocks_are_chained_a_changed_start_misses_everything() -> None:
    cache = PrefixCache(capacity=100, block_chars=64)
    cache.lookup_and_insert("A" * 64 + "B" * 64)
    # Same second block after a different first block: no hit (chained hashes).
    assert cache.lookup_and_insert("C" * 64 + "B" * 64).hit_tokens == 0
    assert cache.lookup_and_insert("A" * 64 + "B" * 64).hit_tokens == 32
    assert block_keys("A" * 64 + "B" * 64, 64)[1] != block_keys("C" * 64 + "B" * 64, 64)[1]


def test_partial_blocks_are_not_cached() -> None:
    cache = PrefixCache(capacity=100, block_chars=64)
    cache.lookup_and_insert("x" * 63)
    assert len(cache) == 0
    assert cache.lookup_and_insert("x" * 63).hit_tokens == 0


def test_lru_evicts_the_least_recently_used_prompt() -> None:
    cache = PrefixCache(capacity=2, block_chars=64)
    a, b, c = "a" * 64, "b" * 64, "c" * 64
    cache.lookup_and_insert(a)
    cache.lookup_and_insert(b)
    assert cache.lookup_and_insert(a).hit_tokens == 16  # touches a: b is now oldest
    cache.lookup_and_insert(c)  # evicts b
    assert len(cache) == 2
    assert cache.lookup_and_insert(a).hit_tokens == 16
    assert cache.lookup_and_insert(b).hit_tokens == 0


def test_capacity_zero_disables_caching_but_still_counts_queries() -> None:
    cache = PrefixCache(capacity=0)
    cache.lookup_and_insert(SYSTEM)
    assert cache.lookup_and_insert(SYSTEM).hit_tokens == 0
    assert len(cache) == 0
    assert cache.queries == 2 * -(-len(SYSTEM) // 4)


def test_block_size_must_be_whole_tokens() -> None:
    with pytest.raises(ValueError):
        PrefixCache(10, block_chars=30)
