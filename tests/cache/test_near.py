"""The near cache in front of a real Redis: repeated hits stay in the process, and Redis's invalidation
messages (client-side caching, CLIENT TRACKING) keep them right.

Every wait here is on an event the code sets (tracking up or down) or on :meth:`NearCache.barrier`, a PING
on the tracking connection whose answer comes after every message Redis queued before it: never a sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import pytest
import redis
import redis.asyncio
import redis.exceptions

from ai_gateway.cache.key import error_key, lease_key
from ai_gateway.cache.memory import MemoryBackend
from ai_gateway.cache.near import NearCache
from ai_gateway.cache.redis_backend import RedisBackend
from tests.cache.conftest import OpenGateway
from tests.cache.support import MODEL, CacheFake, cancel_after_write
from tests.fake_provider import Scenario
from tests.redis_harness import RedisProcess, RedisProxy, RedisTarget

VENDOR = MODEL.partition("/")[2]
T = TypeVar("T")


async def soon(awaitable: Awaitable[T], timeout: float = 5.0) -> T:  # noqa: ASYNC109
    """A wait on an event, bounded so a broken implementation fails instead of hanging."""
    async with asyncio.timeout(timeout):
        return await awaitable


def make_backend(url: str, namespace: str, **kwargs: float) -> RedisBackend:
    options = {"op_timeout_s": 1.0, "cooldown_s": 0.05, **kwargs}
    return RedisBackend(
        url, MemoryBackend(10, 1 << 20), near_prefix=f"{namespace}:", near_entries=100, near_bytes=1 << 20, **options
    )


@pytest.fixture
async def backend(redis_target: RedisTarget) -> AsyncIterator[RedisBackend]:
    backend = make_backend(redis_target.url, redis_target.namespace)
    yield backend
    await backend.aclose()


@contextlib.asynccontextmanager
async def private_redis(why: str) -> AsyncIterator[tuple[RedisProcess, RedisBackend]]:
    """A redis-server of this test's own (for what would disturb others: flushes, stops, scripts, publishing)
    and a backend with a near cache on it; both gone afterwards."""
    server = RedisProcess(why=why).start()
    backend = make_backend(server.url, "ns")
    try:
        yield server, backend
    finally:
        await backend.aclose()
        server.stop()


async def live_near(backend: RedisBackend) -> NearCache:
    """The backend's near cache once tracking is up (it starts on the first lookup)."""
    assert backend.near is not None
    await backend.near.get("warm-up")
    await soon(backend.near.wait_live())
    return backend.near


async def claim(backend: RedisBackend, key: str) -> tuple[bytes | None, bool | None]:
    """A lookup as a ``use`` call makes it: the answer, or the lease (the script's path)."""
    return await backend.lookup(key, lease_key(key), "token", 5.0, together=False)


def answer_key(target: RedisTarget) -> str:
    return f"{target.namespace}:v1:a"


def put(target: RedisTarget, key: str | bytes, value: bytes) -> None:
    """Another process (a plain client) writes ``value`` under ``key``, with a TTL as the gateway's are."""
    with target.client() as r:
        r.set(key, value, px=60_000)


async def kept_after_write(backend: RedisBackend, near: NearCache, r: redis.Redis, key: str) -> None:
    """Another process (``r``) writes ``key``; once tracking has seen that, this process reads it and keeps it."""
    r.set(key, b"answer", px=60_000)
    await soon(near.barrier())  # a read that overlaps the message about this write would not be kept
    await claim(backend, key)
    assert near.entries.entry(key) is not None


async def settle(backend: RedisBackend, key: str, value: bytes) -> None:
    """This process stores ``value`` under ``key`` and releases its lease, as a ``use`` call does after answering."""
    await backend.settle(key, value, 60, lease_key(key), "token", error_key(key), None)


async def test_a_repeated_hit_is_answered_in_process_without_a_round_trip(
    backend: RedisBackend, redis_target: RedisTarget
) -> None:
    key = answer_key(redis_target)
    put(redis_target, key, b"answer")
    near = await live_near(backend)

    first = await claim(backend, key)
    trips = backend.round_trips
    again = [await claim(backend, key) for _ in range(5)]

    assert first == (b"answer", False)
    assert again == [(b"answer", False)] * 5
    assert backend.round_trips == trips  # none of the five went to Redis
    kept = near.entries.entry(key)
    assert kept is not None and kept[0] == b"answer"
    assert 50 < kept[1] <= 60  # no longer than Redis keeps it


async def test_a_key_outside_the_tracked_prefix_is_never_kept(backend: RedisBackend, redis_target: RedisTarget) -> None:
    """Redis sends messages only about keys under the namespace: anything else could go stale unseen."""
    key = f"elsewhere-{redis_target.namespace}:v1:a"
    put(redis_target, key, b"answer")
    try:
        near = await live_near(backend)
        answers = [await claim(backend, key) for _ in range(2)]
        assert answers == [(b"answer", False)] * 2
        assert near.entries.entry(key) is None
    finally:
        with redis_target.client() as r:
            r.delete(key)


async def test_a_change_by_another_process_is_seen_at_once(backend: RedisBackend, redis_target: RedisTarget) -> None:
    key = answer_key(redis_target)
    put(redis_target, key, b"old")
    near = await live_near(backend)
    assert await claim(backend, key) == (b"old", False)

    put(redis_target, key, b"new")  # another gateway refreshes the answer
    await soon(near.barrier())
    assert near.messages >= 1
    assert await claim(backend, key) == (b"new", False)

    with redis_target.client() as r:  # ... or it expires, or is deleted
        r.delete(key)
    await soon(near.barrier())
    assert (await claim(backend, key))[0] is None


async def test_a_key_that_is_not_utf8_under_the_prefix_does_not_stop_tracking(
    backend: RedisBackend, redis_target: RedisTarget
) -> None:
    key = answer_key(redis_target)
    odd = f"{redis_target.namespace}:v1:".encode() + b"\xff\xfe"
    put(redis_target, key, b"answer")
    near = await live_near(backend)
    await claim(backend, key)
    put(redis_target, odd, b"someone else's")
    put(redis_target, key, b"changed")
    await soon(near.barrier())

    assert near.live and near.messages >= 2
    assert await claim(backend, key) == (b"changed", False)


async def test_a_message_not_from_tracking_on_its_channel_empties_it_without_ending_tracking() -> None:
    """Anyone may PUBLISH to __redis__:invalidate; a payload of a shape tracking never sends means "unsure"."""
    async with private_redis("this test publishes on the channel every near cache hears") as (server, backend):
        near = await live_near(backend)
        with server.client() as other:
            await kept_after_write(backend, near, other, "ns:v1:a")
            other.publish("__redis__:invalidate", "not a list of keys")
        await soon(near.barrier())
        assert near.live and len(near.entries) == 0


async def test_this_process_storing_an_answer_drops_the_old_one_before_redis_says_so(
    backend: RedisBackend, redis_target: RedisTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = answer_key(redis_target)
    await backend.set(key, b"old", 60)
    near = await live_near(backend)
    assert await claim(backend, key) == (b"old", False)
    held_back: list[list[bytes] | None] = []

    async def late(keys: list[bytes] | None) -> None:  # Redis's message about our own write: not here yet
        held_back.append(keys)

    monkeypatch.setattr(near, "_invalidate", late)

    await backend.set(key, b"new", 60)  # a refresh in this process: no barrier, the entry must be gone already
    assert await claim(backend, key) == (b"new", False)

    _, taken = await claim(backend, f"{key}-other")
    await settle(backend, f"{key}-other", b"stored")
    await settle(backend, key, b"newer")
    assert taken is True
    assert await claim(backend, key) == (b"newer", False)
    await soon(near.barrier())
    assert key.encode() in {k for keys in held_back for k in keys or ()}  # the messages did come, later


async def test_a_read_overtaken_by_a_change_is_not_kept(backend: RedisBackend, redis_target: RedisTarget) -> None:
    """The reply to a read and the message about a change travel on different connections: a value read
    before a change but handed over after its message must not be kept, or it would be served stale."""
    key = answer_key(redis_target)
    near = await live_near(backend)
    read = near.begin_read(key)
    put(redis_target, key, b"changed")
    await soon(near.barrier())
    await near.end_read(read, b"read before the change", 60)

    assert near.entries.entry(key) is None
    assert await claim(backend, key) == (b"changed", False)
    assert near.entries.entry(key) is not None  # a read with no change meanwhile is kept


async def test_losing_the_tracking_connection_empties_it_until_tracking_is_back(
    backend: RedisBackend, redis_target: RedisTarget
) -> None:
    key = answer_key(redis_target)
    put(redis_target, key, b"answer")
    near = await live_near(backend)
    await claim(backend, key)
    assert near.entries.entry(key) is not None

    with redis_target.client() as r:
        r.client_kill_filter(_id=near.client_id)
    await soon(near.wait_live(False))
    assert len(near.entries) == 0
    trips = backend.round_trips
    assert await claim(backend, key) == (b"answer", False)  # from Redis, and not kept: nothing says it is current
    assert backend.round_trips == trips + 1
    assert near.entries.entry(key) is None

    await soon(near.wait_live())  # reconnected after its retry delay
    await claim(backend, key)
    assert near.entries.entry(key) is not None


async def test_a_tracking_connection_gone_silent_is_noticed_by_its_ping(redis_target: RedisTarget) -> None:
    """Redis (or the network) stops answering without closing anything: no message could arrive, so the near
    cache must stop answering once a PING on the quiet connection goes unanswered."""
    key = answer_key(redis_target)
    put(redis_target, key, b"answer")
    async with RedisProxy(redis_target.port) as proxy:
        backend = make_backend(proxy.url(redis_target.db), redis_target.namespace, cooldown_s=30)
        assert backend.near is not None
        backend.near.ping_every_s, backend.near.timeout_s = 0.05, 0.5  # quiet for 50 ms: PING; no answer: gone
        try:
            near = await live_near(backend)
            await claim(backend, key)
            assert near.entries.entry(key) is not None

            proxy.silent = True
            await soon(near.wait_live(False))
            assert len(near.entries) == 0
        finally:
            await backend.aclose()


async def test_shutdown_ends_tracking_even_when_a_cancellation_is_lost(redis_target: RedisTarget) -> None:
    """A cancellation that lands just as one of redis-py's reads times out can be swallowed: the tracking task
    then went on to its retry sleep and reconnected, and shutdown waited for it forever."""
    backend = make_backend(redis_target.url, redis_target.namespace)
    near = backend.near
    assert near is not None
    attempts, connecting = 0, asyncio.Event()

    async def connect_losing_a_cancellation() -> None:
        nonlocal attempts
        attempts += 1
        connecting.set()
        with contextlib.suppress(asyncio.CancelledError):  # lost, as inside redis-py
            await asyncio.Event().wait()
        raise OSError("connection reset")

    near._connect = connect_losing_a_cancellation  # type: ignore[method-assign]
    await near.get("warm-up")  # starts tracking
    await soon(connecting.wait())
    await soon(backend.aclose())
    assert attempts == 1  # and it did not connect again after shutdown began


async def test_a_cancellation_right_after_a_tracking_command_is_written_ends_tracking_at_once(
    redis_target: RedisTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a socket timeout, redis-py wrote each command under Python 3.11's asyncio.wait_for, which drops a
    cancellation that lands in the turn the write completes: the tracking task went on into its listening loop, and
    every short run (a 1-row replay) waited a whole second at shutdown for the second cancellation."""
    backend = make_backend(redis_target.url, redis_target.namespace)
    near = backend.near
    assert near is not None
    fired = cancel_after_write(monkeypatch, b"TRACKING", lambda: near._task)  # type: ignore[arg-type,return-value]
    try:
        await near.get("warm-up")  # starts tracking
        await soon(fired.wait())
        task = near._task
        assert task is not None
        done, _ = await asyncio.wait([task], timeout=5)
        assert task in done and task.cancelled()
    finally:
        await backend.aclose()


async def test_a_flush_empties_it_and_redis_stopping_too() -> None:
    async with private_redis("this test flushes and stops its Redis") as (server, backend):
        near = await live_near(backend)
        with server.client() as r:
            await kept_after_write(backend, near, r, "ns:v1:a")
            r.flushdb()
            await soon(near.barrier())
            assert len(near.entries) == 0

            await kept_after_write(backend, near, r, "ns:v1:a")
        server.stop()
        await soon(near.wait_live(False))
        assert len(near.entries) == 0


async def test_redis_busy_with_a_long_script_is_an_interruption_not_a_refusal() -> None:
    """While a script runs past busy-reply-threshold, Redis answers everyone else -BUSY: the PING on a live
    tracking connection, then CLIENT ID on each reconnection. Tracking must come back once the script ends."""
    async with (
        private_redis("this test blocks its Redis with a long script") as (server, backend),
        redis.asyncio.Redis(host="127.0.0.1", port=server.port, socket_timeout=10) as blocker,
    ):
        with server.client() as r:
            r.config_set("busy-reply-threshold", 10)  # ms; the backend reconnects every cooldown_s (50 ms)
        near = await live_near(backend)
        connect, attempts = near._connect, 0

        async def counted_connect() -> object:
            nonlocal attempts
            attempts += 1
            return await connect()

        near._connect = counted_connect  # type: ignore[method-assign]
        script = asyncio.create_task(blocker.eval(BUSY_FOR_MS, 0, 1000))
        await soon(redis_answers_busy(server.port))
        await soon(near.barrier())  # its PING is answered -BUSY
        await soon(near.wait_live(False))
        await soon(script)
        await soon(near.wait_live())
        assert not near.refused and attempts >= 2  # at least one reconnection met -BUSY and was retried


BUSY_FOR_MS = """
local t = redis.call('TIME')
local start = t[1] * 1000 + t[2] / 1000
repeat t = redis.call('TIME') until t[1] * 1000 + t[2] / 1000 - start > tonumber(ARGV[1])
return 1
"""


async def redis_answers_busy(port: int) -> None:
    """Return once the script holds Redis (bounded by the caller); a readiness poll on a new connection."""
    while True:
        probe = redis.asyncio.Redis(host="127.0.0.1", port=port, socket_timeout=5)
        try:
            await probe.ping()
        except redis.exceptions.ResponseError as exc:
            if str(exc).startswith("BUSY"):
                return
            raise
        finally:
            await probe.aclose()
        await asyncio.sleep(0.005)  # readiness poll interval


async def test_redis_refusing_tracking_turns_it_off_once_and_the_shared_cache_still_works(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = RedisProcess(why="this test sets an ACL on its Redis").start()
    with server.client() as r:
        r.execute_command("ACL", "SETUSER", "plain", "on", "nopass", "~*", "&*", "+@all", "-client|tracking")
        r.set("ns:v1:a", b"answer")
    backend = make_backend(f"redis://plain@127.0.0.1:{server.port}/0", "ns")
    try:
        assert backend.near is not None
        with caplog.at_level(logging.WARNING, logger="ai_gateway.cache.near"):
            await backend.near.get("warm-up")
            await soon(backend.near.wait_live())  # returns when refused: it gives up for good, not retrying
        answers = [await claim(backend, "ns:v1:a") for _ in range(3)]
        trips = backend.round_trips
    finally:
        await backend.aclose()
        server.stop()

    assert backend.near.refused and not backend.near.live
    assert answers == [(b"answer", False)] * 3
    assert trips == 3  # each from Redis
    refusals = [rec for rec in caplog.records if "refused client-side tracking" in rec.getMessage()]
    assert len(refusals) == 1


async def test_a_refresh_by_one_gateway_reaches_the_other_gateways_near_cache(
    open_gateway: OpenGateway, fake: CacheFake, redis_target: RedisTarget
) -> None:
    fake.set(VENDOR, Scenario(text="Paris"))
    async with open_gateway(**redis_target.settings()) as one, open_gateway(**redis_target.settings()) as two:
        await one.ask()
        backend = two.gateway.cache.backend
        assert isinstance(backend, RedisBackend)
        near = await live_near(backend)
        first, again = await two.ask(), await two.ask()
        trips = backend.round_trips

        fake.set(VENDOR, Scenario(text="Lyon"))
        refreshed = await one.ask(cache="refresh")
        await soon(near.barrier())
        after = await two.ask()

    assert [first.answer, again.answer, refreshed.answer, after.answer] == ["Paris", "Paris", "Lyon", "Lyon"]
    assert (first.only["cached"], again.only["cached"], after.only["cached"]) == (True, True, True)
    assert trips == backend.round_trips - 1  # the second ask stayed in the process; the one after the refresh did not
    assert fake.count(VENDOR) == 2


async def test_it_can_be_turned_off(open_gateway: OpenGateway, redis_target: RedisTarget) -> None:
    async with open_gateway(**redis_target.settings(), cache_near_entries=0) as gw:
        backend = gw.gateway.cache.backend
        await gw.ask()
        await gw.ask()
    assert isinstance(backend, RedisBackend) and backend.near is None
