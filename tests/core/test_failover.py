"""Failing over only to models that can answer: an open circuit is not a fallback."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from ai_gateway.adapter import Adapter, HttpRequest, ProviderConfig
from ai_gateway.dispatch import Dispatcher, Resilience
from ai_gateway.errors import GatewayError, RateLimited, UpstreamError
from ai_gateway.outcome import ModelTarget
from ai_gateway.resilience.clock import Deadline
from ai_gateway.settings import Settings
from ai_gateway.strategies.first_available import first_available
from ai_gateway.types import ChatRequest, Completion, FinishReason
from tests.core.fakes import FakeClock
from tests.core.gated import REQUEST


class ScriptedAdapter(Adapter):
    """Each model answers from its own script: errors in order, then "ok"."""

    dialect = "scripted"

    def __init__(self, name: str, scripts: dict[str, list[GatewayError]]) -> None:
        super().__init__(ProviderConfig(name=name, base_url="scripted://"))
        self.scripts = scripts
        self.calls: list[str] = []

    def build_request(self, request: ChatRequest, model: str) -> HttpRequest:
        raise TypeError("no HTTP")

    def parse_response(self, body: Any, model: str) -> Completion:
        raise TypeError("no HTTP")

    async def complete(self, client: httpx.AsyncClient, request: ChatRequest, model: str) -> Completion:
        self.calls.append(model)
        if self.scripts[model]:
            raise self.scripts[model].pop(0)
        return Completion(text="ok", finish_reason=FinishReason.STOP)


@pytest.mark.parametrize("refusing", ["open", "half-open, its trial call in flight"])
async def test_a_flaky_model_is_retried_when_the_only_fallback_is_refusing_calls(refusing: str) -> None:
    clock = FakeClock()
    settings = Settings(_env_file=None, breaker_fail_max=3, breaker_reset_s=30, breaker_half_open_calls=1)
    resilience = Resilience.from_settings(settings, clock=clock)
    flaky = ScriptedAdapter("live", {"flaky": [UpstreamError("blip", status=500)]})
    dead = ScriptedAdapter("dead", {"gone": []})
    dead_breaker = resilience.breakers.get("dead")
    for _ in range(3):
        dead_breaker.release(dead_breaker.acquire(), "failure", UpstreamError("down", status=500))
    assert dead_breaker.state == "open"
    if refusing != "open":
        # Half-open admits one trial, and another caller's holds it: this one would be refused as surely as by an
        # open circuit, and was still counted a fallback (the flaky model failed over to a refusal).
        clock.advance(31)
        assert dead_breaker.acquire() is True
        assert dead_breaker.state == "half-open"
    targets = [ModelTarget("live/flaky", "live", "flaky", flaky), ModelTarget("dead/gone", "dead", "gone", dead)]
    async with httpx.AsyncClient() as client:
        call = Dispatcher(lambda: client, resilience).bind(REQUEST, Deadline(30))
        result = await first_available(targets, call)
    assert result.winner == 0
    assert result.outcomes[0].attempts == 2  # retried: failing over to an open circuit would have lost the call
    assert [o.status for o in result.outcomes] == ["ok", "skipped"]
    assert dead.calls == []


async def test_an_open_circuit_refuses_before_any_attempt() -> None:
    resilience = Resilience.from_settings(Settings(_env_file=None, breaker_fail_max=1), clock=FakeClock())
    dead = ScriptedAdapter("dead", {"gone": []})
    b = resilience.breakers.get("dead")
    b.release(b.acquire(), "failure", UpstreamError("down", status=500))
    async with httpx.AsyncClient() as client:
        call = Dispatcher(lambda: client, resilience).bind(REQUEST, Deadline(30))
        outcome = await call(ModelTarget("dead/gone", "dead", "gone", dead))
    assert outcome.error is not None and outcome.error.code == "circuit_open"
    assert outcome.attempts == 0 and dead.calls == []
    assert "upstream_error: down" in outcome.error.message


@pytest.mark.parametrize("scope", ["provider", "model"])
async def test_a_rate_limit_opens_only_a_circuit_of_the_model_itself(scope: str) -> None:
    """Five 429s from gpt-4o opened the whole provider's circuit, and gpt-4o-mini, whose own limit was untouched,
    was refused without a request. Rate limits are a model's: they count where the circuit is the model's."""
    settings = Settings(_env_file=None, breaker_fail_max=2, max_attempts=1)
    resilience = Resilience.from_settings(settings, clock=FakeClock())
    limited = [RateLimited("Rate limit reached for gpt-4o", status=429) for _ in range(3)]
    live = ScriptedAdapter("live", {"big": limited, "small": []})
    circuit = {"provider": "", "model": "live/big"}[scope]
    big = ModelTarget("live/big", "live", "big", live, breaker_key=circuit)
    small = ModelTarget("live/small", "live", "small", live)
    async with httpx.AsyncClient() as client:
        call = Dispatcher(lambda: client, resilience).bind(REQUEST, Deadline(30))
        first, second = await call(big), await call(big)
        other = await call(small)
    assert [o.error.code if o.error else None for o in (first, second)] == ["rate_limited", "rate_limited"]
    assert resilience.breakers.get(big.circuit).state == ("closed" if scope == "provider" else "open")
    assert other.status == "ok" and live.calls == ["big", "big", "small"]


class SlowStartUp:
    """A new process's warm-up that takes 2 s of the test's clock (its imports, on a busy machine)."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock

    def ready(self, *, http: bool = True) -> bool:
        return False

    async def wait(self, *, http: bool = True) -> None:
        self.clock.advance(2.0)


async def test_the_deadline_starts_after_the_gateways_own_start_up() -> None:
    """The first call of a new process waited for its imports inside the caller's budget: with the shortest
    timeout (0.5 s) its models were skipped, "too little of the 0.5s deadline left", before any started."""
    from ai_gateway.gateway import Gateway
    from ai_gateway.http import SharedClient
    from ai_gateway.registry import Registry

    settings, clock = Settings(_env_file=None), FakeClock()
    client = SharedClient(settings)
    resilience = Resilience.from_settings(settings, clock)
    registry = Registry.from_settings(settings, {})
    gateway = Gateway(settings, registry, client, resilience, warm=SlowStartUp(clock))  # type: ignore[arg-type]
    try:
        result = await gateway.query(prompt="hi", models=["mock/echo"], timeout_s=0.5)
    finally:
        await client.aclose()
    assert [(r.status, r.text) for r in result.results] == [("ok", "hi")]
