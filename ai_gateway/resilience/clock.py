"""Time, injectable: the system clock in production, a fake one in tests (no test sleeps)."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK = SystemClock()


class Deadline:
    """One wall-clock budget for a whole tool call, spent by every attempt, wait and fallback."""

    __slots__ = ("_clock", "expires_at", "total_s")

    def __init__(self, total_s: float, clock: Clock = SYSTEM_CLOCK) -> None:
        self._clock = clock
        self.total_s = total_s
        self.expires_at = clock.now() + total_s

    def remaining(self) -> float:
        return self.expires_at - self._clock.now()
