"""Retry budgets: a total outage must not multiply the traffic sent to a provider.

Per provider, retries in the last ``window_s`` may not exceed
``floor + ratio × requests`` in the same window (Finagle's RetryBudget and
Envoy's retry budget use ratio 0.2 with a small floor). A retry the budget
refuses returns the original error, marked as such.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from ai_gateway.resilience.clock import Clock


@dataclass(frozen=True, slots=True)
class BudgetSnapshot:
    requests: int
    retries: int
    allowed: float


class RetryBudget:
    def __init__(self, ratio: float, floor: int, window_s: float, clock: Clock) -> None:
        self.ratio = ratio
        self.floor = floor
        self.window_s = window_s
        self._clock = clock
        self._requests: deque[float] = deque()
        self._retries: deque[float] = deque()

    def record_request(self) -> None:
        """A first attempt: it earns ``ratio`` of a retry."""
        self._prune()  # amortised O(1); keeps memory bounded by the window, not by uptime
        self._requests.append(self._clock.now())

    def try_retry(self) -> bool:
        """Spend one retry if the budget allows it."""
        self._prune()
        if len(self._retries) >= self.floor + self.ratio * len(self._requests):
            return False
        self._retries.append(self._clock.now())
        return True

    def snapshot(self) -> BudgetSnapshot:
        self._prune()
        return BudgetSnapshot(len(self._requests), len(self._retries), self.floor + self.ratio * len(self._requests))

    def _prune(self) -> None:
        horizon = self._clock.now() - self.window_s
        for times in (self._requests, self._retries):
            while times and times[0] <= horizon:
                times.popleft()
