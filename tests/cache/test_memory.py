"""The embedded cache: an LRU bounded by entries and by bytes, with per-entry expiry on an injected clock."""

from __future__ import annotations

from ai_gateway.cache.memory import MemoryBackend
from tests.cache.support import FakeClock

TTL = 60.0


async def contents(cache: MemoryBackend, *keys: str) -> dict[str, bytes | None]:
    return {k: await cache.get(k) for k in keys}


async def test_round_trip_and_absent_keys() -> None:
    cache = MemoryBackend(10, 1000)
    await cache.set("k", b"value", TTL)
    assert await cache.get("k") == b"value"
    assert await cache.get("other") is None
    assert (len(cache), cache.bytes) == (1, 5)


async def test_overwriting_a_key_replaces_it_and_its_size() -> None:
    cache = MemoryBackend(10, 1000)
    await cache.set("k", b"12345", TTL)
    await cache.set("k", b"12", TTL)
    assert await cache.get("k") == b"12"
    assert (len(cache), cache.bytes) == (1, 2)


async def test_least_recently_used_entry_goes_first_when_entries_are_full() -> None:
    cache = MemoryBackend(max_entries=2, max_bytes=1000)
    await cache.set("a", b"1", TTL)
    await cache.set("b", b"2", TTL)
    assert await cache.get("a") == b"1"  # "a" is now the most recently used
    await cache.set("c", b"3", TTL)
    assert await contents(cache, "a", "b", "c") == {"a": b"1", "b": None, "c": b"3"}
    assert len(cache) == 2


async def test_least_recently_used_entries_go_first_when_bytes_are_full() -> None:
    cache = MemoryBackend(max_entries=100, max_bytes=10)
    await cache.set("a", b"aaaa", TTL)
    await cache.set("b", b"bbbb", TTL)
    await cache.get("a")
    await cache.set("c", b"cccccc", TTL)  # 14 bytes: "b" (least recently used) must go
    assert await contents(cache, "a", "b", "c") == {"a": b"aaaa", "b": None, "c": b"cccccc"}
    assert cache.bytes == 10
    await cache.set("d", b"dddddddddd", TTL)  # 10 bytes alone: everything else goes
    assert await contents(cache, "a", "c", "d") == {"a": None, "c": None, "d": b"dddddddddd"}
    assert (len(cache), cache.bytes) == (1, 10)


async def test_a_value_larger_than_the_whole_cache_is_not_stored_and_evicts_nothing() -> None:
    cache = MemoryBackend(max_entries=100, max_bytes=10)
    await cache.set("a", b"aaaa", TTL)
    await cache.set("huge", b"x" * 11, TTL)
    assert await contents(cache, "a", "huge") == {"a": b"aaaa", "huge": None}
    assert cache.bytes == 4


async def test_a_value_too_large_to_keep_still_replaces_the_old_one() -> None:
    """A refresh whose answer cannot be kept must not leave the answer it replaced to be served again."""
    cache = MemoryBackend(max_entries=100, max_bytes=10)
    await cache.set("a", b"old", TTL)
    await cache.set("a", b"x" * 11, TTL)
    assert await cache.get("a") is None
    assert (len(cache), cache.bytes) == (0, 0)


async def test_entries_expire_after_their_ttl() -> None:
    clock = FakeClock()
    cache = MemoryBackend(10, 1000, clock=clock)
    await cache.set("short", b"s", 5)
    await cache.set("long", b"l", 50)
    clock.advance(4.99)
    assert await contents(cache, "short", "long") == {"short": b"s", "long": b"l"}
    clock.advance(0.01)
    assert await contents(cache, "short", "long") == {"short": None, "long": b"l"}
    assert (len(cache), cache.bytes) == (1, 1)  # the expired entry is gone, not just hidden
    clock.advance(45)
    assert await cache.get("long") is None
    assert (len(cache), cache.bytes) == (0, 0)


async def test_rewriting_an_entry_restarts_its_ttl() -> None:
    clock = FakeClock()
    cache = MemoryBackend(10, 1000, clock=clock)
    await cache.set("k", b"1", 10)
    clock.advance(8)
    await cache.set("k", b"2", 10)
    clock.advance(8)
    assert await cache.get("k") == b"2"


async def test_delete_and_close() -> None:
    cache = MemoryBackend(10, 1000)
    await cache.set("a", b"1", TTL)
    await cache.set("b", b"22", TTL)
    await cache.delete("a")
    await cache.delete("never-there")
    assert await contents(cache, "a", "b") == {"a": None, "b": b"22"}
    assert cache.bytes == 2
    await cache.aclose()
    assert (len(cache), cache.bytes, await cache.get("b")) == (0, 0, None)
