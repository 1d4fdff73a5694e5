"""Load shedding: caps per provider and overall, a bounded wait, then a fast 'overloaded'."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import pytest

from ai_gateway.errors import LoadShed
from ai_gateway.resilience.shedding import ConcurrencyLimiter


async def test_past_the_provider_cap_a_call_fails_fast_with_a_retry_hint() -> None:
    limiter = ConcurrencyLimiter(total=10, per_provider=2, max_wait_s=0)
    async with AsyncExitStack() as held:
        for _ in range(2):
            await held.enter_async_context(limiter.slot("acme", time_left_s=5))
        assert limiter.in_flight == {"acme": 2}
        with pytest.raises(LoadShed) as info:
            async with limiter.slot("acme", time_left_s=5):
                pass
        assert info.value.code == "overloaded" and info.value.retry_after_s == 1.0
        assert "2 concurrent calls" in info.value.message
        async with limiter.slot("other", time_left_s=5):  # another provider is unaffected
            assert limiter.in_flight["other"] == 1
    assert limiter.in_flight == {"acme": 0, "other": 0}


async def test_the_total_cap_spans_providers() -> None:
    limiter = ConcurrencyLimiter(total=2, per_provider=5, max_wait_s=0)
    async with limiter.slot("a", 5), limiter.slot("b", 5):
        with pytest.raises(LoadShed, match="all providers"):
            async with limiter.slot("c", 5):
                pass


async def test_a_slot_freed_within_the_wait_is_taken() -> None:
    limiter = ConcurrencyLimiter(total=10, per_provider=1, max_wait_s=30)
    release = asyncio.Event()
    entered = asyncio.Event()

    async def holder() -> None:
        async with limiter.slot("acme", 5):
            entered.set()
            await release.wait()

    task = asyncio.create_task(holder())
    await entered.wait()
    slot = limiter.slot("acme", 5)
    waiter = asyncio.create_task(slot.__aenter__())
    await asyncio.sleep(0)  # one loop turn: the waiter reaches the full semaphore
    assert not waiter.done()  # queued, not refused
    release.set()
    await waiter
    await task
    assert limiter.in_flight["acme"] == 1
    await slot.__aexit__(None, None, None)
    assert limiter.in_flight["acme"] == 0


async def test_the_wait_never_exceeds_the_time_left() -> None:
    limiter = ConcurrencyLimiter(total=10, per_provider=1, max_wait_s=30)
    async with limiter.slot("acme", 5):
        with pytest.raises(LoadShed):
            async with limiter.slot("acme", time_left_s=0):  # no time left: refuse at once
                pass
