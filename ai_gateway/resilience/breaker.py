"""Circuit breakers: pybreaker's state machine, made correct for asyncio.

pybreaker cannot wrap an ``async def`` (its decorators only time the creation
of the coroutine) and counts every ``BaseException``, cancellation included, as
a failure. So the provider call runs *outside* pybreaker, and its outcome is
then replayed through pybreaker's public ``calling()`` API:

- a failure whose error ``trips_breaker`` counts as a failure;
- a success counts as a success;
- a cancellation, or an error that does not trip (a 400, a 401...), counts as
  neither: it is simply not replayed.

Half-open admits at most ``half_open_calls`` trial calls at once (pybreaker
would admit every caller); all of them must succeed to close the circuit, and
any failure opens it again. Results that arrive while the circuit is open are
not counted. The clock is injected through the storage, so every transition
can be tested without waiting.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any, Literal

from ai_gateway.errors import CircuitOpen, GatewayError
from ai_gateway.resilience.clock import Clock

log = logging.getLogger(__name__)

State = Literal["closed", "open", "half-open"]
Result = Literal["success", "failure", "neutral"]


@functools.cache
def _pybreaker() -> tuple[ModuleType, type, type]:
    """pybreaker and our two subclasses, loaded when the first circuit is needed.

    pybreaker imports redis whenever it is installed (~100 ms), which would
    otherwise sit on the server's start-up path.
    """
    import pybreaker

    class ClockStorage(pybreaker.CircuitMemoryStorage):
        """pybreaker compares ``opened_at`` with ``datetime.now()``; report it relative to our clock."""

        def __init__(self, clock: Clock) -> None:
            super().__init__(pybreaker.STATE_CLOSED)
            self._clock = clock
            self.opened_mono: float | None = None

        @property
        def opened_at(self) -> datetime | None:
            if self.opened_mono is None:
                return None
            return datetime.now(UTC) - timedelta(seconds=self._clock.now() - self.opened_mono)

        @opened_at.setter
        def opened_at(self, value: datetime) -> None:
            self.opened_mono = self._clock.now()

    class StateLog(pybreaker.CircuitBreakerListener):
        def state_change(self, cb: Any, old_state: object, new_state: object) -> None:
            old = getattr(old_state, "name", old_state)
            new = getattr(new_state, "name", new_state)
            log.warning("circuit %s: %s -> %s", cb.name, old, new)

    return pybreaker, ClockStorage, StateLog


class _Replayed(Exception):
    """Carries a real failure through pybreaker's state machine."""


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    name: str
    state: State
    failures: int
    seconds_to_probe: float | None
    trial_calls: int
    last_error: dict[str, object] | None


class Breaker:
    def __init__(self, name: str, *, fail_max: int, reset_s: float, half_open_calls: int, clock: Clock) -> None:
        pybreaker, clock_storage, state_log = _pybreaker()
        self.name = name
        self.half_open_calls = half_open_calls
        self._storage = clock_storage(clock)
        self._clock = clock
        self._open: str = pybreaker.STATE_OPEN
        self._refused: type[Exception] = pybreaker.CircuitBreakerError
        self._cb = pybreaker.CircuitBreaker(
            fail_max=fail_max,
            reset_timeout=reset_s,
            success_threshold=half_open_calls,
            state_storage=self._storage,
            name=name,
            throw_new_error_on_trip=False,
            listeners=[state_log()],
        )
        self._trials = 0
        self.last_error: GatewayError | None = None

    @property
    def state(self) -> State:
        raw = self._cb.current_state
        if raw == self._open and self.seconds_to_probe() <= 0:
            return "half-open"  # pybreaker flips lazily, on the next call; callers see it now
        return raw  # type: ignore[return-value]

    @property
    def idle(self) -> bool:
        """Holds nothing worth keeping: closed, no failure counted, no trial running."""
        return self.state == "closed" and self._cb.fail_counter == 0 and self._trials == 0

    def seconds_to_probe(self) -> float:
        opened = self._storage.opened_mono
        if self._cb.current_state != self._open or opened is None:
            return 0.0
        return max(0.0, opened + self._cb.reset_timeout - self._clock.now())

    def admits(self) -> bool:
        """Whether :meth:`acquire` would admit a call now: closed, or half-open with a trial slot free."""
        state = self.state
        return state == "closed" or (state == "half-open" and self._trials < self.half_open_calls)

    def acquire(self) -> bool:
        """Admit a call or raise CircuitOpen. Returns True when the call is a half-open trial."""
        state = self.state
        if state == "closed":
            return False
        if state == "half-open" and self._trials < self.half_open_calls:
            self._trials += 1
            return True
        raise self.refusal()

    def release(self, trial: bool, result: Result, error: GatewayError | None = None) -> None:
        """Record how an admitted call ended."""
        if trial:
            self._trials -= 1
        if result == "neutral" or (not trial and self.state != "closed"):
            return  # a call admitted before the circuit opened says nothing about it now
        if result == "success" and not trial and self._cb.fail_counter == 0:
            return  # closed with no failures to reset: replaying it would change nothing
        if error is not None:
            self.last_error = error
        try:
            with self._cb.calling():
                if result == "failure":
                    raise _Replayed
        except (_Replayed, self._refused):
            pass  # the failure was counted; or the circuit opened meanwhile and late results do not count

    def snapshot(self) -> BreakerSnapshot:
        return BreakerSnapshot(
            name=self.name,
            state=self.state,
            failures=self._cb.fail_counter,
            seconds_to_probe=round(self.seconds_to_probe(), 3) if self.state == "open" else None,
            trial_calls=self._trials,
            last_error=self.last_error.to_dict() if self.last_error else None,
        )

    def refusal(self) -> CircuitOpen:
        """The error a refused call gets: the circuit's state, the time to the next probe, the last error."""
        state = self.state
        last = f"; last error: {self.last_error.code}: {self.last_error.message}" if self.last_error else ""
        if state == "open":
            wait = self.seconds_to_probe()
            message = f"circuit open for {self.name}, next probe in {wait:.1f}s{last}"
        else:
            wait = 0.0
            message = f"circuit half-open for {self.name}: {self._trials} trial call(s) already in flight{last}"
        error = CircuitOpen(message, provider=self.name.partition("/")[0], retry_after_s=wait)
        return error


# Circuits kept at once. Per-model circuits are keyed by whatever model ids callers send; past this many, a new
# one forgets the least recently used circuit that holds nothing (closed, no failures counted, no trial).
MAX_CIRCUITS = 1024


class BreakerBoard:
    """One breaker per provider, or per provider/model where a provider's models fail independently."""

    def __init__(self, *, fail_max: int, reset_s: float, half_open_calls: int, clock: Clock) -> None:
        self._settings = {"fail_max": fail_max, "reset_s": reset_s, "half_open_calls": half_open_calls}
        self._clock = clock
        self._breakers: dict[str, Breaker] = {}

    def get(self, key: str) -> Breaker:
        breaker = self._breakers.pop(key, None)
        if breaker is None:
            if len(self._breakers) >= MAX_CIRCUITS:
                self._forget_one_idle()
            breaker = Breaker(key, clock=self._clock, **self._settings)  # type: ignore[arg-type]
        self._breakers[key] = breaker  # now the most recently used
        return breaker

    def _forget_one_idle(self) -> None:
        # A circuit with state (open, failures counted, a trial running) is never forgotten: that would reopen a
        # failing model to traffic. With none idle the board grows, bounded by the models really failing.
        for key, breaker in self._breakers.items():
            if breaker.idle:
                del self._breakers[key]
                return

    def snapshot(self) -> list[BreakerSnapshot]:
        return [self._breakers[key].snapshot() for key in sorted(self._breakers)]
