"""The embedded cache: an in-process LRU bounded by entries and by bytes, with per-entry expiry."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

# What an entry costs beyond its key's and value's characters, measured with tracemalloc on CPython 3.11:
# the str and bytes headers (49 + 33), the (value, expiry) tuple and float, and the LRU's node. Counted so
# that the byte budget bounds the memory the cache really holds: for short answers, the values alone are
# less than half of it.
ENTRY_OVERHEAD = 230


class MemoryBackend:
    name = "memory"

    def __init__(
        self,
        max_entries: int,
        max_bytes: int,
        clock: Callable[[], float] = time.monotonic,
        *,
        entry_overhead: int = ENTRY_OVERHEAD,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._clock = clock
        self._overhead = entry_overhead
        self._items: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self.bytes = 0  # what the entries take: keys, values and overhead

    async def get(self, key: str) -> bytes | None:
        item = self._items.get(key)
        if item is None:
            return None
        value, expires_at = item
        if expires_at <= self._clock():
            self._drop(key)
            return None
        self._items.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl_s: float, *, replace: bool = False) -> None:
        """``replace`` (a refresh's answer) matters only to a shared cache; here every set replaces."""
        if key in self._items:  # first: a value too large to keep still supersedes the old one
            self._drop(key)
        size = self._size(key, value)
        if size > self.max_bytes:
            return
        self._items[key] = (value, self._clock() + ttl_s)
        self.bytes += size
        while len(self._items) > self.max_entries or self.bytes > self.max_bytes:
            self._drop(next(iter(self._items)))  # least recently used first

    def entry(self, key: str) -> tuple[bytes, float] | None:
        """The value and its seconds left to live, without counting as a use (for copying it elsewhere)."""
        item = self._items.get(key)
        if item is None:
            return None
        left = item[1] - self._clock()
        return (item[0], left) if left > 0 else None

    async def delete(self, key: str) -> None:
        if key in self._items:
            self._drop(key)

    def __len__(self) -> int:
        return len(self._items)

    def _drop(self, key: str) -> None:
        value, _ = self._items.pop(key)
        self.bytes -= self._size(key, value)

    def _size(self, key: str, value: bytes) -> int:
        return len(key) + len(value) + self._overhead

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0

    async def aclose(self) -> None:
        self.clear()
