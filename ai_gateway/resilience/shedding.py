"""Load shedding: a cap on provider calls in flight, overall and per provider.

Past the cap a call waits at most ``max_wait_s`` for a slot, then fails fast with
``overloaded`` and a retry hint, instead of queueing into its own deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ai_gateway.errors import LoadShed

RETRY_HINT_S = 1.0


class ConcurrencyLimiter:
    def __init__(self, total: int, per_provider: int, max_wait_s: float) -> None:
        self.total = total
        self.per_provider = per_provider
        self.max_wait_s = max_wait_s
        self._all = asyncio.Semaphore(total)
        self._by_provider: dict[str, asyncio.Semaphore] = {}
        self.in_flight: dict[str, int] = {}

    async def acquire(self, provider: str, time_left_s: float) -> None:
        """Take a slot (overall and for ``provider``) or raise LoadShed; pair with :meth:`release`."""
        own = self._by_provider.get(provider)
        if own is None:
            own = self._by_provider[provider] = asyncio.Semaphore(self.per_provider)
        give_up_at = asyncio.get_running_loop().time() + min(self.max_wait_s, max(time_left_s, 0.0))
        await self._take(own, give_up_at, provider, self.per_provider, provider)
        try:
            await self._take(self._all, give_up_at, provider, self.total, "all providers")
        except BaseException:
            own.release()
            raise
        self.in_flight[provider] = self.in_flight.get(provider, 0) + 1

    def release(self, provider: str) -> None:
        self.in_flight[provider] -= 1
        self._by_provider[provider].release()
        self._all.release()

    @asynccontextmanager
    async def slot(self, provider: str, time_left_s: float) -> AsyncIterator[None]:
        await self.acquire(provider, time_left_s)
        try:
            yield
        finally:
            self.release(provider)

    @staticmethod
    async def _take(semaphore: asyncio.Semaphore, give_up_at: float, provider: str, limit: int, scope: str) -> None:
        if not semaphore.locked():
            await semaphore.acquire()  # free: returns without suspending
            return
        try:
            async with asyncio.timeout_at(give_up_at):
                await semaphore.acquire()
        except TimeoutError:
            raise LoadShed(
                f"gateway limit of {limit} concurrent calls reached ({scope}); retry shortly",
                provider=provider,
                retry_after_s=RETRY_HINT_S,
            ) from None
