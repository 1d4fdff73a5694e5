"""Fault injection over real HTTP: the resilience layer seen through the MCP tool.

Every test drives the gateway through fastmcp's in-memory client; its adapters reach the fake
provider over TCP. What happened is proven with what the fake saw (calls, their start times,
disconnects) and with the gateway's own report, never by waiting and seeing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastmcp import Client, FastMCP
from fastmcp.client.client import CallToolResult

from ai_gateway.resilience.clock import SYSTEM_CLOCK
from ai_gateway.resilience.retry import RetryPolicy
from tests.fake_provider import Scenario
from tests.integration.conftest import GatedFake, free_port

PROMPT = "What is the capital of France?"
# Small backoffs so retries cost milliseconds; a small floor so tests may use short deadlines.
FAST: dict[str, Any] = {"backoff_base_s": 0.01, "backoff_max_s": 0.05, "min_timeout_s": 0.05}


async def query(client: Client, **arguments: Any) -> CallToolResult:
    arguments.setdefault("prompt", PROMPT)
    # These tests study the provider path: identical calls must reach the fake, not the cache.
    arguments.setdefault("cache", "bypass")
    return await client.call_tool("query_models", arguments, raise_on_error=False)


def results(result: CallToolResult) -> list[dict[str, Any]]:
    return result.structured_content["results"]


def only(result: CallToolResult) -> dict[str, Any]:
    (r,) = results(result)
    return r


def text_of(result: CallToolResult) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)


def model_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("model:")]


async def status(client: Client) -> dict[str, Any]:
    return (await client.call_tool("gateway_status", {})).structured_content


def breaker(report: dict[str, Any], name: str) -> dict[str, Any]:
    (b,) = [b for b in report["breakers"] if b["name"] == name]
    return b


def provider(report: dict[str, Any], name: str) -> dict[str, Any]:
    (p,) = [p for p in report["providers"] if p["provider"] == name]
    return p


@pytest.fixture
def gateway(make_server: Callable[..., FastMCP]) -> Callable[..., Client]:
    """``async with gateway(**settings) as client``: a client on a fresh server with FAST settings."""

    def open_client(**settings: Any) -> Client:
        return Client(make_server(**{**FAST, **settings}))

    return open_client


@dataclass
class Sleeps:
    """Every wait the retry layer asked for; ``started`` is set when one begins."""

    waits: list[float] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> Sleeps:
    """Observe the retry layer's waits (it sleeps on SYSTEM_CLOCK); the waits still happen for real."""
    log = Sleeps()
    real_sleep = SYSTEM_CLOCK.sleep

    async def sleep(seconds: float) -> None:
        log.waits.append(seconds)
        log.started.set()
        await real_sleep(seconds)

    monkeypatch.setattr(SYSTEM_CLOCK, "sleep", sleep)
    return log


# ---------------------------------------------------------------------------- 1. Retry-After
RETRY_AFTER_03 = {
    "Retry-After": Scenario.error("rate_limited", retry_after="0.3", times=1),
    "retry-after-ms": Scenario(error_kind="rate_limited", fail_headers={"retry-after-ms": "300"}, fail_times=1),
}


@pytest.mark.parametrize("header", list(RETRY_AFTER_03))
async def test_429_waits_the_providers_retry_after_then_succeeds(
    gateway: Callable[..., Client], fake: GatedFake, sleeps: Sleeps, header: str
) -> None:
    fake.set("rl", RETRY_AFTER_03[header])
    async with gateway() as client:
        result = await query(client, models=["openai/rl"])

    assert not result.is_error
    r = only(result)
    assert r["status"] == "ok" and r["attempts"] == 2
    first, second = fake.calls_for("rl")
    assert (first.status, second.outcome) == (429, "ok")
    assert sleeps.waits == [0.3]  # the provider's hint, not a jittered backoff
    assert second.started_at - first.started_at >= 0.3


# ---------------------------------------------------------------------------- 2. 5xx bursts
async def test_a_burst_of_500s_is_retried_until_it_passes(gateway: Callable[..., Client], fake: GatedFake) -> None:
    fake.set("burst", Scenario.error("server_error", times=2))
    async with gateway() as client:
        result = await query(client, models=["openai/burst"])
    r = only(result)
    assert r["status"] == "ok" and r["attempts"] == 3 and r["error"] is None
    assert [c.status for c in fake.calls_for("burst")] == [500, 500, 200]
    assert fake.count("burst") == 3


async def test_anthropic_529_overloaded_is_retried(gateway: Callable[..., Client], fake: GatedFake) -> None:
    fake.set("busy", Scenario.error("overloaded", times=1))
    async with gateway() as client:
        result = await query(client, models=["anthropic/busy"])
    r = only(result)
    assert r["status"] == "ok" and r["attempts"] == 2
    assert [c.status for c in fake.calls_for("busy")] == [529, 200]


# ---------------------------------------------------------------------------- 3. persistent 5xx
@pytest.mark.parametrize("max_attempts", [3, 2])
async def test_a_persistent_500_uses_exactly_max_attempts(
    gateway: Callable[..., Client], fake: GatedFake, max_attempts: int
) -> None:
    fake.set("down", Scenario.error("server_error"))
    async with gateway(max_attempts=max_attempts) as client:
        result = await query(client, models=["openai/down"])
    assert result.is_error
    r = only(result)
    assert r["status"] == "error" and r["attempts"] == max_attempts
    assert r["error"]["code"] == "upstream_error" and r["error"]["status"] == 500
    assert r["error"]["not_retried"] == f"all {max_attempts} attempts used"
    assert fake.count("down") == max_attempts


# ---------------------------------------------------------------------------- 4. permanent 4xx
PERMANENT: list[tuple[str, Scenario, str, int]] = [  # model id, scenario, code, HTTP status
    ("openai/p-400", Scenario.error("bad_request"), "bad_request", 400),
    ("openai/p-401", Scenario.error("auth"), "auth", 401),
    ("gemini/p-403", Scenario.error("auth"), "auth", 403),  # Google's PERMISSION_DENIED
    ("anthropic/p-404", Scenario.error("not_found"), "not_found", 404),
    ("groq/p-422", Scenario(fail_status=422), "bad_request", 422),
    ("openai/p-context", Scenario.error("context_length"), "context_length", 400),
    ("openai/p-quota", Scenario.error("quota_exhausted"), "quota_exhausted", 429),
    ("anthropic/p-credit", Scenario.error("quota_exhausted"), "quota_exhausted", 400),
]


async def test_permanent_errors_are_never_retried(gateway: Callable[..., Client], fake: GatedFake) -> None:
    for model_id, scenario, _, _ in PERMANENT:
        fake.set(model_id.partition("/")[2], scenario)
    models = [model_id for model_id, *_ in PERMANENT]
    # consensus lets every model retry if it would (nothing fails over); max_models raised to fit them all.
    async with gateway(max_models=len(models)) as client:
        result = await query(client, models=models, strategy="consensus")

    assert result.is_error
    got = [(r["model"], r["error"]["code"], r["error"]["status"], r["attempts"]) for r in results(result)]
    assert got == [(model_id, code, st, 1) for model_id, _, code, st in PERMANENT]
    assert all(r["error"]["not_retried"] is None for r in results(result))  # not retryable at all
    for model_id in models:
        assert fake.count(model_id.partition("/")[2]) == 1


# ---------------------------------------------------------------------------- 5. the deadline cuts hangs
async def test_a_hung_response_is_cut_by_the_deadline(gateway: Callable[..., Client], fake: GatedFake) -> None:
    fake.set("hung", Scenario(hang=True))
    async with gateway(attempt_timeout_s=60) as client:
        result = await query(client, models=["openai/hung"], timeout_s=0.3)
        r = only(result)
        assert r["error"]["code"] == "deadline" and "0.3s deadline" in r["error"]["message"]
        assert r["attempts"] == 1
        await fake.wait_for_disconnects(1)  # while the gateway's client is still open: the cut closed it
    assert [c.model for c in fake.disconnects] == ["hung"]


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_a_trickling_response_is_cut_by_the_deadline(
    gateway: Callable[..., Client], fake: GatedFake, transport: str
) -> None:
    # ~300 bytes at one per 50 ms: 15 s of body, each read well inside the 120 s read timeout.
    fake.set("drip", Scenario(text="word " * 40, trickle_ms=50))
    async with gateway(attempt_timeout_s=60, http_transport=transport) as client:
        result = await query(client, models=["openai/drip"], timeout_s=0.3)
        r = only(result)
        assert r["status"] == "error" and r["error"]["code"] == "deadline"
        await fake.wait_for_disconnects(1)
    (call,) = fake.calls_for("drip")
    assert call.status == 200 and call.outcome == "disconnected"  # headers sent, body cut short


# ---------------------------------------------------------------------------- 6. per-attempt timeout
async def test_a_slow_attempt_times_out_and_is_retried(gateway: Callable[..., Client], fake: GatedFake) -> None:
    fake.set("slow-once", Scenario(hang=True, fail_times=1))  # the first call never answers, the next does
    async with gateway(attempt_timeout_s=0.2) as client:
        result = await query(client, models=["openai/slow-once"], timeout_s=5)
        report = await status(client)
        await fake.wait_for_disconnects(1)
    r = only(result)
    assert r["status"] == "ok" and r["attempts"] == 2
    assert [c.outcome for c in fake.calls_for("slow-once")] == ["disconnected", "ok"]
    # The first attempt ended as a retryable "timeout", not as the call's "deadline".
    assert provider(report, "openai")["recent_errors"] == {"timeout": 1}
    assert provider(report, "openai")["recent_ok"] == 1


# ---------------------------------------------------------------------------- 7. wire failures
async def test_malformed_answers_and_refused_connections_are_retried(
    gateway: Callable[..., Client], fake: GatedFake, environ: dict[str, str]
) -> None:
    fake.set("bad-json", Scenario(malformed=True))
    fake.set("html", Scenario(wrong_content_type=True))
    environ["GROQ_BASE_URL"] = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    # One model per provider, so no retry budget is shared between them.
    models = ["anthropic/bad-json", "gemini/html", "groq/refused"]
    async with gateway(max_attempts=3) as client:
        result = await query(client, models=models, strategy="consensus")
    got = [(r["error"]["code"], r["attempts"], r["error"]["not_retried"]) for r in results(result)]
    used = "all 3 attempts used"
    assert got == [("malformed_response", 3, used), ("malformed_response", 3, used), ("connect", 3, used)]
    assert fake.count("bad-json") == fake.count("html") == 3


# ---------------------------------------------------------------------------- 8. fail over, don't back off
async def test_first_available_fails_over_at_once_instead_of_retrying(
    gateway: Callable[..., Client], fake: GatedFake, sleeps: Sleeps
) -> None:
    fake.set("always-500", Scenario.error("server_error"))
    fake.set("limited", Scenario.error("rate_limited", retry_after="60"))
    fake.set("backup", Scenario(text="backup answer"))
    async with gateway() as client:
        on_500 = await query(client, models=["openai/always-500", "anthropic/backup"])
        on_429 = await query(client, models=["openai/limited", "anthropic/backup"])

    for result in (on_500, on_429):
        assert not result.is_error
        assert result.structured_content["answer"] == "backup answer"
        a, b = results(result)
        assert a["attempts"] == 1 and b["attempts"] == 1
        assert a["error"]["not_retried"] == "failed over to another model instead of retrying"
    assert results(on_500)[0]["error"]["code"] == "upstream_error"
    assert results(on_429)[0]["error"]["code"] == "rate_limited"
    assert results(on_429)[0]["error"]["retry_after_s"] == 60
    assert fake.count("always-500") == fake.count("limited") == 1
    assert sleeps.waits == []  # no backoff anywhere


async def test_a_retry_after_beyond_the_cap_fails_at_once(
    gateway: Callable[..., Client], fake: GatedFake, sleeps: Sleeps
) -> None:
    fake.set("limited", Scenario.error("rate_limited", retry_after="60"))
    async with gateway() as client:  # retry_after_cap_s: 20 by default
        result = await query(client, models=["openai/limited"])
    assert result.is_error
    r = only(result)
    assert r["attempts"] == 1
    assert r["error"]["code"] == "rate_limited" and r["error"]["retry_after_s"] == 60
    assert r["error"]["not_retried"] == "Retry-After 60s exceeds the 20s cap"
    assert fake.count("limited") == 1 and sleeps.waits == []


# ---------------------------------------------------------------------------- 9. total outage
async def test_a_total_outage_is_not_multiplied_by_retries(gateway: Callable[..., Client], fake: GatedFake) -> None:
    fake.set("down", Scenario.error("server_error"))
    n = 50
    settings = {"breaker_fail_max": 10_000, "max_attempts": 3, "retry_budget_ratio": 0.2, "retry_budget_floor": 3}
    async with gateway(**settings) as client:
        outcomes = await asyncio.gather(*(query(client, models=["openai/down"]) for _ in range(n)))
        report = await status(client)

    assert all(result.is_error for result in outcomes)
    rows = [only(result) for result in outcomes]
    assert all(r["error"]["code"] == "upstream_error" for r in rows)
    sent = fake.count("down")
    assert n < sent <= n * 1.2 + 3  # retries happened, within floor + ratio × requests
    assert sum(r["attempts"] for r in rows) == sent
    reasons = [r["error"]["not_retried"] for r in rows]
    assert "retry budget exhausted" in reasons
    assert set(reasons) <= {"retry budget exhausted", "all 3 attempts used"}
    budget = provider(report, "openai")["retry_budget"]
    assert budget["requests"] == n and budget["retries"] == sent - n <= budget["allowed"] == pytest.approx(13)


async def test_an_open_circuit_refuses_calls_without_reaching_the_provider(
    gateway: Callable[..., Client], fake: GatedFake
) -> None:
    fake.set("down-a", Scenario.error("server_error"))
    fake.set("down-b", Scenario.error("overloaded"))
    # One attempt per call, so each call is exactly one failure for the breaker.
    async with gateway(breaker_fail_max=5, breaker_reset_s=60, max_attempts=1) as client:
        for model_id, vendor_model in (("openai/down-a", "down-a"), ("anthropic/down-b", "down-b")):
            provider_name = model_id.partition("/")[0]
            opened_after = None
            for n in range(1, 11):
                result = await query(client, models=[model_id])
                assert only(result)["error"]["code"] != "circuit_open"
                if provider_name in (await status(client))["open_circuits"]:
                    opened_after = n
                    break
            assert opened_after == 5 and fake.count(vendor_model) == 5

            refused = await query(client, models=[model_id])
            assert refused.is_error
            r = only(refused)
            assert r["status"] == "error" and r["attempts"] == 0
            error = r["error"]
            assert error["code"] == "circuit_open" and error["provider"] == provider_name
            assert f"circuit open for {provider_name}" in error["message"]
            assert 0 < error["retry_after_s"] <= 60
            assert fake.count(vendor_model) == 5  # never reached the fake

        both = await query(client, models=["openai/down-a", "anthropic/down-b"])
    assert both.is_error
    assert text_of(both).startswith("every requested model's circuit is open")
    assert "- openai/down-a: circuit_open: " in text_of(both)
    assert "- anthropic/down-b: circuit_open: " in text_of(both)
    assert [(r["model"], r["error"]["code"]) for r in results(both)] == [
        ("openai/down-a", "circuit_open"),
        ("anthropic/down-b", "circuit_open"),
    ]
    assert fake.count() == 10


# ---------------------------------------------------------------------------- 10. cancellation
async def test_cancelling_during_backoff_stops_the_retry(
    gateway: Callable[..., Client], fake: GatedFake, sleeps: Sleeps
) -> None:
    # A long, exact wait: the 500 carries Retry-After 10 (backoff alone would be jittered).
    fake.set("flaky", Scenario.error("server_error", retry_after="10"))
    async with gateway(backoff_base_s=5, backoff_max_s=10) as client:
        call = asyncio.create_task(query(client, models=["openai/flaky"], timeout_s=60))
        await asyncio.wait_for(sleeps.started.wait(), 5)  # the gateway is now waiting to retry
        assert sleeps.waits == [10]
        call.cancel()
        with pytest.raises(asyncio.CancelledError):  # the cancellation is the caller's: never swallowed
            await call
        assert model_tasks() == []  # a lone model runs in the tool's own task: nothing is left behind
        with pytest.raises(TimeoutError):
            await fake.wait_for_calls(2, model="flaky", timeout=0.3)  # the retry never comes
    assert fake.count("flaky") == 1


async def test_cancelling_an_in_flight_request_closes_it_and_is_not_a_failure(
    gateway: Callable[..., Client], fake: GatedFake
) -> None:
    fake.set("hang", Scenario(hang=True))
    async with gateway() as client:
        call = asyncio.create_task(query(client, models=["openai/hang"]))
        await fake.wait_for_calls(1, model="hang")
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await fake.wait_for_disconnects(1)
        assert model_tasks() == []
        report = await status(client)
    b = breaker(report, "openai")
    assert b["state"] == "closed" and b["failures"] == 0 and b["last_error"] is None
    assert provider(report, "openai")["recent_errors"] == {}
    assert provider(report, "openai")["in_flight"] == 0
    assert fake.count("hang") == 1


# ---------------------------------------------------------------------------- 11. load shedding
async def test_a_full_provider_sheds_load_fast(gateway: Callable[..., Client], fake: GatedFake) -> None:
    fake.set("busy", Scenario(hang=True))
    fake.set("extra", Scenario(text="would answer"))
    async with gateway(max_concurrency_per_provider=2, queue_wait_s=0.05) as client:
        hung = [asyncio.create_task(query(client, models=["openai/busy"], timeout_s=30)) for _ in range(2)]
        await fake.wait_for_calls(2, model="busy")  # both openai slots are taken

        shed = await query(client, models=["openai/extra"], timeout_s=30)
        elsewhere = await query(client, models=["anthropic/extra"], timeout_s=30)
        report = await status(client)

        for task in hung:
            task.cancel()
        for task in hung:
            with pytest.raises(asyncio.CancelledError):
                await task
        await fake.wait_for_disconnects(2)

    assert shed.is_error
    error = only(shed)["error"]
    assert error["code"] == "overloaded" and error["provider"] == "openai"
    assert "limit of 2 concurrent calls" in error["message"]
    assert error["retry_after_s"] > 0
    assert only(elsewhere)["status"] == "ok" and only(elsewhere)["text"] == "would answer"
    assert [c.model for c in fake.calls] == ["busy", "busy", "extra"]
    assert fake.calls[2].dialect == "anthropic"  # the shed openai call never reached the fake
    assert provider(report, "openai")["in_flight"] == 2
    assert report["limits"]["per_provider"] == 2


# ---------------------------------------------------------------------------- 12. hedging
@pytest.mark.parametrize("where", ["argument", "settings"])
async def test_hedging_starts_the_next_model_and_cancels_the_slow_one(
    gateway: Callable[..., Client], fake: GatedFake, where: str
) -> None:
    fake.set("slowpoke", Scenario(hang=True))
    fake.set("backup", Scenario(text="from the hedge"))
    settings = {"hedge_after_s": 0.05} if where == "settings" else {}
    arguments = {"hedge_after_s": 0.05} if where == "argument" else {}
    async with gateway(**settings) as client:
        result = await query(client, models=["openai/slowpoke", "anthropic/backup"], timeout_s=30, **arguments)
        await fake.wait_for_disconnects(1)
        assert model_tasks() == []

    assert not result.is_error
    sc = result.structured_content
    assert sc["answer"] == "from the hedge" and sc["model"] == "anthropic/backup"
    slow, backup = results(result)
    assert (slow["status"], slow["hedge"], slow["error"]["code"]) == ("cancelled", False, "cancelled")
    assert (backup["status"], backup["hedge"]) == ("ok", True)
    assert [c.model for c in fake.disconnects] == ["slowpoke"]
    # The hedge started only after the slow model had been asked.
    assert fake.calls_for("backup")[0].started_at >= fake.calls_for("slowpoke")[0].started_at


async def test_without_hedging_a_hanging_model_is_never_joined(gateway: Callable[..., Client], fake: GatedFake) -> None:
    fake.set("stuck", Scenario(hang=True))
    async with gateway() as client:  # hedge_after_s unset: off
        result = await query(client, models=["openai/stuck", "anthropic/never"], timeout_s=0.3)
    assert result.is_error
    stuck, never = results(result)
    assert stuck["error"]["code"] == "deadline" and stuck["hedge"] is False
    assert never["status"] == "skipped" and never["error"]["code"] == "deadline"
    assert fake.count("never") == 0


async def test_a_hung_model_cut_only_by_deadlines_opens_its_circuit_and_the_chain_falls_back(
    gateway: Callable[..., Client], fake: GatedFake
) -> None:
    """Callers' deadlines (0.3 s) below the attempt timeout (30 s): every cut was the caller's, the circuit never
    opened, and every call spent its deadline on the hung model without reaching the backup (a review's
    reproducer). Cuts past slow_call_s now count, so after breaker_fail_max of them the chain answers."""
    fake.set("stuck", Scenario(hang=True))
    async with gateway(slow_call_s=0.1, breaker_fail_max=2) as client:
        for _ in range(2):
            cut = await query(client, models=["openai/stuck", "anthropic/backup"], timeout_s=0.3)
            stuck, backup = results(cut)
            assert stuck["error"]["code"] == "deadline" and backup["status"] == "skipped"
        answered = await query(client, models=["openai/stuck", "anthropic/backup"], timeout_s=0.3)
        report = await status(client)
    stuck, backup = results(answered)
    assert stuck["error"]["code"] == "circuit_open" and "slow call" in stuck["error"]["message"]
    assert backup["status"] == "ok" and answered.structured_content["answer"]
    assert fake.count("stuck") == 2 and fake.count("backup") == 1
    assert breaker(report, "openai")["state"] == "open"


async def test_hedging_is_refused_for_fastest(gateway: Callable[..., Client], fake: GatedFake) -> None:
    async with gateway() as client:
        result = await query(client, models=["openai/a", "anthropic/b"], strategy="fastest", hedge_after_s=0.05)
    assert result.is_error and result.structured_content is None
    text = text_of(result)
    assert "hedge_after_s" in text and "first_available" in text
    assert fake.count() == 0


# ---------------------------------------------------------------------------- regressions (bugs found and fixed)
async def test_a_backoff_past_the_deadline_does_not_invent_an_attempt(
    gateway: Callable[..., Client], fake: GatedFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(RetryPolicy, "backoff", lambda self, retry_number: 100.0)  # jitter drew a long wait
    fake.set("down", Scenario.error("server_error"))
    async with gateway() as client:
        result = await query(client, models=["openai/down"], timeout_s=0.3)
    r = only(result)
    assert r["status"] == "error"
    assert r["attempts"] == fake.count("down")
    assert r["error"]["provider"] == "openai"


async def test_a_cancelled_model_reports_the_attempt_it_made(gateway: Callable[..., Client], fake: GatedFake) -> None:
    fake.set("slowpoke", Scenario(hang=True))
    async with gateway() as client:
        result = await query(client, models=["openai/slowpoke", "anthropic/backup"], timeout_s=30, hedge_after_s=0.05)
    slow = results(result)[0]
    assert slow["status"] == "cancelled"
    assert fake.count("slowpoke") == 1
    assert slow["attempts"] == 1


async def test_a_shed_call_is_not_a_provider_attempt(gateway: Callable[..., Client], fake: GatedFake) -> None:
    fake.set("busy", Scenario(hang=True))
    async with gateway(max_concurrency_per_provider=1, queue_wait_s=0.01) as client:
        hung = asyncio.create_task(query(client, models=["openai/busy"], timeout_s=30))
        await fake.wait_for_calls(1, model="busy")
        shed = await query(client, models=["openai/other"], timeout_s=30)
        report = await status(client)
        hung.cancel()
        with pytest.raises(asyncio.CancelledError):
            await hung
        await fake.wait_for_disconnects(1)
    assert only(shed)["error"]["code"] == "overloaded"
    assert fake.count("other") == 0
    assert only(shed)["attempts"] == 0
    assert provider(report, "openai")["recent_errors"] == {}


# ---------------------------------------------------------------------------- the connection pool
@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_every_call_the_limiter_admits_gets_a_connection_at_once(
    gateway: Callable[..., Client], fake: GatedFake, transport: str
) -> None:
    """A pool smaller than the limiter (200 connections for 256 calls, by default) kept the calls past it waiting
    for a connection up to the connect timeout; they then failed as provider timeouts and opened the circuits of
    providers that answered every request they got."""
    names = ["p-1", "p-2", "p-3"]
    release = fake.hold(*names)
    async with gateway(max_concurrency=3, max_connections=2, http_transport=transport) as client:
        calls = [asyncio.create_task(query(client, models=[f"openai/{name}"])) for name in names]
        await fake.wait_for_calls(3)  # all three reach the provider while the first two are still held
        release.set()
        answers = await asyncio.gather(*calls)

    assert [only(a)["status"] for a in answers] == ["ok"] * 3
