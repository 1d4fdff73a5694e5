"""Redis is never a dependency: down at start, dying mid-run, hanging, full, or holding garbage.

In every test each tool call answers. What happened to Redis is read from the backend itself
(``healthy``, ``failures``), from its log records and from what a real Redis holds afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pickle
import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis

from ai_gateway.cache.key import answer_prefix, cache_key, error_key, lease_key
from ai_gateway.cache.memory import MemoryBackend
from ai_gateway.cache.redis_backend import RedisBackend
from ai_gateway.types import ChatRequest, Message
from tests.cache.conftest import OpenGateway
from tests.cache.support import MODEL, PROMPT, CacheFake, FakeClock, Running, until
from tests.fake_provider import Scenario
from tests.redis_harness import HungRedis, MuteFirstConnection, RedisProcess, RedisTarget, free_port

VENDOR = MODEL.partition("/")[2]
REDIS_LOGGER = "ai_gateway.cache.redis_backend"


def redis_backend(gw: Running) -> RedisBackend:
    backend = gw.gateway.cache.backend
    assert isinstance(backend, RedisBackend)
    return backend


def answer_keys(target: RedisTarget) -> list[bytes]:
    """Stored answers only (not the single-flight lease and error keys)."""
    return [k for k in target.stored_keys() if k.startswith(answer_prefix(target.namespace).encode())]


def redis_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == REDIS_LOGGER and r.levelno >= logging.WARNING]


def assert_ok(*replies: Any) -> None:
    for reply in replies:
        assert not reply.is_error, reply.raw.content
        assert all(r["status"] == "ok" for r in reply.results), reply.results


def refuse_writes(server: RedisProcess) -> None:
    """From here on Redis keeps its data and answers reads, but refuses every write (maxmemory, noeviction)."""
    with server.client() as r:
        r.config_set("maxmemory-policy", "noeviction")
        r.config_set("maxmemory", "1")


def accept_writes(server: RedisProcess) -> None:
    with server.client() as r:
        r.config_set("maxmemory", "0")


# ---------------------------------------------------------------------------- (a) down at start
async def test_redis_unreachable_at_start_the_gateway_serves_from_the_embedded_cache(
    open_gateway: OpenGateway, fake: CacheFake, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    port = free_port()
    url = f"redis://:s3cretpw@127.0.0.1:{port}/0"  # nothing listens there
    async with open_gateway(redis_url=url, cache_cooldown_s=30) as gw:
        first = await gw.ask()
        second = await gw.ask()
        third = await gw.ask(prompt="Another question?")
        backend = redis_backend(gw)
        assert not backend.healthy and backend.failures >= 1
        (warning,) = redis_warnings(caplog)  # one outage, one warning, however many calls it met

    assert_ok(first, second, third)
    assert (first.only["cached"], second.only["cached"]) == (False, True)  # the repeat: the embedded fallback
    assert fake.count(VENDOR) == 2
    assert "****" in warning.getMessage()
    # At shutdown, one more: the two answers made meanwhile never reached Redis (a replay elsewhere misses them).
    assert [r.getMessage() for r in redis_warnings(caplog)[1:]] == [
        f"redis cache at redis://:****@127.0.0.1:{port}/0 did not take 2 answer(s) at "
        "shutdown; they were kept in this process only (other processes, and a later --cache only replay, will not "
        "find them)"
    ]
    assert "s3cretpw" not in caplog.text
    assert all("s3cretpw" not in r.getMessage() for r in caplog.records)


async def test_a_wrong_password_or_database_is_named_in_the_one_warning(
    open_gateway: OpenGateway, fake: CacheFake, private_redis: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """The warning gave the error's type alone ("AuthenticationError", "ResponseError"), and for a database number
    past the server's the near cache added that the shared cache "works as before" while it was not used at all
    (found by a review). Redis's own words now say what to fix; the near cache says nothing of a refusal that is
    not of tracking."""
    with private_redis.client() as r:
        r.config_set("requirepass", "s3cretpw")
    cases = [
        ("wr0ngpass", 0, "failed (AuthenticationError: invalid username-password pair"),
        ("s3cretpw", 99, "failed (ResponseError: DB index is out of range)"),
    ]
    for password, db, said in cases:
        caplog.clear()
        url = f"redis://:{password}@127.0.0.1:{private_redis.port}/{db}"
        async with open_gateway(redis_url=url, cache_op_timeout_s=1.0, cache_cooldown_s=30) as gw:
            assert_ok(await gw.ask(prompt=f"Question for db {db}?"))
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert said in warnings[0], warnings
        assert not [w for w in warnings if "client-side tracking" in w], warnings
        assert password not in caplog.text


# ---------------------------------------------------------------------------- (b) dies mid-run, comes back
async def test_redis_stopped_mid_run_then_restarted_is_used_again_after_the_cooldown(
    open_gateway: OpenGateway, fake: CacheFake, private_redis: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=REDIS_LOGGER)
    target = RedisTarget(private_redis.port, 0)
    async with open_gateway(**target.settings(), cache_cooldown_s=0.2) as gw:
        backend = redis_backend(gw)
        before = await gw.ask()
        assert len(target.stored_keys()) == 1  # the answer is in Redis

        private_redis.stop()
        during = [await gw.ask(), await gw.ask(prompt="Second question?"), await gw.ask(prompt="Second question?")]
        assert backend.failures >= 1
        assert during[2].only["cached"] is True  # the fallback answered the repeat

        await asyncio.to_thread(private_redis.start)  # a new, empty Redis on the same port
        assert target.stored_keys() == []
        after: list[Any] = []
        for i in range(200):  # bounded: each round waits out the cooldown, then writes a new answer
            await until(lambda: backend.healthy, "the cooldown to end")
            after.append(await gw.ask(prompt=f"Question {i} after the restart?"))
            if target.stored_keys():
                break
        assert target.stored_keys(), "no answer reached Redis after it came back"
        assert backend.failures == 0

    assert_ok(before, *during, *after)
    messages = [r.getMessage() for r in redis_warnings(caplog)]
    assert any("failed" in m for m in messages) and any("answering again" in m for m in messages)


# ---------------------------------------------------------------------------- (c) hangs
async def test_a_hung_redis_trips_and_later_calls_skip_it(
    open_gateway: OpenGateway, fake: CacheFake, hung_redis: HungRedis
) -> None:
    async with open_gateway(redis_url=hung_redis.url, cache_cooldown_s=30) as gw:
        backend = redis_backend(gw)
        first = await gw.ask()
        assert hung_redis.accepted >= 1
        await until(lambda: not backend.healthy, "the probe to confirm the hang")
        assert backend.failures >= 1
        failures = backend.failures
        later = [await gw.ask(), await gw.ask(prompt="Another question?")]
        assert backend.failures == failures  # skipped while cooling down: no new timeouts

    assert_ok(first, *later)
    assert later[0].only["cached"] is True  # served by the embedded fallback
    assert fake.count(VENDOR) == 2


# ---------------------------------------------------------------------------- (d) full, refusing writes
async def test_a_full_redis_refusing_writes_does_not_fail_calls(
    open_gateway: OpenGateway, fake: CacheFake, private_redis: RedisProcess
) -> None:
    with private_redis.client() as r:
        r.config_set("maxmemory-policy", "noeviction")
        r.config_set("maxmemory", "1mb")
        for i in range(1000):  # bounded fill until Redis refuses writes
            try:
                r.set(f"filler:{i}", b"x" * 32768)
            except redis.exceptions.OutOfMemoryError:
                break
        else:
            pytest.fail("Redis never refused a write under maxmemory 1mb")
    target = RedisTarget(private_redis.port, 0)

    async with open_gateway(**target.settings(), cache_cooldown_s=30) as gw:
        first = await gw.ask()
        second = await gw.ask()
        backend = redis_backend(gw)
        assert backend.failures >= 1

    assert_ok(first, second)
    assert (first.only["cached"], second.only["cached"]) == (False, True)  # embedded fallback
    assert answer_keys(target) == []
    assert fake.count(VENDOR) == 1


async def test_a_write_refused_after_the_lease_was_taken_leaves_no_lease_behind(
    open_gateway: OpenGateway, fake: CacheFake, private_redis: RedisProcess
) -> None:
    target = RedisTarget(private_redis.port, 0)
    release = fake.hold(VENDOR)
    async with open_gateway(**target.settings(), cache_cooldown_s=0.2) as holder:
        call = asyncio.create_task(holder.ask())
        await fake.wait_for_calls(1, VENDOR)  # the lease is taken before the provider is called
        refuse_writes(private_redis)  # every write is refused from here on
        release.set()
        assert_ok(await call)
        assert redis_backend(holder).failures >= 1
    accept_writes(private_redis)  # Redis is well again
    async with open_gateway(**target.settings()) as peer:
        reply = await peer.ask(timeout_s=1)

    assert_ok(reply)


# ---------------------------------------------------------------------------- (e) garbage under a live key
GARBAGE: list[Any] = [
    pytest.param(b"\x80\x81\xfe not an envelope", id="binary"),
    pytest.param(json.dumps({"v": 2, "text": "from the future"}).encode(), id="other-version"),
    pytest.param(pickle.dumps({"text": "pickled"}), id="pickle"),
    pytest.param(json.dumps({"v": 1, "text": "", "finish_reason": "stop", "usage": None}).encode(), id="empty-text"),
    pytest.param(b"[" * 100_000, id="deeply-nested-json"),
]


def live_key(namespace: str, fake: CacheFake) -> str:
    """The key the dispatcher uses for PROMPT to MODEL, computed independently."""
    request = ChatRequest(messages=(Message("user", PROMPT),))
    options = {"max_tokens_field": "max_completion_tokens"}  # the openai provider's, which join its keys
    return cache_key(namespace, "openai", f"{fake.url}/v1", VENDOR, request, None, options)


@pytest.mark.parametrize("garbage", GARBAGE)
async def test_garbage_under_a_live_key_is_a_miss_and_is_replaced(
    open_gateway: OpenGateway, fake: CacheFake, redis_target: RedisTarget, garbage: bytes
) -> None:
    fake.set(VENDOR, Scenario(text="Paris"))
    key = live_key(redis_target.namespace, fake)
    with redis_target.client() as r:
        r.set(key, garbage, ex=60)
    async with open_gateway(**redis_target.settings()) as gw:
        reply = await gw.ask()
        backend = redis_backend(gw)
        assert backend.failures == 0  # garbage is not a Redis failure

    assert_ok(reply)
    assert (reply.answer, reply.only["cached"]) == ("Paris", False)
    assert fake.count(VENDOR) == 1
    with redis_target.client() as r:
        data = json.loads(r.get(key))
    assert (data["v"], data["text"]) == (1, "Paris")


async def test_a_value_of_another_redis_type_under_a_live_key_is_a_miss_not_an_outage(
    open_gateway: OpenGateway, fake: CacheFake, redis_target: RedisTarget, caplog: pytest.LogCaptureFixture
) -> None:
    """A list under one answer's key failed the lookup (WRONGTYPE), which was taken for an outage: Redis was skipped
    for every key for a cooldown (a replay missed answers that were there), and the list was never replaced."""
    caplog.set_level(logging.INFO, logger=REDIS_LOGGER)
    fake.set(VENDOR, Scenario(text="Paris"))
    key = live_key(redis_target.namespace, fake)
    async with open_gateway(**redis_target.settings()) as filler:
        assert_ok(await filler.ask(prompt="Another question?"))
    with redis_target.client() as r:
        r.rpush(key, b"not", b"an", b"envelope")
    async with open_gateway(**redis_target.settings(), cache_cooldown_s=300) as gw:
        reply = await gw.ask()
        replay = await gw.ask(prompt="Another question?", cache="only")
        backend = redis_backend(gw)
        assert (backend.failures, backend.healthy) == (0, True)

    assert_ok(reply, replay)
    assert (reply.answer, reply.only["cached"]) == ("Paris", False)
    assert replay.only["cached"] is True
    assert redis_warnings(caplog) == []
    with redis_target.client() as r:
        assert json.loads(r.get(key))["text"] == "Paris"  # the next answer replaced the list


async def test_a_plain_read_of_a_value_of_another_redis_type_is_a_miss_not_an_outage(
    redis_target: RedisTarget,
) -> None:
    key = f"{answer_prefix(redis_target.namespace)}listed"
    with redis_target.client() as r:
        r.rpush(key, b"not", b"an", b"envelope")
    backend = RedisBackend(redis_target.url, MemoryBackend(10, 1 << 20), cooldown_s=300)
    try:
        assert await backend.get(key) is None
        assert (backend.failures, backend.healthy) == (0, True)
    finally:
        await backend.aclose()


async def test_a_value_of_another_type_is_replaced_by_the_copy_of_an_answer_kept_during_an_outage(
    open_gateway: OpenGateway, fake: CacheFake, private_redis: RedisProcess
) -> None:
    """A use call's answer is copied unless Redis holds another answer by then; with SET NX a list counted as one."""
    target = RedisTarget(private_redis.port, 0)
    fake.set(VENDOR, Scenario(text="Paris"))
    key = live_key(target.namespace, fake)
    async with open_gateway(**target.settings(), cache_cooldown_s=0.2) as gw:
        backend = redis_backend(gw)
        private_redis.stop()
        assert_ok(await gw.ask())  # kept in this process, to be copied
        await gw.settle()
        assert backend.unsynced == 1
        await asyncio.to_thread(private_redis.start)  # empty
        with target.client() as r:
            r.rpush(key, b"not", b"an", b"envelope")
        await until(lambda: backend.healthy, "the cooldown to end")
        assert_ok(await gw.ask(prompt="A question after the restart?"))  # Redis answers: the copy starts

        def copied() -> bool:
            with target.client() as r:
                return r.type(key) == b"string"

        await until(copied, "the answer kept locally to replace the list")
        assert backend.failures == 0

    with target.client() as r:
        assert json.loads(r.get(key))["text"] == "Paris"


async def test_a_foreign_peer_error_under_a_held_lease_does_not_fail_the_call(
    open_gateway: OpenGateway, fake: CacheFake, redis_target: RedisTarget
) -> None:
    key = live_key(redis_target.namespace, fake)
    with redis_target.client() as r:
        r.set(lease_key(key), b"someone-else", px=3000)
        r.set(error_key(key), json.dumps({"code": "not-a-code", "message": "?"}).encode(), px=3000)
    async with open_gateway(**redis_target.settings()) as gw:
        reply = await gw.ask(timeout_s=5)

    assert_ok(reply)


# ------------------------------------------------------------------ a timeout is checked before skipping Redis
async def test_a_timeout_while_redis_answers_a_probe_does_not_trip_it(redis_target: RedisTarget) -> None:
    """One connection's reply never comes (as when this process's loop or GIL was held up), but Redis answers a
    PING on another: the operation falls back, and Redis stays in use."""
    async with MuteFirstConnection(redis_target.port) as proxy:
        backend = RedisBackend(proxy.url(redis_target.db), MemoryBackend(10, 1 << 20), op_timeout_s=0.1)
        try:
            assert await backend.get(f"{redis_target.namespace}:k") is None  # timed out: the fallback answered
            await until(lambda: backend.slow == 1, "the probe to find Redis answering")
            assert (backend.failures, backend.healthy) == (0, True)
            await backend.set(f"{redis_target.namespace}:k", b"v", 60)  # on a new connection: reaches Redis
            assert redis_target.items() == {f"{redis_target.namespace}:k".encode(): b"v"}
        finally:
            await backend.aclose()


@contextlib.asynccontextmanager
async def answer_stored_then_muted(
    open_gateway: OpenGateway, fake: CacheFake, redis_target: RedisTarget
) -> AsyncIterator[Running]:
    """PROMPT's answer in Redis, then a fresh gateway whose first Redis connection never gets a reply."""
    fake.set(VENDOR, Scenario(text="Paris"))
    async with open_gateway(**redis_target.settings()) as filler:
        assert_ok(await filler.ask())
    async with MuteFirstConnection(redis_target.port) as proxy:
        muted = {"redis_url": proxy.url(redis_target.db), "cache_namespace": redis_target.namespace}
        async with open_gateway(**muted) as gw:
            yield gw


async def test_a_replay_waits_for_the_probe_and_reads_again_instead_of_missing(
    open_gateway: OpenGateway, fake: CacheFake, redis_target: RedisTarget
) -> None:
    """With cache=only a miss fails the model, so a lookup that timed out while Redis is well is read again."""
    async with answer_stored_then_muted(open_gateway, fake, redis_target) as gw:
        replay = await gw.ask(cache="only")
        backend = redis_backend(gw)
        assert (backend.slow, backend.failures, backend.healthy) == (1, 0, True)

    assert_ok(replay)
    assert (replay.answer, replay.only["cached"]) == ("Paris", True)
    assert fake.count(VENDOR) == 1


async def test_an_ordinary_lookup_that_times_out_does_not_wait_for_the_probe(
    open_gateway: OpenGateway, fake: CacheFake, redis_target: RedisTarget
) -> None:
    """cache=use: a lookup gets one short timeout, then the provider answers (fail open, never a long wait)."""
    async with answer_stored_then_muted(open_gateway, fake, redis_target) as gw:
        reply = await gw.ask()

    assert_ok(reply)
    assert reply.only["cached"] is False
    assert fake.count(VENDOR) == 2


async def test_a_timeout_where_the_probe_times_out_too_trips_redis(hung_redis: HungRedis) -> None:
    backend = RedisBackend(hung_redis.url, MemoryBackend(10, 1 << 20), op_timeout_s=0.05, cooldown_s=30)
    try:
        assert await backend.get("k") is None
        assert backend.healthy  # not yet: the probe decides
        await until(lambda: not backend.healthy, "the probe to give up on Redis")
        assert (backend.failures, backend.slow) == (1, 0)
    finally:
        await backend.aclose()


async def test_a_replay_reads_a_redis_that_answers_again_before_its_cooldown_ends(
    open_gateway: OpenGateway, fake: CacheFake, private_redis: RedisProcess
) -> None:
    """After a short outage Redis answered again, but a replay kept skipping it for the whole cooldown and reported
    cache_miss for answers that were there."""
    target = RedisTarget(private_redis.port, 0)
    fake.set(VENDOR, Scenario(text="Paris"))
    async with open_gateway(**target.settings()) as filler:
        assert_ok(await filler.ask())
    async with open_gateway(**target.settings(), cache_cooldown_s=300) as gw:
        backend = redis_backend(gw)
        refuse_writes(private_redis)
        assert_ok(await gw.ask(models=["openai/other-model"]))  # refused: Redis is skipped from here
        assert not backend.healthy
        accept_writes(private_redis)  # the outage is over; the cooldown is not
        replay = await gw.ask(cache="only")
        assert (backend.healthy, backend.failures) == (True, 0)  # and every other call uses Redis again too
        await until(lambda: len(answer_keys(target)) == 2, "the answer kept during the outage to be copied")

    assert_ok(replay)
    assert (replay.answer, replay.only["cached"]) == ("Paris", True)
    assert fake.count(VENDOR) == 1  # the filler's call only


async def test_a_replay_during_an_outage_misses_once_redis_does_not_answer_either(
    open_gateway: OpenGateway, fake: CacheFake, private_redis: RedisProcess
) -> None:
    target = RedisTarget(private_redis.port, 0)
    async with open_gateway(**target.settings(), cache_cooldown_s=300) as gw:
        backend = redis_backend(gw)
        private_redis.stop()
        assert_ok(await gw.ask(models=["openai/other-model"]))  # Redis is skipped from here
        failures = backend.failures
        replay = await gw.ask(cache="only")
        assert (backend.healthy, backend.failures) == (False, failures + 1)  # it was asked, and is skipped again

    assert replay.only["error"]["code"] == "cache_miss"


# ---------------------------------------------------------------------------- answers kept locally reach Redis later
async def test_answers_stored_during_an_outage_are_copied_to_redis_when_it_returns(
    open_gateway: OpenGateway, fake: CacheFake, private_redis: RedisProcess
) -> None:
    target = RedisTarget(private_redis.port, 0)
    async with open_gateway(**target.settings(), cache_cooldown_s=0.2) as gw:
        backend = redis_backend(gw)
        private_redis.stop()
        during = [await gw.ask(prompt=f"Outage question {i}?") for i in range(3)]
        await gw.settle()
        assert backend.unsynced == 3 and not backend.healthy

        await asyncio.to_thread(private_redis.start)  # empty again
        await until(lambda: backend.healthy, "the cooldown to end")
        after = await gw.ask(prompt="A question after the restart?")  # Redis answers: the copy starts
        await until(lambda: len(answer_keys(target)) == 4, "the three answers kept locally to reach Redis")
        assert backend.unsynced == 0

    # Another gateway (nothing in its own memory) is served all three from Redis.
    async with open_gateway(**target.settings()) as peer:
        replayed = [await peer.ask(prompt=f"Outage question {i}?", cache="only") for i in range(3)]

    assert_ok(*during, after, *replayed)
    assert [r.answer for r in replayed] == [r.answer for r in during]
    assert fake.count(VENDOR) == 4


async def test_answers_kept_locally_are_copied_at_shutdown_even_in_a_cooldown(
    open_gateway: OpenGateway, fake: CacheFake, private_redis: RedisProcess
) -> None:
    """A batch that ends inside the cooldown after a short outage still leaves its answers in Redis."""
    target = RedisTarget(private_redis.port, 0)
    async with open_gateway(**target.settings(), cache_cooldown_s=300) as gw:
        backend = redis_backend(gw)
        private_redis.stop()
        during = await gw.ask()
        await gw.settle()
        assert backend.unsynced == 1
        await asyncio.to_thread(private_redis.start)
        assert not backend.healthy  # still cooling down when the gateway shuts down
    assert backend.unsynced == 0
    assert len(answer_keys(target)) == 1

    async with open_gateway(**target.settings()) as peer:
        replayed = await peer.ask(cache="only")
    assert_ok(during, replayed)
    assert replayed.answer == during.answer and replayed.only["cached"] is True


async def test_an_answer_to_an_operation_sent_before_a_failure_is_no_recovery(
    redis_target: RedisTarget, caplog: pytest.LogCaptureFixture
) -> None:
    """Under maxmemory with noeviction reads succeed while writes fail: a read answered just after a refused write
    logged "answering again" while Redis was still left alone for the cooldown, and the next write the outage again,
    every cooldown (found by a review). Recovery is when the cooldown is over and Redis answers."""
    caplog.set_level(logging.INFO, logger=REDIS_LOGGER)
    clock = FakeClock()
    backend = RedisBackend(redis_target.url, MemoryBackend(10, 1 << 20), op_timeout_s=1.0, cooldown_s=30, clock=clock)
    key = f"{redis_target.namespace}:k"
    try:
        await backend.set(key, b"answer", 60)
        in_flight = backend.client.get(key)  # sent before the failure below, answered after it
        backend._trip(redis.exceptions.ResponseError("OOM command not allowed when used memory > 'maxmemory'."))
        assert await backend._guard(in_flight) == b"answer"
        assert (backend.failures, backend.healthy) == (1, False)
        clock.advance(30)  # the cooldown is over: the next answer is a recovery
        assert await backend.get(key) == b"answer"
        assert (backend.failures, backend.healthy) == (0, True)
    finally:
        await backend.aclose()
    said = [r.getMessage() for r in redis_warnings(caplog)]
    assert len(said) == 2 and "failed (ResponseError: OOM" in said[0] and "is answering again" in said[1], said


async def test_the_copy_at_shutdown_waits_for_a_redis_paused_for_a_moment(
    open_gateway: OpenGateway, fake: CacheFake, private_redis: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """Shutdown's one try waited one operation timeout (0.1 s): a Redis busy or paused for a moment as a run ended
    (here CLIENT PAUSE for 1 s, which Redis ends itself) kept every answer made in the outage before, and a
    replay missed them all (found by a review). It now waits as long as shutdown may (2 s)."""
    target = RedisTarget(private_redis.port, 0)
    async with open_gateway(**{**target.settings(), "cache_op_timeout_s": 0.2}, cache_cooldown_s=300) as gw:
        backend = redis_backend(gw)
        private_redis.stop()
        during = [await gw.ask(prompt=f"Outage question {i}?") for i in range(3)]
        await gw.settle()
        assert backend.unsynced == 3
        await asyncio.to_thread(private_redis.start)
        with private_redis.client() as r:
            r.execute_command("CLIENT", "PAUSE", 1000, "ALL")
    assert backend.unsynced == 0
    assert not [r for r in redis_warnings(caplog) if "did not take" in r.getMessage()]
    assert len(answer_keys(target)) == 3

    async with open_gateway(**target.settings()) as peer:
        replayed = [await peer.ask(prompt=f"Outage question {i}?", cache="only") for i in range(3)]
    assert_ok(*during, *replayed)
    assert [r.answer for r in replayed] == [r.answer for r in during]


async def test_a_copy_cut_off_by_the_end_of_shutdown_s_wait_is_counted_as_not_taken(
    open_gateway: OpenGateway,
    fake: CacheFake,
    private_redis: RedisProcess,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The batch on the wire when shutdown stops waiting is still not in Redis: it is counted in the warning (taken
    off the list for the copy and never put back, it went unreported)."""
    monkeypatch.setattr("ai_gateway.cache.redis_backend.RESYNC_AT_CLOSE_S", 0.3)
    target = RedisTarget(private_redis.port, 0)
    async with open_gateway(**target.settings(), cache_cooldown_s=300) as gw:
        backend = redis_backend(gw)
        private_redis.stop()
        for i in range(3):
            assert_ok(await gw.ask(prompt=f"Outage question {i}?"))
        await gw.settle()
        await asyncio.to_thread(private_redis.start)
        assert private_redis.proc is not None
        os.kill(private_redis.proc.pid, signal.SIGSTOP)  # hung past the wait (CLIENT PAUSE cannot be ended early)
    os.kill(private_redis.proc.pid, signal.SIGCONT)
    assert backend.unsynced == 3
    (kept,) = [r.getMessage() for r in redis_warnings(caplog) if "did not take" in r.getMessage()]
    assert "did not take 3 answer(s) at shutdown" in kept
    assert answer_keys(target) == []


async def test_a_redis_still_down_at_shutdown_leaves_one_warning_and_one_of_what_stayed_local(
    open_gateway: OpenGateway, fake: CacheFake, private_redis: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """What stayed local was said at INFO, hidden by default: an eval run's user learnt only at the replay that its
    answers never reached Redis."""
    target = RedisTarget(private_redis.port, 0)
    async with open_gateway(**target.settings(), cache_cooldown_s=300) as gw:
        private_redis.stop()
        assert_ok(await gw.ask())
        await gw.settle()
    outage, kept = redis_warnings(caplog)  # the outage, once; then what it cost, at shutdown
    assert "failed" in outage.getMessage()
    assert "did not take 1 answer(s) at shutdown; they were kept in this process only" in kept.getMessage()


# ---------------------------------------------------------------------------- leases, refreshes and restarts
async def test_a_lease_is_released_when_redis_trips_during_the_holder_s_call(
    open_gateway: OpenGateway, fake: CacheFake, private_redis: RedisProcess
) -> None:
    """Another call's refused write trips the breaker while the holder waits for its provider: the holder's
    answer then stays local, but its lease must still go (Redis takes a DEL when full), or every other gateway
    waits on it for the rest of the holder's deadline."""
    target = RedisTarget(private_redis.port, 0)
    release = fake.hold(VENDOR)
    async with open_gateway(**target.settings(), cache_cooldown_s=30) as holder:
        call = asyncio.create_task(holder.ask(timeout_s=60))
        await fake.wait_for_calls(1, VENDOR)  # the lease is taken before the provider is called
        assert [k for k in target.stored_keys() if b":lease:" in k] != []
        refuse_writes(private_redis)  # writes refused from here on
        assert_ok(await holder.ask(models=["openai/other-model"]))  # its store is refused: Redis is tripped
        assert not redis_backend(holder).healthy
        release.set()
        assert_ok(await call)
        assert [k for k in target.stored_keys() if b":lease:" in k] == []


async def test_a_refresh_made_while_redis_refused_writes_replaces_the_old_entry_when_it_returns(
    open_gateway: OpenGateway, fake: CacheFake, private_redis: RedisProcess
) -> None:
    target = RedisTarget(private_redis.port, 0)
    fake.set(VENDOR, Scenario(text="OLD answer"))
    async with open_gateway(**target.settings(), cache_cooldown_s=0.2) as gw:
        backend = redis_backend(gw)
        assert (await gw.ask()).answer == "OLD answer"
        refuse_writes(private_redis)
        fake.set(VENDOR, Scenario(text="NEW answer"))
        assert (await gw.ask(cache="refresh")).answer == "NEW answer"  # kept here, Redis refused it
        assert backend.unsynced == 1 and not backend.healthy
        accept_writes(private_redis)
        await until(lambda: backend.healthy, "the cooldown to end")
        fake.set(VENDOR, Scenario(text="THIRD answer"))
        again = await gw.ask()  # before the copy is made: this process's refresh is newer than Redis's entry
        await until(lambda: backend.unsynced == 0, "the refreshed answer to reach Redis")
    async with open_gateway(**target.settings()) as peer:
        replayed = await peer.ask(cache="only")

    assert (again.answer, again.only["cached"]) == ("NEW answer", True)
    assert replayed.answer == "NEW answer"  # not the OLD entry the refresh replaced (SET NX kept it before)
    assert fake.count(VENDOR) == 2


async def test_a_failed_refresh_during_an_outage_removes_the_old_entry_when_redis_returns(
    open_gateway: OpenGateway, fake: CacheFake, private_redis: RedisProcess
) -> None:
    target = RedisTarget(private_redis.port, 0)
    fake.set(VENDOR, Scenario(text="OLD answer"))
    async with open_gateway(**target.settings(), cache_cooldown_s=0.2) as gw:
        backend = redis_backend(gw)
        assert (await gw.ask()).answer == "OLD answer"
        refuse_writes(private_redis)  # Redis keeps its data but refuses writes
        assert_ok(await gw.ask(models=["openai/other-model"]))  # its store is refused: Redis is tripped
        fake.set(VENDOR, Scenario.error("bad_request"))
        refreshed = await gw.ask(cache="refresh")  # fails: the entry it was to replace must go
        assert refreshed.is_error and not backend.healthy and backend.unsynced == 2
        accept_writes(private_redis)
        await until(lambda: backend.healthy, "the cooldown to end")
        during = await gw.ask(cache="only")  # before the copy: the removal holds here already
        await until(lambda: backend.unsynced == 0, "the removal to reach Redis")
    async with open_gateway(**target.settings()) as peer:
        replayed = await peer.ask(cache="only")

    assert during.only["error"]["code"] == "cache_miss"
    assert replayed.only["error"]["code"] == "cache_miss"  # the OLD answer is gone from Redis too
    assert len(answer_keys(target)) == 1  # the other model's answer only


async def test_an_answer_kept_during_one_outage_is_not_served_in_the_next_after_a_refresh(
    open_gateway: OpenGateway, fake: CacheFake, private_redis: RedisProcess
) -> None:
    target = RedisTarget(private_redis.port, 0)
    fake.set(VENDOR, Scenario(text="OLD answer"))
    async with open_gateway(**target.settings(), cache_cooldown_s=0.2) as gw:
        backend = redis_backend(gw)
        private_redis.stop()
        assert (await gw.ask()).answer == "OLD answer"  # outage 1: kept in the embedded fallback
        await asyncio.to_thread(private_redis.start)
        await until(lambda: backend.healthy, "the cooldown to end")
        fake.set(VENDOR, Scenario(text="NEW answer"))
        assert (await gw.ask(cache="refresh")).answer == "NEW answer"  # stored in Redis
        private_redis.stop()
        fake.set(VENDOR, Scenario(text="THIRD answer"))
        during = await gw.ask()  # outage 2

    assert_ok(during)
    assert during.answer != "OLD answer"  # the fallback's copy was superseded by the refresh
    assert fake.count(VENDOR) == 3


async def test_an_answer_copied_to_redis_after_an_outage_is_not_served_in_the_next_one(
    open_gateway: OpenGateway, fake: CacheFake, private_redis: RedisProcess
) -> None:
    """Left in the embedded cache once copied, it came back in the next outage and undid another process's refresh
    made in between."""
    target = RedisTarget(private_redis.port, 0)
    fake.set(VENDOR, Scenario(text="OLD answer"))
    async with open_gateway(**target.settings(), cache_cooldown_s=0.2) as gw:
        backend = redis_backend(gw)
        private_redis.stop()
        assert (await gw.ask()).answer == "OLD answer"  # outage 1: kept here, to be copied
        await asyncio.to_thread(private_redis.start)
        await until(lambda: backend.healthy, "the cooldown to end")
        assert_ok(await gw.ask(prompt="A question after the restart?"))  # Redis answers: the copy starts
        await until(lambda: len(answer_keys(target)) == 2, "the answer kept locally to reach Redis")
        await until(lambda: len(gw.memory()) == 0, "the local copy to be dropped once Redis holds the answer")
        fake.set(VENDOR, Scenario(text="NEW answer"))
        async with open_gateway(**target.settings()) as other:
            assert (await other.ask(cache="refresh")).answer == "NEW answer"
        private_redis.stop()
        fake.set(VENDOR, Scenario(text="THIRD answer"))
        during = await gw.ask()  # outage 2

    assert_ok(during)
    assert (during.answer, during.only["cached"]) == ("THIRD answer", False)  # not the OLD answer refreshed away
    assert fake.count(VENDOR) == 4


async def test_a_redis_restart_while_the_gateway_is_idle_does_not_trip_it(
    open_gateway: OpenGateway, fake: CacheFake, private_redis: RedisProcess
) -> None:
    """Connections pooled before the restart are dead; redis-py must notice before using them (with its
    'maintenance notifications' left on, it did not, and each one's first command tripped the breaker)."""
    target = RedisTarget(private_redis.port, 0)
    fake.set(VENDOR, Scenario(text="Paris", delay_ms=20))
    async with open_gateway(**target.settings(), cache_cooldown_s=300) as gw:
        backend = redis_backend(gw)
        await asyncio.gather(*(gw.query(prompt=f"Warm-up question {i}?") for i in range(8)))  # several connections
        await gw.settle()
        private_redis.stop()
        await asyncio.to_thread(private_redis.start)
        replies = await asyncio.gather(*(gw.ask(prompt=f"Question {i} after the restart?") for i in range(4)))
        assert (backend.failures, backend.healthy) == (0, True)

    assert_ok(*replies)
    assert len(answer_keys(target)) == 8 + 4 - 8  # the restart emptied Redis; the four new answers are there
