"""A provider that takes requests and never answers opens its circuit, even when only deadlines cut it.

The dispatcher measures an attempt on its own clock (a fake one here, advanced while the adapter hangs); the
call's deadline is real and short, so each cut happens at once without any test sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from ai_gateway.dispatch import Dispatcher, Resilience
from ai_gateway.outcome import Outcome
from ai_gateway.resilience.clock import Deadline
from ai_gateway.settings import Settings
from tests.core.fakes import FakeClock
from tests.core.gated import REQUEST, GatedAdapter


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as http:
        yield http


def open_dispatcher(client: httpx.AsyncClient, clock: FakeClock, **settings: Any) -> Dispatcher:
    # max_attempts=1: a cut is never retried anyway, and each call is one attempt to count.
    settings = {"breaker_fail_max": 2, "max_attempts": 1, **settings}
    resilience = Resilience.from_settings(Settings(_env_file=None, **settings), clock=clock)
    return Dispatcher(lambda: client, resilience, clock=clock.now)


async def cut_after(dispatcher: Dispatcher, gated: GatedAdapter, clock: FakeClock, seconds: float) -> Outcome:
    """One call to the hanging model, cut by its deadline once it has waited ``seconds`` on the dispatcher's clock."""
    target = gated.target("stuck")
    gated.started.clear()
    call = asyncio.create_task(dispatcher.bind(REQUEST, Deadline(0.1))(target))
    await gated.wait_started("stuck")
    clock.advance(seconds)
    return await call


async def test_deadline_cuts_past_slow_call_s_open_the_circuit(client: httpx.AsyncClient) -> None:
    clock, gated = FakeClock(), GatedAdapter()
    dispatcher = open_dispatcher(client, clock)  # slow_call_s: 10 s by default
    for _ in range(2):
        outcome = await cut_after(dispatcher, gated, clock, 12.0)
        assert outcome.error is not None and outcome.error.code == "deadline"  # the caller still sees its deadline
    breaker = dispatcher.resilience.breakers.get("gated")
    assert breaker.state == "open"
    assert breaker.last_error is not None and breaker.last_error.code == "timeout"
    assert "no answer after 12.0s (slow call: over the 10s slow_call_s)" in breaker.last_error.message

    gated.started.clear()
    refused = await dispatcher.bind(REQUEST, Deadline(0.1))(gated.target("stuck"))
    assert refused.error is not None and refused.error.code == "circuit_open"
    assert "slow call" in refused.error.message  # the refusal says why the circuit opened
    assert gated.started == []


@pytest.mark.parametrize(
    ("waited_s", "settings", "recent_answer_s"),
    [
        pytest.param(5.0, {}, None, id="cut-before-slow_call_s"),
        pytest.param(12.0, {}, 20.0, id="model-usually-takes-longer"),
        pytest.param(12.0, {"slow_call_s": ""}, None, id="slow_call_s-unset"),
    ],
)
async def test_a_cut_that_says_nothing_about_the_provider_is_not_counted(
    client: httpx.AsyncClient, waited_s: float, settings: dict[str, Any], recent_answer_s: float | None
) -> None:
    clock, gated = FakeClock(), GatedAdapter()
    dispatcher = open_dispatcher(client, clock, **settings)
    if recent_answer_s is not None:
        dispatcher.resilience.health.record("gated", "gated/stuck", "ok", recent_answer_s)
    for _ in range(3):
        outcome = await cut_after(dispatcher, gated, clock, waited_s)
        assert outcome.error is not None and outcome.error.code == "deadline"
    breaker = dispatcher.resilience.breakers.get("gated")
    assert (breaker.state, breaker.snapshot().failures, breaker.last_error) == ("closed", 0, None)


async def test_a_slow_half_open_trial_opens_the_circuit_again(client: httpx.AsyncClient) -> None:
    clock, gated = FakeClock(), GatedAdapter()
    dispatcher = open_dispatcher(client, clock, breaker_fail_max=1, breaker_reset_s=1.0)
    breaker = dispatcher.resilience.breakers.get("gated")
    await cut_after(dispatcher, gated, clock, 12.0)
    assert breaker.state == "open"
    clock.advance(1.0)
    assert breaker.state == "half-open"
    await cut_after(dispatcher, gated, clock, 12.0)  # the trial hangs too
    assert breaker.state == "open" and breaker.snapshot().trial_calls == 0
