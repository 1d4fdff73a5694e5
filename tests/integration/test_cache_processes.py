"""Single-flight across two real gateway processes (``ai-gateway serve --transport http``) sharing one Redis.

The issue asks for "many identical concurrent calls against a slow fake provider make exactly one upstream
call; the same with two gateway processes sharing Redis". Here the two gateways are separate subprocesses,
each reached by a different MCP client over streamable HTTP (the official ``mcp`` SDK for one, fastmcp's
client for the other), and all the calls are sent at once, so either process may win the Redis lease.

Nothing depends on timing: the fake holds the upstream request (``fake.hold``) until the test has seen,
through ``gateway_status``'s cache section, that every caller is where it must be: in each process, one
caller in the single flight and the others coalesced on it; in the process that lost the lease, that one
caller waiting on the other process's lease (``peer_waits_in_flight``). Only then is the fake released.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from fastmcp import Client as FastMCPClient
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from ai_gateway.cache.key import answer_prefix
from tests.fake_provider import Scenario
from tests.integration.conftest import GatedFake, http_servers, subprocess_env, vendor
from tests.redis_harness import RedisTarget

# Two gateway processes start side by side (~1-2 s); the waits below are bounded well inside this.
pytestmark = pytest.mark.timeout(90)

MODEL = "openai/gpt-4o-mini"
VENDOR = vendor(MODEL)
ARGUMENTS: dict[str, Any] = {"prompt": "What is the capital of France?", "models": [MODEL], "timeout_s": 60}
CALLERS_EACH = 8  # identical calls sent to each process


@dataclass
class Answer:
    """One query_models call's outcome, whichever client made it."""

    process: str
    is_error: bool
    data: dict[str, Any]

    @property
    def only(self) -> dict[str, Any]:
        (result,) = self.data["results"]
        return result


@dataclass
class Side:
    """One gateway process and the MCP client that talks to it."""

    name: str
    call_tool: Callable[[str, dict[str, Any]], Awaitable[Any]]  # -> an MCP CallToolResult

    async def ask(self) -> Answer:
        result = await self.call_tool("query_models", dict(ARGUMENTS))
        assert result.structured_content is not None, result.content  # failures still carry every result
        return Answer(self.name, bool(result.is_error), result.structured_content)

    async def cache(self) -> dict[str, Any]:
        """The cache section of this process's gateway_status."""
        result = await self.call_tool("gateway_status", {})
        assert not result.is_error, result.content
        return result.structured_content["cache"]


@contextlib.asynccontextmanager
async def two_gateways(fake: GatedFake, redis_target: RedisTarget, cwd: Path) -> AsyncIterator[tuple[Side, Side]]:
    """Two gateway subprocesses sharing ``redis_target``: one reached by the mcp SDK, one by fastmcp's client."""
    env = subprocess_env(
        fake.url,
        AI_GATEWAY_REDIS_URL=redis_target.url,
        AI_GATEWAY_CACHE_NAMESPACE=redis_target.namespace,  # this test's keys, deleted after it
    )
    spec = {"env": env, "cwd": cwd}
    async with (
        http_servers(spec, spec) as (one, two),
        httpx2.AsyncClient(timeout=httpx2.Timeout(30)) as http,
        Client(streamable_http_client(f"{one.base_url}/mcp", http_client=http)) as sdk,
        FastMCPClient(f"{two.base_url}/mcp") as fast,
    ):

        async def fastmcp_call(name: str, arguments: dict[str, Any]) -> Any:
            return await fast.call_tool(name, arguments, raise_on_error=False)

        yield Side("mcp-sdk", sdk.call_tool), Side("fastmcp", fastmcp_call)


async def one_flight(
    fake: GatedFake,
    sides: tuple[Side, Side],
    callers: list[asyncio.Task[Answer]],
    timeout: float = 30.0,  # noqa: ASYNC109
) -> tuple[Side, Side]:
    """Poll until the fake holds exactly one call, every caller has arrived, and one process waits on the other.

    Returns (the process that holds the lease, the one waiting on it).
    """
    stop_at = time.monotonic() + timeout
    while True:
        caches = [await side.cache() for side in sides]
        waiting = [cache["peer_waits_in_flight"] for cache in caches]
        arrived = all(cache["coalesced"] == CALLERS_EACH - 1 for cache in caches)
        if fake.count(VENDOR) == 1 and sorted(waiting) == [0, 1] and arrived:
            return sides if waiting[1] == 1 else (sides[1], sides[0])
        early = [task.result() for task in callers if task.done() and not task.cancelled() and not task.exception()]
        if fake.count(VENDOR) > 1 or any(task.done() for task in callers) or time.monotonic() > stop_at:
            raise AssertionError(
                f"expected one held upstream call, {CALLERS_EACH - 1} coalesced callers per process and one "
                f"process waiting on the other's lease; got {fake.count(VENDOR)} upstream call(s), cache sections "
                f"{dict(zip([s.name for s in sides], caches, strict=True))}, early answers {early}"
            )
        await asyncio.sleep(0.02)  # poll interval, not a "wait and see"


def outcomes(answers: list[Answer]) -> list[tuple[str, str, bool, int]]:
    """(process, status, cached, attempts) of each answer: what a failed assertion should show."""
    return [(a.process, a.only["status"], a.only["cached"], a.only["attempts"]) for a in answers]


async def stampede(fake: GatedFake, sides: tuple[Side, Side]) -> tuple[Side, Side, list[Answer]]:
    """Send CALLERS_EACH identical calls to each process at once; release the fake once they are all in place."""
    release = fake.hold(VENDOR)
    callers = [asyncio.create_task(side.ask()) for _ in range(CALLERS_EACH) for side in sides]
    try:
        holder, waiter = await one_flight(fake, sides, callers)
        release.set()
        answers = await asyncio.gather(*callers)
    finally:
        release.set()
        for task in callers:
            task.cancel()  # a no-op once done; after a failed wait, nothing is left running
        await asyncio.gather(*callers, return_exceptions=True)
    return holder, waiter, answers


async def test_identical_calls_across_two_gateway_processes_make_one_upstream_call(
    fake: GatedFake, redis_target: RedisTarget, tmp_path: Path
) -> None:
    fake.set(VENDOR, Scenario(text="Paris"))
    async with two_gateways(fake, redis_target, tmp_path) as sides:
        holder, waiter, answers = await stampede(fake, sides)
        holder_cache, waiter_cache = await holder.cache(), await waiter.cache()

    # A second call here was made after the release: a caller stopped waiting without the peer's answer.
    assert fake.count(VENDOR) == 1, (outcomes(answers), f"{holder.name} held the lease", waiter_cache)
    assert [a.is_error for a in answers] == [False] * 2 * CALLERS_EACH
    assert {a.data["answer"] for a in answers} == {"Paris"}
    assert {(a.only["status"], a.only["text"]) for a in answers} == {("ok", "Paris")}
    (made,) = [a for a in answers if not a.only["cached"]]  # exactly one answer came from the provider
    assert (made.process, made.only["attempts"]) == (holder.name, 1)
    others = [a for a in answers if a is not made]
    assert {(a.only["cached"], a.only["attempts"]) for a in others} == {(True, 0)}
    assert sum(a.process == waiter.name for a in others) == CALLERS_EACH  # the peer's answer, through Redis

    assert (waiter_cache["peer_waits"], waiter_cache["peer_waits_in_flight"], waiter_cache["hits"]) == (1, 0, 1)
    assert (holder_cache["peer_waits"], holder_cache["peer_waits_in_flight"]) == (0, 0)
    for cache in (holder_cache, waiter_cache):
        assert (cache["backend"], cache["url"], cache["healthy"], cache["failures"]) == (
            "redis",
            redis_target.url,
            True,
            0,
        )
    keys = redis_target.stored_keys()
    assert [k for k in keys if b":lease:" in k] == []  # the holder released its lease
    assert len([k for k in keys if k.startswith(answer_prefix(redis_target.namespace).encode())]) == 1  # one, shared


async def test_when_the_lease_holder_fails_the_other_process_fails_alike_and_nothing_is_cached(
    fake: GatedFake, redis_target: RedisTarget, tmp_path: Path
) -> None:
    fake.set(VENDOR, Scenario.error("bad_request"))  # not retryable: one upstream call, one error
    async with two_gateways(fake, redis_target, tmp_path) as sides:
        holder, waiter, answers = await stampede(fake, sides)
        assert fake.count(VENDOR) == 1, (outcomes(answers), f"{holder.name} held the lease")
        stored = [k for k in redis_target.stored_keys() if k.startswith(answer_prefix(redis_target.namespace).encode())]

        fake.set(VENDOR, Scenario(text="Paris"))
        retried = await waiter.ask()  # nothing was cached: the next call goes upstream again
        upstream_after = fake.count(VENDOR)

    assert [a.is_error for a in answers] == [True] * 2 * CALLERS_EACH
    assert {a.only["error"]["code"] for a in answers} == {"bad_request"}
    from_peer = [a for a in answers if "from another gateway process" in a.only["error"]["message"]]
    assert len(from_peer) == CALLERS_EACH and {a.process for a in from_peer} == {waiter.name}
    assert {a.process for a in answers if a not in from_peer} == {holder.name}
    assert stored == []

    assert upstream_after == 2
    assert (retried.is_error, retried.only["status"], retried.only["text"]) == (False, "ok", "Paris")
    assert (retried.only["cached"], retried.only["attempts"]) == (False, 1)
