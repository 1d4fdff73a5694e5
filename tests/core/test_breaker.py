"""Every breaker transition, on a fake clock, including exactly N half-open permits under concurrency."""

from __future__ import annotations

import asyncio

import pytest

from ai_gateway.errors import AuthError, BadRequest, CircuitOpen, RateLimited, UpstreamError
from ai_gateway.resilience import breaker as breaker_module
from ai_gateway.resilience.breaker import Breaker, BreakerBoard
from tests.core.fakes import FakeClock

BOOM = UpstreamError("boom", status=500, provider="acme")


def breaker(clock: FakeClock, *, fail_max: int = 3, reset_s: float = 30, half_open_calls: int = 1) -> Breaker:
    return Breaker("acme", fail_max=fail_max, reset_s=reset_s, half_open_calls=half_open_calls, clock=clock)


def fail(b: Breaker, error=BOOM) -> None:
    trial = b.acquire()
    b.release(trial, "failure" if error.trips_breaker else "neutral", error)


def succeed(b: Breaker) -> None:
    b.release(b.acquire(), "success")


def test_closed_counts_consecutive_failures_and_a_success_resets_them() -> None:
    b = breaker(FakeClock())
    fail(b)
    fail(b)
    succeed(b)
    fail(b)
    fail(b)
    assert b.state == "closed" and b.snapshot().failures == 2


def test_fail_max_failures_open_it_and_it_refuses_with_the_time_to_the_probe() -> None:
    clock = FakeClock()
    b = breaker(clock)
    for _ in range(3):
        fail(b)
    assert b.state == "open"
    clock.advance(10)
    with pytest.raises(CircuitOpen) as info:
        b.acquire()
    assert info.value.retry_after_s == pytest.approx(20)
    assert info.value.provider == "acme"
    assert "next probe in 20.0s" in info.value.message and "upstream_error: boom" in info.value.message


def test_after_the_reset_time_a_trial_success_closes_it() -> None:
    clock = FakeClock()
    b = breaker(clock)
    for _ in range(3):
        fail(b)
    clock.advance(30)
    assert b.state == "half-open"
    succeed(b)
    assert b.state == "closed" and b.snapshot().failures == 0


def test_a_failed_trial_opens_it_again_for_a_full_reset_period() -> None:
    clock = FakeClock()
    b = breaker(clock)
    for _ in range(3):
        fail(b)
    clock.advance(31)
    fail(b)
    assert b.state == "open" and b.seconds_to_probe() == pytest.approx(30)


def test_client_errors_and_cancellations_never_trip_it() -> None:
    b = breaker(FakeClock(), fail_max=2)
    for error in (BadRequest("x", status=400), AuthError("x", status=401), BadRequest("x", status=422)):
        fail(b, error)
    b.release(b.acquire(), "neutral")  # a cancelled call
    assert b.state == "closed" and b.snapshot().failures == 0
    fail(b, RateLimited("slow", status=429))  # 429 is the provider saying it is overloaded: it counts
    assert b.snapshot().failures == 1


def test_a_neutral_outcome_does_not_reset_the_failure_count() -> None:
    b = breaker(FakeClock(), fail_max=3)
    fail(b)
    fail(b)
    fail(b, BadRequest("x", status=400))
    fail(b)
    assert b.state == "open"


@pytest.mark.parametrize("permits", [1, 3])
async def test_half_open_admits_exactly_n_trials_while_everyone_else_fails_fast(permits: int) -> None:
    clock = FakeClock()
    b = breaker(clock, half_open_calls=permits)
    for _ in range(3):
        fail(b)
    clock.advance(30)
    release = asyncio.Event()
    admitted: list[bool] = []
    refused: list[CircuitOpen] = []

    async def caller() -> None:
        try:
            trial = b.acquire()
        except CircuitOpen as exc:
            refused.append(exc)
            return
        admitted.append(trial)
        await release.wait()
        b.release(trial, "success")

    tasks = [asyncio.create_task(caller()) for _ in range(10)]
    await asyncio.sleep(0)  # let all ten reach the gate
    assert admitted == [True] * permits
    assert len(refused) == 10 - permits
    assert all("trial call(s) already in flight" in e.message for e in refused)
    release.set()
    await asyncio.gather(*tasks)
    assert b.state == "closed"  # all permitted trials succeeded


async def test_cancelled_trials_give_their_permit_back() -> None:
    clock = FakeClock()
    b = breaker(clock)
    for _ in range(3):
        fail(b)
    clock.advance(30)
    trial = b.acquire()
    with pytest.raises(CircuitOpen):
        b.acquire()
    b.release(trial, "neutral")  # the trial was cancelled: neither success nor failure
    assert b.state == "half-open"
    assert b.acquire() is True


def test_results_arriving_while_open_do_not_count() -> None:
    clock = FakeClock()
    b = breaker(clock)
    in_flight = b.acquire()  # admitted while closed
    for _ in range(3):
        fail(b)
    b.release(in_flight, "success")  # a late success must not close an open circuit
    assert b.state == "open"


def test_a_late_result_after_the_reset_time_does_not_close_it_without_a_trial() -> None:
    clock = FakeClock()
    b = breaker(clock)
    in_flight = b.acquire()  # admitted while closed
    for _ in range(3):
        fail(b)
    clock.advance(31)  # half-open by now
    b.release(in_flight, "success")
    assert b.state == "half-open"  # only a trial call may close it
    succeed(b)
    assert b.state == "closed"


def test_the_board_forgets_only_idle_circuits_past_its_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Per-model circuits are keyed by the model ids callers send; invented ids grew the board without end."""
    monkeypatch.setattr(breaker_module, "MAX_CIRCUITS", 3)
    board = BreakerBoard(fail_max=2, reset_s=30, half_open_calls=1, clock=FakeClock())
    failing = board.get("p/failing")
    fail(failing)
    opened = board.get("p/opened")
    fail(opened), fail(opened)
    idle = board.get("p/idle")
    board.get("p/failing")  # used again: still counting its failure
    board.get("p/new")
    assert [b.name for b in board.snapshot()] == ["p/failing", "p/new", "p/opened"]  # the idle one went
    assert board.get("p/failing") is failing and failing.snapshot().failures == 1
    assert board.get("p/opened").state == "open"
    assert board.get("p/idle") is not idle  # a fresh circuit: it held nothing to lose

    fail(board.get("p/new"))
    fail(board.get("p/idle"))
    board.get("p/another")  # none idle: nothing with state is forgotten, the board grows
    assert len(board.snapshot()) == 5
