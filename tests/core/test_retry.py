"""The retry policy, on a fake clock: what is retried, how long it waits, and why it stops."""

from __future__ import annotations

import asyncio
import random

import pytest

from ai_gateway.errors import (
    AuthError,
    BadRequest,
    Cancelled,
    ConnectFailed,
    ContentFiltered,
    ContextLengthExceeded,
    GatewayError,
    NotFound,
    Overloaded,
    QuotaExhausted,
    RateLimited,
    UpstreamError,
)
from ai_gateway.resilience.budget import RetryBudget
from ai_gateway.resilience.clock import Deadline
from ai_gateway.resilience.retry import RetryPolicy, call_with_retries
from tests.core.fakes import FakeClock


class Script:
    """An attempt function that fails with the given errors, in order, then answers "ok"."""

    def __init__(self, *errors: GatewayError) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def run(
    script: Script,
    *,
    clock: FakeClock | None = None,
    policy: RetryPolicy | None = None,
    deadline_s: float = 60.0,
    budget: RetryBudget | None = None,
    can_fail_over: bool = False,
):
    clock = clock or FakeClock()
    return call_with_retries(
        script,
        policy=policy or RetryPolicy(rng=random.Random(7)),
        deadline=Deadline(deadline_s, clock),
        budget=budget or RetryBudget(ratio=0.2, floor=100, window_s=10, clock=clock),
        can_fail_over=lambda: can_fail_over,
        clock=clock,
    )


async def test_a_transient_error_is_retried_after_a_jittered_backoff() -> None:
    clock = FakeClock()
    script = Script(UpstreamError("boom", status=500), Overloaded("busy", status=529))
    assert await run(script, clock=clock) == "ok"
    assert script.calls == 3
    assert len(clock.sleeps) == 2
    assert 0 <= clock.sleeps[0] <= 0.2 and 0 <= clock.sleeps[1] <= 0.4  # full jitter: up to base x 2^(n-1)


async def test_retry_after_is_honoured_exactly() -> None:
    clock = FakeClock()
    assert await run(Script(RateLimited("slow", status=429, retry_after_s=2.5)), clock=clock) == "ok"
    assert clock.sleeps == [2.5]


async def test_a_retry_after_shorter_than_the_backoff_waits_the_backoff() -> None:
    """"Retry-After: 0" on every 503 of a failing provider made the retries back to back, every caller at once."""
    clock = FakeClock()
    script = Script(*(Overloaded("busy", status=503, retry_after_s=0.0) for _ in range(2)))
    policy = RetryPolicy(backoff_base_s=1.0, backoff_max_s=4.0, rng=random.Random(7))
    assert await run(script, clock=clock, policy=policy) == "ok"
    expected = random.Random(7)
    assert clock.sleeps == [expected.uniform(0, 1.0), expected.uniform(0, 2.0)]
    assert all(wait > 0 for wait in clock.sleeps)


@pytest.mark.parametrize(
    "error",
    [
        BadRequest("x", status=400),
        BadRequest("x", status=422),
        AuthError("x", status=401),
        AuthError("x", status=403),
        NotFound("x", status=404),
        ContextLengthExceeded("x", status=400),
        ContentFiltered("x"),
        QuotaExhausted("x", status=429),
        Cancelled("x"),
    ],
)
async def test_permanent_errors_are_never_retried(error: GatewayError) -> None:
    script = Script(error)
    with pytest.raises(type(error)):
        await run(script)
    assert script.calls == 1


async def test_persistent_failure_uses_exactly_max_attempts() -> None:
    script = Script(*[UpstreamError("boom", status=500) for _ in range(10)])
    with pytest.raises(UpstreamError) as info:
        await run(script, policy=RetryPolicy(max_attempts=4, rng=random.Random(1)))
    assert script.calls == 4
    assert info.value.not_retried == "all 4 attempts used" and not info.value.not_retried_for_caller


async def test_a_retry_after_beyond_the_cap_fails_at_once_with_the_wait_in_the_error() -> None:
    script = Script(RateLimited("slow", status=429, retry_after_s=60))
    with pytest.raises(RateLimited) as info:
        await run(script)  # default cap 20 s
    assert script.calls == 1
    assert info.value.retry_after_s == 60 and "exceeds the 20s cap" in info.value.not_retried
    assert not info.value.not_retried_for_caller  # the cap is the gateway's, the same for every caller


async def test_a_retry_after_beyond_the_time_left_fails_at_once() -> None:
    script = Script(RateLimited("slow", status=429, retry_after_s=5))
    with pytest.raises(RateLimited) as info:
        await run(script, deadline_s=3)
    assert script.calls == 1 and "time left" in info.value.not_retried
    assert info.value.not_retried_for_caller  # a caller with more time left would have waited and retried


async def test_backoff_never_sleeps_past_the_deadline() -> None:
    clock = FakeClock()
    policy = RetryPolicy(max_attempts=10, backoff_base_s=10, backoff_max_s=10, rng=random.Random(3))
    script = Script(*[ConnectFailed("refused") for _ in range(10)])
    with pytest.raises(ConnectFailed) as info:
        await run(script, clock=clock, policy=policy, deadline_s=1.0)
    assert sum(clock.sleeps) <= 1.0
    assert info.value.not_retried == "no time left for another attempt" and info.value.not_retried_for_caller


async def test_failing_over_beats_backing_off() -> None:
    clock = FakeClock()
    script = Script(UpstreamError("boom", status=500))
    with pytest.raises(UpstreamError) as info:
        await run(script, clock=clock, can_fail_over=True)
    assert script.calls == 1 and clock.sleeps == []
    assert info.value.not_retried == "failed over to another model instead of retrying"
    assert info.value.not_retried_for_caller  # a caller with nowhere to fail over would have retried


async def test_an_exhausted_budget_returns_the_original_error_marked() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.0, floor=1, window_s=10, clock=clock)
    first = Script(UpstreamError("a", status=500), UpstreamError("b", status=500), UpstreamError("c", status=500))
    with pytest.raises(UpstreamError) as info:
        await run(first, clock=clock, budget=budget)
    assert first.calls == 2  # one retry from the floor, then refused
    assert info.value.message == "b" and info.value.not_retried == "retry budget exhausted"
    assert not info.value.not_retried_for_caller  # the budget is the provider's, shared by every caller


async def test_cancellation_during_backoff_stops_retrying() -> None:
    clock = FakeClock()
    started = asyncio.Event()

    class Blocking(FakeClock):
        async def sleep(self, seconds: float) -> None:
            started.set()
            await asyncio.Event().wait()  # a backoff that only ends by cancellation

    blocking = Blocking()
    script = Script(UpstreamError("boom", status=500), UpstreamError("boom", status=500))
    task = asyncio.create_task(run(script, clock=blocking))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert script.calls == 1
    assert clock.sleeps == []


async def test_cancellation_of_an_attempt_is_not_retried() -> None:
    calls = 0

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await run(attempt)  # type: ignore[arg-type]
    assert calls == 1
