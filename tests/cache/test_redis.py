"""The shared cache in a real Redis: shared across gateways, stored as JSON envelopes under the namespace."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
from typing import Any

import pytest

from ai_gateway.cache.key import KEY_SCHEMA
from ai_gateway.cache.memory import MemoryBackend
from ai_gateway.cache.redis_backend import RedisBackend
from tests.cache.conftest import OpenGateway
from tests.cache.support import MODEL, CacheFake, Reply, Running
from tests.fake_provider import Scenario
from tests.integration.conftest import provider_env
from tests.redis_harness import RedisProcess, RedisTarget

VENDOR = MODEL.partition("/")[2]


async def test_an_answer_stored_by_one_gateway_serves_another_sharing_redis(
    open_gateway: OpenGateway, fake: CacheFake, redis_target: RedisTarget
) -> None:
    fake.set(VENDOR, Scenario(text="Paris"))
    async with open_gateway(**redis_target.settings()) as one:
        first = await one.ask()
        assert len(one.memory()) == 0  # written to Redis, not to the fallback
    async with open_gateway(**redis_target.settings()) as two:
        second = await two.ask()
        only = await two.ask(cache="only", models=[MODEL])

    assert (first.only["cached"], second.only["cached"], only.only["cached"]) == (False, True, True)
    assert first.answer == second.answer == only.answer == "Paris"
    assert second.only["attempts"] == 0
    assert fake.count(VENDOR) == 1


async def test_values_are_json_envelopes_under_the_namespace_with_the_ttl(
    open_gateway: OpenGateway, fake: CacheFake, redis_target: RedisTarget
) -> None:
    fake.set(VENDOR, Scenario(text="Paris"))
    async with open_gateway(**redis_target.settings(), cache_ttl_s=120) as gw:
        await gw.ask()

    (key,) = redis_target.stored_keys()
    assert key.decode().startswith(f"{redis_target.namespace}:v{KEY_SCHEMA}:")
    with redis_target.client() as r:
        raw, pttl = r.get(key), r.pttl(key)
    data = json.loads(raw)
    assert data["v"] == 1
    assert (data["text"], data["finish_reason"], data["model"]) == ("Paris", "stop", VENDOR)
    assert 110_000 < pttl <= 120_000


async def test_namespaces_keep_gateways_apart(
    open_gateway: OpenGateway, fake: CacheFake, redis_target: RedisTarget
) -> None:
    async with open_gateway(**redis_target.settings()) as one:
        await one.ask()
    other = RedisTarget(redis_target.port, redis_target.db)
    try:
        async with open_gateway(**other.settings()) as two:
            reply = await two.ask()
        assert reply.only["cached"] is False
        assert fake.count(VENDOR) == 2
        assert len(redis_target.stored_keys()) == len(other.stored_keys()) == 1
    finally:
        other.cleanup()


async def test_the_same_model_behind_another_endpoint_is_another_entry(
    open_gateway: OpenGateway, fake: CacheFake, redis_target: RedisTarget
) -> None:
    async with CacheFake() as elsewhere:
        async with open_gateway(**redis_target.settings()) as one:
            await one.ask()
        async with open_gateway(**redis_target.settings(), environ_=provider_env(elsewhere.url)) as two:
            reply = await two.ask()
        assert reply.only["cached"] is False
        assert (fake.count(VENDOR), elsewhere.count(VENDOR)) == (1, 1)
    assert len(redis_target.stored_keys()) == 2


async def test_refresh_overwrites_in_redis_and_bypass_writes_nothing(
    open_gateway: OpenGateway, fake: CacheFake, redis_target: RedisTarget
) -> None:
    fake.set(VENDOR, Scenario(text="old"))
    async with open_gateway(**redis_target.settings()) as gw:
        await gw.ask(models=["openai/other"], cache="bypass")
        assert redis_target.stored_keys() == []
        await gw.ask()
        fake.set(VENDOR, Scenario(text="new"))
        await gw.ask(cache="refresh")
    (key,) = redis_target.stored_keys()
    with redis_target.client() as r:
        assert json.loads(r.get(key))["text"] == "new"
    async with open_gateway(**redis_target.settings()) as fresh:
        reply = await fresh.ask()
    assert (reply.answer, reply.only["cached"]) == ("new", True)


async def test_failures_are_not_stored_in_redis(
    open_gateway: OpenGateway, fake: CacheFake, redis_target: RedisTarget
) -> None:
    fake.set(VENDOR, Scenario.error("bad_request"))
    async with open_gateway(**redis_target.settings()) as gw:
        failed = await gw.ask()
        fake.set(VENDOR, None)
    async with open_gateway(**redis_target.settings()) as fresh:
        only = await fresh.ask(cache="only")

    assert failed.only["error"]["code"] == "bad_request"
    assert only.is_error and only.only["error"]["code"] == "cache_miss"
    assert [k for k in redis_target.stored_keys() if k.count(b":") == 2] == []  # no answer entry


THREE = ["openai/model-a", "openai/model-b", "openai/model-c"]


async def ask_three(gw: Running, fake: CacheFake) -> Reply:
    """A consensus call over THREE models that all answer "Paris" (stored once settled)."""
    for model in THREE:
        fake.set(model.partition("/")[2], Scenario(text="Paris"))
    return await gw.ask(models=THREE, strategy="consensus")


async def test_the_lookups_of_one_consensus_call_share_one_round_trip(
    open_gateway: OpenGateway, fake: CacheFake, redis_target: RedisTarget
) -> None:
    async with open_gateway(**redis_target.settings()) as gw:
        first = await ask_three(gw, fake)
        backend: Any = gw.gateway.cache.backend
        before = backend.round_trips
        again = await gw.ask(models=THREE, strategy="consensus")
        trips = backend.round_trips - before

    assert [r["cached"] for r in first.results] == [False] * 3
    assert [r["cached"] for r in again.results] == [True] * 3
    assert again.answer == "Paris" and again.data["consensus"]["votes"] == 3
    assert trips == 1  # three lookups, one pipeline
    assert fake.count() == 3


async def test_a_replay_reads_a_consensus_calls_three_answers_with_one_mget(
    open_gateway: OpenGateway, fake: CacheFake, redis_target: RedisTarget
) -> None:
    async with open_gateway(**redis_target.settings()) as gw:
        first = await ask_three(gw, fake)
        backend: Any = gw.gateway.cache.backend
        before = backend.round_trips
        replay = await gw.ask(models=THREE, strategy="consensus", cache="only")
        trips = backend.round_trips - before
        missing = await gw.ask(models=[*THREE[:2], "openai/model-d"], strategy="consensus", cache="only")

    assert [r["cached"] for r in replay.results] == [True] * 3
    assert [r["text"] for r in replay.results] == [r["text"] for r in first.results]
    assert trips == 1
    # The two cached answers agree, a majority of three: the model with nothing cached is cancelled, as a run
    # that decided early would have cancelled it (see test_policy's consensus replay tests).
    assert [r["status"] for r in missing.results] == ["ok", "ok", "cancelled"]
    assert missing.data["consensus"]["decided_early"] is True
    assert fake.count() == 3


async def test_a_batch_still_answers_after_redis_forgot_its_scripts(
    open_gateway: OpenGateway, fake: CacheFake, private_redis: RedisProcess
) -> None:
    """After a restart or SCRIPT FLUSH every EVALSHA in a pipeline fails with NOSCRIPT: each is loaded and rerun."""
    target = RedisTarget(private_redis.port, 0)
    for model in THREE:
        fake.set(model.partition("/")[2], Scenario(text="Paris"))
    async with open_gateway(**target.settings()) as gw:
        await gw.ask(models=THREE, strategy="consensus")
        with private_redis.client() as r:
            r.script_flush()
        again = await gw.ask(models=THREE, strategy="consensus")
        backend: Any = gw.gateway.cache.backend
        assert (backend.failures, backend.healthy) == (0, True)

    assert [r["cached"] for r in again.results] == [True] * 3
    assert fake.count() == 3


async def test_a_store_and_a_lookup_of_the_same_key_in_one_pipeline_store_first(redis_target: RedisTarget) -> None:
    """A lookup queued in the same turn as the store of the answer it wants (the question asked again the moment
    it was answered) must find the answer, not the lease the store is about to release, which would make it
    wait a poll for an answer that is already there."""
    key = f"{redis_target.namespace}:k"
    backend = RedisBackend(redis_target.url, MemoryBackend(10, 1 << 20))
    try:
        _, taken = await backend.lookup(key, f"{key}:lease", "first", 5.0)
        assert taken is True
        (value, lease), _ = await asyncio.gather(
            backend.lookup(key, f"{key}:lease", "second", 5.0),  # queued first ...
            backend.settle(key, b"answer", 60, f"{key}:lease", "first", f"{key}:error", None),  # ... sent second
        )
        assert backend.round_trips == 2  # the claim, then both in one pipeline
    finally:
        await backend.aclose()

    assert (value, lease) == (b"answer", False)


async def test_more_operations_than_connections_wait_for_one_rather_than_fail(redis_target: RedisTarget) -> None:
    """Past max_connections an operation waits for a free connection: redis-py's own pool raises "Too many
    connections" there, which would fail the lookup over to the embedded cache and trip the cooldown."""
    key = f"{redis_target.namespace}:k"
    fallback = MemoryBackend(10, 1 << 20)
    backend = RedisBackend(redis_target.url, fallback, op_timeout_s=1.0, max_connections=2)
    try:
        await backend.set(key, b"answer", 60)
        replies = await asyncio.gather(
            *(backend.lookup(key, f"{key}:lease", f"t{i}", 5.0, together=False) for i in range(40))
        )
        pool: Any = backend.client.connection_pool
        opened = len(pool._available_connections) + len(pool._in_use_connections)
        assert (backend.failures, backend.slow, backend.healthy) == (0, 0, True)
    finally:
        await backend.aclose()

    assert replies == [(b"answer", False)] * 40  # each one answered by Redis ...
    assert len(fallback) == 0  # ... none by the embedded cache
    assert opened == 2


async def test_connections_that_failed_to_open_leave_the_pool_its_limit(private_redis: RedisProcess) -> None:
    """redis-py releases a connection it could not set up itself, and the pool freed that slot a second time: each
    refused or timed-out connect raised the limit by one, until more commands were in flight than connections
    allowed, redis-py raised "Too many connections", and a healthy Redis was left alone as if down (found by a
    review: 69 slots of 64 after two bursts)."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    key = "k"
    backend = RedisBackend(private_redis.url, MemoryBackend(10, 1 << 20), op_timeout_s=1.0, max_connections=2)
    pool: Any = backend.client.connection_pool
    try:
        private_redis.stop()
        for _ in range(5):  # straight to the pool: through the backend, the first failure starts a cooldown
            with pytest.raises(RedisConnectionError):
                await pool.get_connection()
        await asyncio.to_thread(private_redis.start)
        await backend.set(key, b"answer", 60)
        replies = await asyncio.gather(
            *(backend.lookup(key, f"{key}:lease", None, 5.0, together=False) for _ in range(16))
        )
        opened = len(pool._available_connections) + len(pool._in_use_connections)
        assert (backend.failures, backend.healthy) == (0, True)
    finally:
        await backend.aclose()

    assert replies == [(b"answer", False)] * 16
    assert opened <= 2


async def test_new_connections_read_no_package_metadata_on_the_loop(
    redis_target: RedisTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py names itself to Redis with its version, which it reads from the installed package's metadata (a scan
    of sys.path, ~0.5 ms, ~7 ms cold) for every connection it opens, unless it is given. The pool grows under a
    burst, and every new connection held the loop: the backend gives the version once."""
    asked: list[str] = []
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: asked.append(name) or real(name))
    key = f"{redis_target.namespace}:k"
    options: dict[str, Any] = {"near_prefix": f"{redis_target.namespace}:", "near_entries": 10, "near_bytes": 1 << 20}
    backend = RedisBackend(redis_target.url, MemoryBackend(10, 1 << 20), op_timeout_s=1.0, **options)
    try:
        await backend.set(key, b"answer", 60)
        replies = await asyncio.gather(
            *(backend.lookup(key, f"{key}:lease", None, 5.0, together=False) for _ in range(8))
        )
        assert backend.near is not None
        await backend.near.wait_live()  # the tracking connection is open too
        pool: Any = backend.client.connection_pool
        opened = len(pool._available_connections) + len(pool._in_use_connections)
        assert await backend._answers_again()  # the probe's own connection
    finally:
        await backend.aclose()

    assert replies == [(b"answer", False)] * 8
    assert opened > 1  # several connections were opened ...
    assert asked == []  # ... and not one read the metadata
