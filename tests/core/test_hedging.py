"""first_available hedging: a slow model is joined, not replaced; the first success wins."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from ai_gateway.dispatch import Dispatcher, Resilience
from ai_gateway.errors import UpstreamError
from ai_gateway.resilience import health as health_module
from ai_gateway.resilience.clock import Deadline
from ai_gateway.resilience.health import HealthBoard
from ai_gateway.settings import Settings
from ai_gateway.strategies.first_available import first_available
from tests.core.fakes import FakeClock
from tests.core.gated import REQUEST, GatedAdapter


@pytest.fixture
async def call() -> AsyncIterator:
    resilience = Resilience.from_settings(Settings(_env_file=None), clock=FakeClock())
    async with httpx.AsyncClient() as client:
        dispatcher = Dispatcher(lambda: client, resilience)
        deadline = Deadline(30)

        yield dispatcher.bind(REQUEST, deadline)


async def test_a_slow_model_is_joined_by_a_hedge_and_the_first_success_wins(call) -> None:
    gated = GatedAdapter()
    targets = [gated.target(m) for m in ("slow", "quick", "spare")]
    run = asyncio.create_task(first_available(targets, call, hedge_delay=lambda t: 0.01))
    await gated.wait_started("slow", "quick")
    assert "slow" not in gated.cancelled  # joined, not replaced
    gated.answer("quick", "4")
    result = await run
    assert [o.status for o in result.outcomes] == ["cancelled", "ok", "skipped"]
    assert [o.hedge for o in result.outcomes] == [False, True, False]
    assert result.winner == 1 and gated.cancelled == ["slow"]


async def test_the_original_can_still_win_after_a_hedge_starts(call) -> None:
    gated = GatedAdapter()
    targets = [gated.target(m) for m in ("first", "second")]
    run = asyncio.create_task(first_available(targets, call, hedge_delay=lambda t: 0.01))
    await gated.wait_started("first", "second")
    gated.answer("first", "4")
    result = await run
    assert result.winner == 0 and [o.status for o in result.outcomes] == ["ok", "cancelled"]


async def test_a_failure_while_hedging_starts_the_next_model_at_once(call) -> None:
    gated = GatedAdapter()
    targets = [gated.target(m) for m in ("slow", "broken", "third")]
    run = asyncio.create_task(first_available(targets, call, hedge_delay=lambda t: 0.01))
    await gated.wait_started("slow", "broken")
    gated.fail("broken", UpstreamError("boom", status=500))
    await gated.wait_started("third")
    gated.answer("third", "ok")
    result = await run
    assert [o.status for o in result.outcomes] == ["cancelled", "error", "ok"]
    assert result.outcomes[1].attempts == 1  # other candidates existed: no backoff retries


async def test_without_a_hedge_delay_the_next_model_is_never_started_early(call) -> None:
    gated = GatedAdapter()
    targets = [gated.target(m) for m in ("first", "second")]
    run = asyncio.create_task(first_available(targets, call))
    await gated.wait_started("first")
    gated.answer("first", "4")
    result = await run
    assert gated.started == ["first"]
    assert [o.status for o in result.outcomes] == ["ok", "skipped"]
    assert [o.hedge for o in result.outcomes] == [False, False]


def test_auto_hedge_delay_uses_the_models_recent_p95() -> None:
    health = HealthBoard()
    for ms in range(1, 101):  # 1..100 ms
        health.record("acme", "acme/m", "ok", ms / 1000)
    assert health.latency_percentile("acme/m", 95, min_samples=20) == pytest.approx(0.095)
    assert health.latency_percentile("acme/m", 50, min_samples=20) == pytest.approx(0.050)
    assert health.latency_percentile("acme/m", 100, min_samples=20) == pytest.approx(0.100)
    assert health.latency_percentile("acme/m", 95, min_samples=200) is None  # too few samples yet
    assert health.latency_percentile("acme/other", 95, min_samples=1) is None


def test_cancelled_attempts_raise_the_hedge_estimate_but_not_the_reported_latency() -> None:
    health = HealthBoard()
    for _ in range(90):
        health.record("acme", "acme/m", "ok", 0.040)
    for _ in range(10):  # slow attempts that hedging cancelled after 2 s
        health.record_cancelled("acme/m", 2.0)
    assert health.latency_percentile("acme/m", 95, min_samples=20) == 2.0
    assert health.snapshot()["acme"]["latency_ms"]["p99"] == 40.0  # status shows answers only


def test_the_board_keeps_the_most_recently_called_models_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Callers may name any model id; inventing them grew the board (and each status) without end."""
    monkeypatch.setattr(health_module, "MAX_MODELS", 2)
    health = HealthBoard()
    for model in ("acme/a", "acme/b"):
        health.record("acme", model, "ok", 0.5)
    health.record_cancelled("acme/a", 0.7)  # a is used again: b is now the least recent
    health.record("acme", "acme/c", "ok", 0.9)
    assert health.answer_latency_percentile("acme/b", 99) is None  # forgotten
    assert health.latency_percentile("acme/a", 100, min_samples=2) == 0.7
    assert health.answer_latency_percentile("acme/c", 99) == 0.9
    assert health.snapshot()["acme"]["attempts"] == 3  # the provider's own record keeps every attempt


@pytest.mark.parametrize("delay", [float("nan"), float("inf"), 0.0, -1.0])
async def test_a_hedge_delay_must_be_a_finite_positive_number(delay: float) -> None:
    """Gateway.query (the eval's path, and the tool's after its own schema) refuses what is no delay: NaN passed
    "<= 0" and, as a timer, broke the order of the event loop's timers for every later call."""
    from ai_gateway.errors import InvalidArgument
    from ai_gateway.gateway import Gateway
    from ai_gateway.http import SharedClient
    from ai_gateway.registry import Registry
    from ai_gateway.settings import Settings

    settings = Settings(_env_file=None)
    client = SharedClient(settings)
    gateway = Gateway(settings, Registry.from_settings(settings, {}), client)
    try:
        with pytest.raises(InvalidArgument, match="hedge_after_s"):
            await gateway.query(prompt="hi", models=["mock/echo", "mock/fixed:4"], hedge_after_s=delay)
    finally:
        await client.aclose()
