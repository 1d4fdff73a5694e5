"""Retries, at one layer only: transient errors, full-jitter backoff, Retry-After, the deadline.

A failed attempt is retried only when all of these hold (checked in this order;
the first that fails is recorded on the error as ``not_retried``):

1. the error is retryable (rate limited, overloaded, 5xx, timeout, connect,
   malformed response); never a cancellation, a 4xx, a context-length or
   content-filter error, or an exhausted quota;
2. attempts remain (``max_attempts``);
3. no other candidate can answer: when the strategy can fail over (a later
   model in ``first_available``, another racer still running), it does so at
   once instead of waiting here;
4. the wait fits: a Retry-After longer than ``retry_after_cap_s`` or than the
   time left fails the model now, with ``retry_after_s`` in the error; a
   backoff waits at most half the time that would remain after one minimal
   attempt (``min_attempt_s``), and gives up when less than that is left;
5. the provider's retry budget allows it.

The wait is full jitter, uniform(0, min(backoff_max_s, backoff_base_s × 2^(retry-1))),
or the provider's Retry-After when that is longer.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, stop_never

from ai_gateway.errors import GatewayError
from ai_gateway.resilience.budget import RetryBudget
from ai_gateway.resilience.clock import Clock, Deadline

T = TypeVar("T")

NO_TIME_LEFT = "no time left for another attempt"
FAILED_OVER = "failed over to another model instead of retrying"
CANCELLED_IN_BACKOFF = "the call was decided while this model waited to retry"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 3
    backoff_base_s: float = 0.2
    backoff_max_s: float = 5.0
    retry_after_cap_s: float = 20.0
    min_attempt_s: float = 0.05
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def backoff(self, retry_number: int) -> float:
        """Full jitter (AWS's recommendation): spreads retries of many callers evenly."""
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2 ** (retry_number - 1))
        return self.rng.uniform(0, ceiling)


async def call_with_retries(
    attempt: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    deadline: Deadline,
    budget: RetryBudget,
    can_fail_over: Callable[[], bool],
    clock: Clock,
    resume: tuple[GatewayError, int] | None = None,
) -> T:
    """Run ``attempt`` until it succeeds or the policy says stop.

    The caller records first attempts in ``budget`` (only requests really sent earn retries).

    ``resume`` (an error and the attempts already made) picks up a model that gave its retry up to fail over,
    when nobody it failed over to answered: the retry is decided now, as if that error had just happened, and
    the attempts already made count against ``max_attempts``.

    The last error is re-raised (with ``not_retried`` saying why it was not
    retried); a cancellation propagates at once and is never retried.

    The first attempt runs directly: setting tenacity up costs ~40 µs, paid only
    once a retry is decided; tenacity then drives attempts 2..max_attempts.
    """
    planned_wait: list[float] = [0.0]

    def should_retry(error: BaseException | None, attempt_number: int) -> bool:
        if not isinstance(error, GatewayError) or not error.retryable or error.not_retried:
            return False  # includes asyncio.CancelledError, and an error already given up on
        reason, wait, mine = _decide(error, attempt_number)
        if reason is not None:
            error.not_retried = reason
            error.not_retried_for_caller = mine
            return False
        planned_wait[0] = wait
        return True

    def _decide(error: GatewayError, attempt_number: int) -> tuple[str | None, float, bool]:
        """(why not to retry, or None; the wait before the retry; whether the reason is this caller's alone:
        its strategy or its deadline, not the provider's verdict nor this process's budget or cap)."""
        if attempt_number >= policy.max_attempts:
            return f"all {policy.max_attempts} attempts used", 0.0, False
        if can_fail_over():
            return FAILED_OVER, 0.0, True
        left = deadline.remaining() - policy.min_attempt_s  # time that can go to waiting
        if error.retry_after_s is not None:
            if error.retry_after_s > policy.retry_after_cap_s:
                return f"Retry-After {error.retry_after_s:g}s exceeds the {policy.retry_after_cap_s:g}s cap", 0.0, False
            if error.retry_after_s > left:
                return f"Retry-After {error.retry_after_s:g}s exceeds the time left", 0.0, True
            # Never below the backoff: "Retry-After: 0" from a failing provider made the retries back to back.
            wait = max(error.retry_after_s, min(policy.backoff(attempt_number), left / 2))
        else:
            if left < policy.min_attempt_s:  # (halving below would approach the deadline forever)
                return NO_TIME_LEFT, 0.0, True
            # Near the deadline, wait at most half the spare time so the next attempt keeps some of it.
            wait = min(policy.backoff(attempt_number), left / 2)
        if not budget.try_retry():
            return "retry budget exhausted", 0.0, False
        return None, wait, False

    if resume is None:
        made = 1
        try:
            return await attempt()
        except GatewayError as error:
            if not should_retry(error, made):
                raise
    else:
        error, made = resume
        error.not_retried, error.not_retried_for_caller = None, False
        if not should_retry(error, made):
            raise error
    await clock.sleep(planned_wait[0])

    def retry_after_first(state: RetryCallState) -> bool:
        # tenacity counts from 1 but starts at the attempt after the ``made`` ones
        return should_retry(state.outcome.exception() if state.outcome else None, state.attempt_number + made)

    retrying = AsyncRetrying(
        retry=retry_after_first,
        wait=lambda state: planned_wait[0],
        stop=stop_never,  # should_retry already decides when to stop
        sleep=clock.sleep,
        reraise=True,
    )
    return await retrying(attempt)
