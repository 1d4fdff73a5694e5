"""Retry budget arithmetic: floor + ratio x requests, per window."""

from __future__ import annotations

from ai_gateway.resilience.budget import RetryBudget
from tests.core.fakes import FakeClock


def test_the_floor_allows_a_few_retries_with_no_traffic() -> None:
    budget = RetryBudget(ratio=0.2, floor=3, window_s=10, clock=FakeClock())
    assert [budget.try_retry() for _ in range(4)] == [True, True, True, False]


def test_requests_earn_retries_at_the_ratio() -> None:
    budget = RetryBudget(ratio=0.2, floor=0, window_s=10, clock=FakeClock())
    for _ in range(10):
        budget.record_request()
    assert [budget.try_retry() for _ in range(3)] == [True, True, False]  # 10 x 0.2 = 2
    assert budget.snapshot().allowed == 2.0 and budget.snapshot().retries == 2


def test_the_window_forgets_old_requests_and_retries() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.5, floor=1, window_s=10, clock=clock)
    for _ in range(4):
        budget.record_request()
    assert sum(budget.try_retry() for _ in range(5)) == 3  # 1 + 4 x 0.5
    clock.advance(10.5)
    snapshot = budget.snapshot()
    assert (snapshot.requests, snapshot.retries, snapshot.allowed) == (0, 0, 1.0)
    assert budget.try_retry() and not budget.try_retry()


def test_an_outage_cannot_multiply_traffic() -> None:
    budget = RetryBudget(ratio=0.2, floor=3, window_s=10, clock=FakeClock())
    sent = 0
    for _ in range(1000):  # every call fails and would like 2 retries
        budget.record_request()
        sent += 1
        for _ in range(2):
            if budget.try_retry():
                sent += 1
    assert sent <= 1000 * 1.2 + 3


def test_memory_stays_bounded_by_the_window() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.2, floor=3, window_s=1, clock=clock)
    for _ in range(3000):  # a long healthy run: requests, never a retry
        budget.record_request()
        clock.advance(0.01)
    assert len(budget._requests) <= 101
