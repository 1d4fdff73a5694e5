"""What the gateway reports about itself: the gateway_status tool, the gateway://status resource and /health.

Traffic goes through the in-memory MCP client to the fake provider over HTTP; ``/health`` is
the server's own Starlette route, reached in process through ``httpx.ASGITransport``. The
route reads the gateway that the in-memory client's session started (the lifespan is shared
and ref-counted), so both see the same breakers.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastmcp import Client, FastMCP

from tests.fake_provider import Scenario
from tests.integration.conftest import KEYS, GatedFake, free_port
from tests.redis_harness import RedisTarget

PROMPT = "What is the capital of France?"
FAST: dict[str, Any] = {"backoff_base_s": 0.01, "backoff_max_s": 0.05}


async def query(client: Client, **arguments: Any) -> Any:
    # Provider behaviour is what is measured here: keep the cache out of it.
    return await client.call_tool(
        "query_models", {"prompt": PROMPT, "cache": "bypass", **arguments}, raise_on_error=False
    )


async def tool_status(client: Client) -> dict[str, Any]:
    result = await client.call_tool("gateway_status", {})
    assert not result.is_error
    return result.structured_content


async def resource_status(client: Client) -> dict[str, Any]:
    (content,) = await client.read_resource("gateway://status")
    assert content.mime_type == "application/json"
    return json.loads(content.text)


async def health(server: FastMCP) -> dict[str, Any]:
    transport = httpx.ASGITransport(app=server.http_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as http:
        resp = await http.get("/health")
    assert resp.status_code == 200
    return resp.json()


def by(rows: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    return {row[key]: row for row in rows}


async def test_status_reports_outcomes_latency_budgets_and_breakers(
    make_server: Callable[..., FastMCP], fake: GatedFake
) -> None:
    fake.set("fine", Scenario(text="Paris"))
    fake.set("broken", Scenario.error("server_error"))
    fake.set("missing", Scenario.error("not_found"))
    server = make_server(**FAST, max_attempts=2)
    async with Client(server) as client:
        before = await tool_status(client)
        for _ in range(3):
            assert not (await query(client, models=["openai/fine"])).is_error
        assert (await query(client, models=["anthropic/broken"])).is_error
        assert (await query(client, models=["gemini/missing"])).is_error
        report = await tool_status(client)
        resource = await resource_status(client)
        healthy = await health(server)

    assert before["providers"] == [] and before["breakers"] == [] and before["open_circuits"] == []
    assert report["limits"] == {"total": 256, "per_provider": 64}

    providers = by(report["providers"], "provider")
    assert sorted(providers) == ["anthropic", "gemini", "openai"]
    openai, anthropic, gemini = providers["openai"], providers["anthropic"], providers["gemini"]
    assert (openai["attempts"], openai["recent_ok"], openai["recent_errors"]) == (3, 3, {})
    latency = openai["latency_ms"]
    assert set(latency) == {"p50", "p95", "p99"}
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"]
    assert openai["retry_budget"] == {"requests": 3, "retries": 0, "allowed": 3 + 0.2 * 3}
    assert openai["in_flight"] == 0
    # Every attempt counts: the 500 was tried twice (max_attempts=2), the 404 once.
    assert (anthropic["attempts"], anthropic["recent_ok"], anthropic["recent_errors"]) == (
        2,
        0,
        {"upstream_error": 2},
    )
    assert anthropic["latency_ms"] is None  # latency is measured on answers only
    assert anthropic["retry_budget"]["requests"] == 1 and anthropic["retry_budget"]["retries"] == 1
    assert gemini["recent_errors"] == {"not_found": 1}

    breakers = by(report["breakers"], "name")
    assert sorted(breakers) == ["anthropic", "gemini", "openai"]
    assert all(b["state"] == "closed" and b["seconds_to_probe"] is None for b in breakers.values())
    assert breakers["openai"]["failures"] == 0 and breakers["openai"]["last_error"] is None
    assert breakers["anthropic"]["failures"] == 2
    assert breakers["anthropic"]["last_error"]["code"] == "upstream_error"
    assert breakers["gemini"]["failures"] == 0  # a 404 is the caller's problem, not the provider's
    assert report["open_circuits"] == []

    assert resource == report  # the resource is the tool's report, as JSON
    assert healthy["status"] == "ok"
    assert healthy["circuits"] == {"open": [], "half_open": []}


async def test_an_open_circuit_shows_in_status_resource_and_health(
    make_server: Callable[..., FastMCP], fake: GatedFake
) -> None:
    fake.set("down", Scenario.error("overloaded"))
    fake.set("fine", Scenario(text="ok"))
    server = make_server(**FAST, max_attempts=1, breaker_fail_max=3, breaker_reset_s=60)
    async with Client(server) as client:
        assert (await health(server))["status"] == "ok"
        for _ in range(3):
            assert (await query(client, models=["openai/down"])).is_error
        assert not (await query(client, models=["anthropic/fine"])).is_error
        report = await tool_status(client)
        resource = await resource_status(client)
        degraded = await health(server)

    assert report["open_circuits"] == ["openai"]
    breakers = by(report["breakers"], "name")
    opened = breakers["openai"]
    assert opened["state"] == "open" and opened["failures"] == 3
    assert 0 < opened["seconds_to_probe"] <= 60
    assert opened["last_error"]["code"] == "overloaded" and opened["last_error"]["status"] == 503
    assert breakers["anthropic"]["state"] == "closed"
    assert by(report["providers"], "provider")["openai"]["recent_errors"] == {"overloaded": 3}

    # Same shape and facts from the resource (seconds_to_probe may have ticked down meanwhile).
    assert resource.keys() == report.keys()
    assert resource["open_circuits"] == ["openai"]
    assert by(resource["breakers"], "name")["openai"]["state"] == "open"
    assert resource["providers"] == report["providers"]

    assert degraded["status"] == "degraded"
    assert degraded["circuits"] == {"open": ["openai"], "half_open": []}
    assert "openai" in degraded["providers"]["configured"]


async def test_a_breakers_last_error_is_shown_without_any_key_the_gateway_knows(
    make_server: Callable[..., FastMCP], fake: GatedFake
) -> None:
    """Ollama holds no key, so its adapter scrubbed nothing from a 500 that echoed the other providers' keys:
    query_models redacted them, but gateway_status and gateway://status showed them verbatim."""
    echoed = " ".join(KEYS.values())
    fake.set("llama3.2", Scenario.error("server_error", message=f"upstream rejected {echoed}"))
    async with Client(make_server(**FAST, max_attempts=1)) as client:
        failed = await query(client, models=["ollama/llama3.2"])
        report = await tool_status(client)
        (resource,) = await client.read_resource("gateway://status")

    assert failed.is_error
    shown = by(report["breakers"], "name")["ollama"]["last_error"]["message"]
    assert shown == "upstream rejected " + " ".join(["[REDACTED]"] * len(KEYS))
    assert shown == failed.structured_content["results"][0]["error"]["message"]
    for key in KEYS.values():
        assert key not in json.dumps(report) and key not in resource.text


# ---------------------------------------------------------------------------- the cache section
MODEL = "openai/gpt-4o-mini"


async def cache_status_when(
    client: Client,
    holds: Callable[[dict[str, Any]], bool],
    what: str,
    timeout: float = 10.0,  # noqa: ASYNC109
) -> dict[str, Any]:
    """Poll gateway_status until its cache section satisfies ``holds`` (bounded); return that section."""
    stop_at = time.monotonic() + timeout
    while not holds(cache := (await tool_status(client))["cache"]):
        if time.monotonic() > stop_at:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; the cache section: {cache}")
        await asyncio.sleep(0.01)  # poll interval, not a "wait and see"
    return cache


async def test_status_shows_the_embedded_cache_and_its_counters(
    make_server: Callable[..., FastMCP], fake: GatedFake
) -> None:
    fake.set("gpt-4o-mini", Scenario(text="Paris"))
    async with Client(make_server(**FAST)) as client:
        before = await tool_status(client)
        first = await query(client, models=[MODEL], cache="use")
        await cache_status_when(client, lambda c: c["writes"] == 1, "the answer to be stored (off the response path)")
        second = await query(client, models=[MODEL], cache="use")
        report = await tool_status(client)
        resource = await resource_status(client)

    assert before["cache"] == {
        "backend": "memory",
        "url": None,
        "healthy": None,
        "failures": None,
        "unsynced": None,
        "near": None,
        "near_entries": None,
        "memory_entries": 0,
        "memory_bytes": 0,
        "hits": 0,
        "misses": 0,
        "writes": 0,
        "not_stored": 0,
        "coalesced": 0,
        "peer_waits": 0,
        "peer_waits_in_flight": 0,
    }
    assert not first.is_error and not second.is_error
    assert second.structured_content["results"][0]["cached"] is True
    assert fake.count() == 1
    cache = report["cache"]
    assert (cache["memory_entries"], cache["hits"], cache["misses"], cache["writes"]) == (1, 1, 1, 1)
    assert cache["memory_bytes"] > len("Paris")
    assert resource["cache"] == cache


async def test_status_shows_a_shared_redis_and_its_health(
    make_server: Callable[..., FastMCP], fake: GatedFake, redis_target: RedisTarget
) -> None:
    fake.set("gpt-4o-mini", Scenario(text="Paris"))
    async with Client(make_server(**FAST, **redis_target.settings())) as client:
        reply = await query(client, models=[MODEL], cache="use")
        cache = await cache_status_when(client, lambda c: c["writes"] == 1, "the answer to be stored in Redis")
        near = await cache_status_when(client, lambda c: c["near"] is True, "the near cache's tracking to be up")

    assert not reply.is_error
    assert (cache["backend"], cache["url"], cache["healthy"], cache["failures"]) == ("redis", redis_target.url, True, 0)
    assert near["near_entries"] == 0  # nothing read from Redis yet: the one answer was stored by this process
    assert (cache["misses"], cache["peer_waits"], cache["peer_waits_in_flight"]) == (1, 0, 0)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:{password}@127.0.0.1:{port}/0", "redis://:****@127.0.0.1:{port}/0"),
        # redis-py reads a password from the query too; it was shown as given.
        ("redis://127.0.0.1:{port}/0?password={password}", "redis://127.0.0.1:{port}/0?password=****"),
    ],
)
async def test_status_shows_a_failing_redis_without_its_password(
    make_server: Callable[..., FastMCP], fake: GatedFake, caplog: pytest.LogCaptureFixture, url: str, shown: str
) -> None:
    password = "pw-STATUS-0123456789abcdef"
    port = free_port()  # nothing listens there: every connection is refused
    fake.set("gpt-4o-mini", Scenario(text="Paris"))
    settings = {**FAST, "redis_url": url.format(password=password, port=port), "cache_cooldown_s": 600}
    async with Client(make_server(**settings)) as client:
        reply = await query(client, models=[MODEL], cache="use")
        # Stored off the response path: in the embedded cache, remembered for Redis once it answers.
        await cache_status_when(client, lambda c: c["unsynced"] == 1, "the answer to be kept in this process")
        report = await tool_status(client)
        (resource,) = await client.read_resource("gateway://status")

    assert not reply.is_error  # the cache is never a dependency
    cache = report["cache"]
    assert cache["url"] == shown.format(port=port)
    assert cache["healthy"] is False and cache["failures"] >= 1
    assert (cache["unsynced"], cache["memory_entries"]) == (1, 1)
    assert (cache["near"], cache["near_entries"]) == (False, 0)  # no tracking without Redis
    assert password not in json.dumps(report) and password not in resource.text
    assert any("failed" in r.getMessage() for r in caplog.records if r.name == "ai_gateway.cache.redis_backend")
    assert password not in caplog.text


async def test_status_counts_calls_waiting_on_another_gateways_lease(
    make_server: Callable[..., FastMCP], fake: GatedFake, redis_target: RedisTarget
) -> None:
    fake.set("gpt-4o-mini", Scenario(text="Paris"))
    release = fake.hold("gpt-4o-mini")
    settings = {**FAST, **redis_target.settings()}
    async with Client(make_server(**settings)) as one, Client(make_server(**settings)) as two:
        holder = asyncio.create_task(query(one, models=[MODEL], cache="use"))
        await fake.wait_for_calls(1)  # gateway one holds the lease; its call is held at the fake
        waiters = [asyncio.create_task(query(two, models=[MODEL], cache="use")) for _ in range(3)]
        waiting = await cache_status_when(
            two,
            lambda c: c["peer_waits_in_flight"] == 1 and c["coalesced"] == 2,
            "gateway two to wait on one's lease (one caller) and its other callers on that caller",
        )
        assert (await tool_status(one))["cache"]["peer_waits_in_flight"] == 0
        release.set()
        results = await asyncio.gather(holder, *waiters)
        after = (await tool_status(two))["cache"]

    assert all(not r.is_error for r in results)
    assert waiting["peer_waits"] == 1
    assert (after["peer_waits"], after["peer_waits_in_flight"]) == (1, 0)  # one upstream call: test_cache_processes
