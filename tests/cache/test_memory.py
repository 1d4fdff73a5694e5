"""The embedded cache: an LRU bounded by entries and by bytes, with per-entry expiry on an injected clock.

Most tests count an entry as its key's and value's characters only (``entry_overhead=0``), to keep the
arithmetic readable; the last ones check the overhead counted by default against what Python allocates.
"""

from __future__ import annotations

import os
import tracemalloc
from typing import Any

from ai_gateway.cache.memory import ENTRY_OVERHEAD, MemoryBackend
from tests.cache.support import FakeClock

TTL = 60.0


def lru(max_entries: int, max_bytes: int, **kwargs: Any) -> MemoryBackend:
    """An entry counts its key's and value's characters only."""
    return MemoryBackend(max_entries, max_bytes, entry_overhead=0, **kwargs)


async def contents(cache: MemoryBackend, *keys: str) -> dict[str, bytes | None]:
    return {k: await cache.get(k) for k in keys}


async def test_round_trip_and_absent_keys() -> None:
    cache = lru(10, 1000)
    await cache.set("k", b"value", TTL)
    assert await cache.get("k") == b"value"
    assert await cache.get("other") is None
    assert (len(cache), cache.bytes) == (1, 6)  # "k" and "value"


async def test_overwriting_a_key_replaces_it_and_its_size() -> None:
    cache = lru(10, 1000)
    await cache.set("k", b"12345", TTL)
    await cache.set("k", b"12", TTL)
    assert await cache.get("k") == b"12"
    assert (len(cache), cache.bytes) == (1, 3)


async def test_least_recently_used_entry_goes_first_when_entries_are_full() -> None:
    cache = lru(max_entries=2, max_bytes=1000)
    await cache.set("a", b"1", TTL)
    await cache.set("b", b"2", TTL)
    assert await cache.get("a") == b"1"  # "a" is now the most recently used
    await cache.set("c", b"3", TTL)
    assert await contents(cache, "a", "b", "c") == {"a": b"1", "b": None, "c": b"3"}
    assert len(cache) == 2


async def test_least_recently_used_entries_go_first_when_bytes_are_full() -> None:
    cache = lru(max_entries=100, max_bytes=12)
    await cache.set("a", b"aaaa", TTL)
    await cache.set("b", b"bbbb", TTL)
    await cache.get("a")
    await cache.set("c", b"cccccc", TTL)  # 17 bytes: "b" (least recently used) must go
    assert await contents(cache, "a", "b", "c") == {"a": b"aaaa", "b": None, "c": b"cccccc"}
    assert cache.bytes == 12
    await cache.set("d", b"d" * 11, TTL)  # 12 bytes alone: everything else goes
    assert await contents(cache, "a", "c", "d") == {"a": None, "c": None, "d": b"d" * 11}
    assert (len(cache), cache.bytes) == (1, 12)


async def test_a_value_larger_than_the_whole_cache_is_not_stored_and_evicts_nothing() -> None:
    cache = lru(max_entries=100, max_bytes=10)
    await cache.set("a", b"aaaa", TTL)
    await cache.set("huge", b"x" * 7, TTL)  # 11 bytes with its key
    assert await contents(cache, "a", "huge") == {"a": b"aaaa", "huge": None}
    assert cache.bytes == 5


async def test_a_value_too_large_to_keep_still_replaces_the_old_one() -> None:
    """A refresh whose answer cannot be kept must not leave the answer it replaced to be served again."""
    cache = lru(max_entries=100, max_bytes=10)
    await cache.set("a", b"old", TTL)
    await cache.set("a", b"x" * 10, TTL)
    assert await cache.get("a") is None
    assert (len(cache), cache.bytes) == (0, 0)


async def test_entries_expire_after_their_ttl() -> None:
    clock = FakeClock()
    cache = lru(10, 1000, clock=clock)
    await cache.set("short", b"s", 5)
    await cache.set("long", b"l", 50)
    clock.advance(4.99)
    assert await contents(cache, "short", "long") == {"short": b"s", "long": b"l"}
    clock.advance(0.01)
    assert await contents(cache, "short", "long") == {"short": None, "long": b"l"}
    assert (len(cache), cache.bytes) == (1, 5)  # the expired entry is gone, not just hidden
    clock.advance(45)
    assert await cache.get("long") is None
    assert (len(cache), cache.bytes) == (0, 0)


async def test_rewriting_an_entry_restarts_its_ttl() -> None:
    clock = FakeClock()
    cache = lru(10, 1000, clock=clock)
    await cache.set("k", b"1", 10)
    clock.advance(8)
    await cache.set("k", b"2", 10)
    clock.advance(8)
    assert await cache.get("k") == b"2"


async def test_delete_and_close() -> None:
    cache = lru(10, 1000)
    await cache.set("a", b"1", TTL)
    await cache.set("b", b"22", TTL)
    await cache.delete("a")
    await cache.delete("never-there")
    assert await contents(cache, "a", "b") == {"a": None, "b": b"22"}
    assert cache.bytes == 3
    await cache.aclose()
    assert (len(cache), cache.bytes, await cache.get("b")) == (0, 0, None)


async def test_by_default_an_entry_counts_its_key_and_what_python_keeps_for_it() -> None:
    cache = MemoryBackend(10, 10_000)
    await cache.set("key", b"value", TTL)
    assert cache.bytes == 3 + 5 + ENTRY_OVERHEAD
    await cache.set("key", b"v", TTL)
    assert cache.bytes == 3 + 1 + ENTRY_OVERHEAD
    await cache.delete("key")
    assert cache.bytes == 0


async def test_the_byte_budget_bounds_the_memory_the_entries_really_take() -> None:
    """Short answers under real keys: counting the values alone undercounted the memory about twofold."""
    n, answer_bytes = 2000, 300
    cache = MemoryBackend(n, 10**9)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for _ in range(n):
            await cache.set(f"aigw:v1:{os.urandom(32).hex()}", os.urandom(answer_bytes), TTL)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    held = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert 0.85 * held <= cache.bytes <= 1.15 * held, (held, cache.bytes)
    assert cache.bytes > 1.5 * n * answer_bytes
