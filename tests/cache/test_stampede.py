"""Single-flight: identical concurrent calls make one provider call, in one process and across processes.

Requests are held at the fake (``fake.hold``) until the test has seen every caller where it must be, so
nothing here depends on timing; "across processes" is two gateway servers sharing one Redis.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, replace
from typing import Any

import pytest

from ai_gateway import dispatch as dispatch_module
from ai_gateway.cache import store as store_module
from ai_gateway.cache.key import answer_prefix, error_key
from ai_gateway.cache.memory import MemoryBackend
from ai_gateway.cache.redis_backend import RedisBackend
from ai_gateway.cache.store import LEASE_TTL_S, PeerFailure, ResponseCache
from ai_gateway.schemas import QueryResult
from tests.cache.conftest import OpenGateway
from tests.cache.support import MODEL, PROMPT, CacheFake, Running, cancel_after_write, until
from tests.fake_provider import Scenario
from tests.redis_harness import RedisTarget

VENDOR = MODEL.partition("/")[2]
BACKUP = "openai/backup-model"  # answered by the fake's echo


def direct(gw: Running, **arguments: Any) -> asyncio.Task[QueryResult]:
    """A query on the gateway itself, as a task the test may cancel."""
    arguments.setdefault("prompt", PROMPT)
    arguments.setdefault("models", [MODEL])
    return asyncio.create_task(gw.gateway.query(**arguments))


def statuses(results: list[QueryResult]) -> list[str]:
    return [r.results[0].status for r in results]


# ---------------------------------------------------------------------------- one process
async def test_twenty_identical_concurrent_calls_make_one_provider_call(
    open_gateway: OpenGateway, fake: CacheFake
) -> None:
    fake.set(VENDOR, Scenario(text="Paris", delay_ms=200))
    async with open_gateway() as gw:
        replies = await asyncio.gather(*(gw.query() for _ in range(20)))
        stats = gw.gateway.cache.stats

    assert all(not r.is_error and r.only["status"] == "ok" for r in replies)
    assert {r.answer for r in replies} == {"Paris"}
    assert fake.count(VENDOR) == 1
    assert stats.coalesced + stats.hits == 19  # each waited on the first call (or, arriving late, hit its answer)


async def test_followers_do_not_report_the_leaders_attempts_and_usage_as_their_own(
    open_gateway: OpenGateway, fake: CacheFake
) -> None:
    fake.set(VENDOR, Scenario(text="Paris", delay_ms=200))
    async with open_gateway() as gw:
        replies = await asyncio.gather(*(gw.query() for _ in range(20)))

    assert fake.count(VENDOR) == 1
    assert sum(r.only["attempts"] for r in replies) == 1
    assert sum((r.data.get("usage") or {}).get("output_tokens", 0) for r in replies) == 1


async def test_callers_sharing_a_billed_empty_answer_report_its_tokens_and_cost_once(
    open_gateway: OpenGateway, fake: CacheFake
) -> None:
    """An empty answer is an error, but billed (a reasoning model that spent the limit thinking): reported on each
    caller that waited for it, its cost was counted ten times for one call."""
    fake.set(VENDOR, Scenario(text="Paris", thinking=50, delay_ms=200))
    async with open_gateway() as gw:
        replies = await asyncio.gather(*(gw.query(max_tokens=20) for _ in range(10)))

    assert fake.count(VENDOR) == 1
    assert [r.only["error"]["code"] for r in replies] == ["empty_response"] * 10
    assert [r.only["finish_reason"] for r in replies] == ["length"] * 10  # each caller still learns why
    [billed] = [r for r in replies if r.only["usage"] is not None]
    assert billed.only["usage"]["output_tokens"] == 20 and billed.only["cost_usd"] > 0
    assert sum(r.only["cost_usd"] or 0 for r in replies) == billed.only["cost_usd"]
    assert sum(r.data["cost_usd"] or 0 for r in replies) == billed.data["cost_usd"]


async def test_if_the_first_caller_is_cancelled_the_others_still_get_the_answer(
    open_gateway: OpenGateway, fake: CacheFake
) -> None:
    fake.set(VENDOR, Scenario(text="Paris"))
    release = fake.hold(VENDOR)
    async with open_gateway() as gw:
        cache = gw.gateway.cache
        leader = direct(gw)
        await fake.wait_for_calls(1, VENDOR)
        followers = [direct(gw) for _ in range(5)]
        await until(lambda: cache.stats.coalesced >= 5, "the followers to wait on the leader's call")
        leader.cancel()
        await fake.wait_for_calls(2, VENDOR)  # one follower took over
        release.set()
        results = await asyncio.gather(*followers)
        await asyncio.wait([leader])

    assert leader.cancelled()
    assert statuses(results) == ["ok"] * 5
    assert {r.answer for r in results} == {"Paris"}
    assert fake.count(VENDOR) == 2
    await fake.wait_for_disconnects(1)
    assert len(fake.disconnects) == 1  # the cancelled leader's request, and only it


async def test_callers_sharing_a_failed_call_report_none_of_its_attempts_as_their_own(
    open_gateway: OpenGateway, fake: CacheFake
) -> None:
    """They sent nothing: the attempts summed over every result are the requests the provider received."""
    fake.set(VENDOR, Scenario.error("server_error"))
    release = fake.hold(VENDOR)
    async with open_gateway(max_attempts=2, backoff_base_s=0.001) as gw:
        cache = gw.gateway.cache
        leader = direct(gw)
        await fake.wait_for_calls(1, VENDOR)
        followers = [direct(gw) for _ in range(3)]
        await until(lambda: cache.stats.coalesced >= 3, "the followers to wait on the leader's call")
        release.set()
        results = [await leader, *[await f for f in followers]]

    assert {r.results[0].error.code for r in results if r.results[0].error} == {"upstream_error"}
    assert [r.results[0].attempts for r in results] == [2, 0, 0, 0]
    assert fake.count(VENDOR) == 2


async def test_a_leader_with_a_short_deadline_does_not_fail_followers_with_time_left(
    open_gateway: OpenGateway, fake: CacheFake
) -> None:
    release = fake.hold(VENDOR)
    async with open_gateway() as gw:
        cache = gw.gateway.cache
        leader = direct(gw, timeout_s=0.3)
        await fake.wait_for_calls(1, VENDOR)
        follower = direct(gw, timeout_s=10)
        await until(lambda: cache.stats.coalesced >= 1, "the follower to wait on the leader's call")
        leader_result = await leader
        release.set()
        follower_result = await follower

    assert leader_result.results[0].error is not None and leader_result.results[0].error.code == "deadline"
    assert follower_result.results[0].status == "ok", follower_result.results[0].error


async def test_a_follower_with_nowhere_to_fail_over_is_not_handed_the_leaders_unretried_error(
    open_gateway: OpenGateway, fake: CacheFake
) -> None:
    """The leader (first_available, a backup after it) did not retry a 503, to fail over at once: its strategy's
    choice. The follower asked that model alone and would have retried; it was handed the 503, attempts 0."""
    fake.set(VENDOR, Scenario.error("overloaded", times=1))  # the next call is answered
    release = fake.hold(VENDOR)
    async with open_gateway() as gw:
        cache = gw.gateway.cache
        leader = direct(gw, models=[MODEL, BACKUP])
        await fake.wait_for_calls(1, VENDOR)
        follower = direct(gw)
        await until(lambda: cache.stats.coalesced >= 1, "the follower to wait on the leader's call")
        release.set()
        leader_result, follower_result = await leader, await follower

    assert [r.status for r in leader_result.results] == ["error", "ok"]
    assert leader_result.results[0].error is not None
    assert leader_result.results[0].error.not_retried == "failed over to another model instead of retrying"
    assert (follower_result.results[0].status, follower_result.answer) == ("ok", PROMPT)
    assert fake.count(VENDOR) == 2


@pytest.mark.parametrize("backend", ["embedded", "redis"])
async def test_the_same_question_asked_again_at_once_is_served_the_answer_being_stored(
    open_gateway: OpenGateway, fake: CacheFake, backend: str, request: pytest.FixtureRequest
) -> None:
    # The write runs as a task only once the loop turns; a second query made straight after the first
    # one answered, suspending nowhere before its lookup, came before it: a miss and a second provider
    # call with the embedded cache, a wait on our own lease (polled) with Redis.
    fake.set(VENDOR, Scenario(text="Paris"))
    settings = request.getfixturevalue("redis_target").settings() if backend == "redis" else {}
    async with open_gateway(**settings) as gw:
        first = await gw.gateway.query(prompt=PROMPT, models=[MODEL])
        second = await gw.gateway.query(prompt=PROMPT, models=[MODEL])
        stats = gw.gateway.cache.stats
        await gw.settle()

    assert (first.answer, second.answer) == ("Paris", "Paris")
    assert (first.results[0].cached, second.results[0].cached) == (False, True)
    assert fake.count(VENDOR) == 1
    assert stats.peer_waits == 0


async def test_calls_with_other_cache_modes_never_share_a_call(
    open_gateway: OpenGateway, fake: CacheFake, redis_target: RedisTarget
) -> None:
    # Redis, so that a lookup suspends and the second caller arrives while the first one is still in flight.
    fake.set(VENDOR, Scenario(text="old answer"))
    async with open_gateway(**redis_target.settings()) as gw:
        # An "only" call's cache miss is no answer for a "use" call, which may ask the provider.
        only, use = await asyncio.gather(direct(gw, cache="only"), direct(gw, cache="use"))
        assert (only.results[0].status, only.results[0].error and only.results[0].error.code) == ("error", "cache_miss")
        assert (use.results[0].status, use.answer, use.results[0].cached) == ("ok", "old answer", False)
        assert fake.count(VENDOR) == 1
        await gw.settle()

        # A "refresh" must not be handed the entry it is there to replace by a "use" call reading it.
        fake.set(VENDOR, Scenario(text="new answer"))
        use, refresh = await asyncio.gather(direct(gw, cache="use"), direct(gw, cache="refresh"))
        await gw.settle()
        after = await gw.gateway.query(prompt=PROMPT, models=[MODEL])

    assert (use.answer, use.results[0].cached) == ("old answer", True)
    assert (refresh.answer, refresh.results[0].cached, refresh.results[0].attempts) == ("new answer", False, 1)
    assert (after.answer, after.results[0].cached) == ("new answer", True)
    assert fake.count(VENDOR) == 2


# ---------------------------------------------------------------------------- across processes (shared Redis)
def watch_waits(gw: Running, monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Set once this gateway starts waiting for another process's call (``ResponseCache.await_peer``)."""
    cache, waiting = gw.gateway.cache, asyncio.Event()
    real_await_peer = cache.await_peer

    async def await_peer(key: str, give_up_s: float, *, replacing: bool = False) -> Any:
        waiting.set()
        return await real_await_peer(key, give_up_s, replacing=replacing)

    monkeypatch.setattr(cache, "await_peer", await_peer)
    return waiting


async def holder_and_peer(
    one: Running,
    two: Running,
    fake: CacheFake,
    release: asyncio.Event,
    monkeypatch: pytest.MonkeyPatch,
    holding: dict[str, Any] | None = None,
    **peer: Any,
) -> tuple[QueryResult, QueryResult]:
    """Gateway one's call (with the arguments ``holding``) held at the fake with the lease taken, gateway two
    waiting on that lease; then the fake answers. Their results, holder's first."""
    waiting = watch_waits(two, monkeypatch)
    holder = direct(one, **(holding or {}))
    await fake.wait_for_calls(1, VENDOR)
    waiter = direct(two, **peer)
    await asyncio.wait_for(waiting.wait(), 5)  # the second gateway found the lease taken
    release.set()
    return await holder, await waiter


async def test_identical_calls_in_two_gateways_sharing_redis_make_one_provider_call(
    open_gateway: OpenGateway, fake: CacheFake, redis_target: RedisTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.set(VENDOR, Scenario(text="Paris"))
    release = fake.hold(VENDOR)
    async with open_gateway(**redis_target.settings()) as one, open_gateway(**redis_target.settings()) as two:
        waiting = watch_waits(two, monkeypatch)
        first = [direct(one)]  # one caller: several in a Redis-backed gateway can deadlock (see below)
        await fake.wait_for_calls(1, VENDOR)
        second = [direct(two) for _ in range(10)]
        await asyncio.wait_for(waiting.wait(), 5)  # the second gateway found the lease taken
        release.set()
        results = await asyncio.gather(*first, *second)

    assert statuses(results) == ["ok"] * 11
    assert {r.answer for r in results} == {"Paris"}
    assert fake.count(VENDOR) == 1
    assert {r.results[0].cached for r in results[1:]} == {True}  # the other process's answer
    assert [k for k in redis_target.stored_keys() if b":lease:" in k] == []


async def test_when_the_lease_holder_fails_its_peers_fail_alike_and_nothing_is_stored(
    open_gateway: OpenGateway, fake: CacheFake, redis_target: RedisTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.set(VENDOR, Scenario.error("bad_request"))
    release = fake.hold(VENDOR)
    async with open_gateway(**redis_target.settings()) as one, open_gateway(**redis_target.settings()) as two:
        holder_result, peer_result = await holder_and_peer(one, two, fake, release, monkeypatch)

    assert holder_result.results[0].error is not None and holder_result.results[0].error.code == "bad_request"
    assert peer_result.results[0].error is not None and peer_result.results[0].error.code == "bad_request"
    assert fake.count(VENDOR) == 1
    assert [k for k in redis_target.stored_keys() if not (b":lease:" in k or b":error:" in k)] == []


@pytest.mark.parametrize("kind", ["auth", "quota_exhausted", "not_found"])
async def test_errors_of_the_holder_s_key_are_not_shared_with_other_gateway_processes(
    open_gateway: OpenGateway, fake: CacheFake, redis_target: RedisTarget, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """A wrong key, an exhausted quota or a model the key may not use is the holder's: another process may hold
    another key. It used to be handed the holder's error "(from another gateway process)" and never asked."""
    fake.set(VENDOR, Scenario.error(kind, times=1))  # the holder's call fails; the peer's own call is echoed
    release = fake.hold(VENDOR)
    async with open_gateway(**redis_target.settings()) as one, open_gateway(**redis_target.settings()) as two:
        holder_result, peer_result = await holder_and_peer(one, two, fake, release, monkeypatch, timeout_s=30)

    assert holder_result.results[0].error is not None and holder_result.results[0].error.code == kind
    assert (peer_result.results[0].status, peer_result.answer) == ("ok", PROMPT), peer_result.results[0].error
    assert fake.count(VENDOR) == 2


async def test_an_error_the_holder_did_not_retry_for_its_own_reasons_is_not_told_to_other_processes(
    open_gateway: OpenGateway, fake: CacheFake, redis_target: RedisTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The holder failed over instead of retrying a 503; the other process, asking that model alone, was told
    the 503 "(from another gateway process)" and never asked."""
    fake.set(VENDOR, Scenario.error("overloaded", times=1))
    release = fake.hold(VENDOR)
    async with open_gateway(**redis_target.settings()) as one, open_gateway(**redis_target.settings()) as two:
        holding = {"models": [MODEL, BACKUP]}
        holder_result, peer_result = await holder_and_peer(one, two, fake, release, monkeypatch, holding, timeout_s=30)

    assert [r.status for r in holder_result.results] == ["error", "ok"]
    assert (peer_result.results[0].status, peer_result.answer) == ("ok", PROMPT), peer_result.results[0].error
    assert fake.count(VENDOR) == 2


async def test_a_gateway_with_an_open_circuit_neither_claims_the_call_nor_tells_others_its_refusal(
    open_gateway: OpenGateway, fake: CacheFake, redis_target: RedisTarget
) -> None:
    """A circuit is one process's judgement. The refusal used to be published as the call's error, and the other
    gateways waiting on the same question (114 of 200 calls in a review) failed with it, never calling."""
    fake.set(VENDOR, Scenario.error("server_error", times=1))
    settings = redis_target.settings()
    async with open_gateway(**settings, breaker_fail_max=1, max_attempts=1) as one, open_gateway(**settings) as two:
        opened = await one.ask(prompt="another question")  # its failure opens the circuit of gateway one
        assert opened.only["error"]["code"] == "upstream_error"
        before = redis_target.stored_keys()  # that failure's error marker (about the provider: shared)
        refused = await one.ask()
        assert refused.only["error"]["code"] == "circuit_open"
        assert redis_target.stored_keys() == before  # no lease taken, no error marker for others
        answered = await two.ask()

    assert (answered.only["status"], answered.answer) == ("ok", PROMPT)  # the fake echoes once it stops failing
    assert fake.count(VENDOR) == 2  # the failure, and gateway two's own call


async def test_an_error_shared_by_another_process_keeps_its_status_and_retry_after(
    open_gateway: OpenGateway, fake: CacheFake, redis_target: RedisTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A waiter's clients read retry_after_s to back off, as the holder's do (docs/strategies.md)."""
    fake.set(VENDOR, Scenario.error("overloaded", retry_after="30"))
    release = fake.hold(VENDOR)
    settings = {**redis_target.settings(), "max_attempts": 1}
    async with open_gateway(**settings) as one, open_gateway(**settings) as two:
        holder_result, peer_result = await holder_and_peer(one, two, fake, release, monkeypatch, timeout_s=30)

    mine, theirs = holder_result.results[0].error, peer_result.results[0].error
    assert mine is not None and theirs is not None
    assert (theirs.code, theirs.status, theirs.retry_after_s) == (mine.code, mine.status, mine.retry_after_s)
    assert (mine.code, mine.status, mine.retry_after_s) == ("overloaded", 503, 30.0)
    assert theirs.message.endswith("(from another gateway process)")
    assert fake.count(VENDOR) == 1


async def test_an_empty_answer_s_finish_reason_is_published_with_its_error(redis_target: RedisTarget) -> None:
    """The marker carried code, message, status and retry_after only: a waiter could not say why the answer was
    empty (a reasoning model that spent max_tokens thinking finishes with "length")."""
    cache = ResponseCache(RedisBackend(redis_target.url, MemoryBackend(10, 1 << 20)), redis_target.namespace)
    try:
        key = f"{answer_prefix(redis_target.namespace)}{'e' * 64}"
        _, lease = await cache.lookup(key, read=True, claim=True, lease_ttl_s=5)
        assert lease is not None
        empty = PeerFailure(
            "empty_response", "the model returned no text (finish reason: length)", None, None, "length"
        )
        cache.store_later(key, None, lease, empty)
        await cache.flush()
        assert await cache.await_peer(key, 5) == empty

        with redis_target.client() as r:  # one this gateway does not know: the error still holds
            r.set(error_key(key), json.dumps({**asdict(empty), "finish_reason": "sleepy"}), px=5000)
        assert await cache.await_peer(key, 5) == replace(empty, finish_reason=None)
    finally:
        await cache.aclose()


async def test_an_empty_answer_waited_for_in_another_process_is_reported_with_its_finish_reason(
    open_gateway: OpenGateway, fake: CacheFake, redis_target: RedisTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.set(VENDOR, Scenario(text="Paris", thinking=50))
    release = fake.hold(VENDOR)
    async with open_gateway(**redis_target.settings()) as one, open_gateway(**redis_target.settings()) as two:
        holder, peer = await holder_and_peer(
            one, two, fake, release, monkeypatch, holding={"max_tokens": 20}, max_tokens=20
        )

    assert [r.results[0].error.code for r in (holder, peer) if r.results[0].error] == ["empty_response"] * 2
    assert [r.results[0].finish_reason for r in (holder, peer)] == ["length", "length"]
    assert peer.results[0].usage is None and holder.results[0].usage is not None  # billed once, to the holder
    assert fake.count(VENDOR) == 1


UNSTORABLE = {
    "too large to store": (("Paris, " * 60, "stop"), {"cache_max_entry_bytes": 200}),
    "a content filter's text": (("I can only say part", "content_filter"), {}),
    "an unknown finish": (("Paris", "sleepy"), {}),
}


def answers_stored(redis_target: RedisTarget) -> list[bytes]:
    return [k for k in redis_target.stored_keys() if not (b":lease:" in k or b":error:" in k)]


@pytest.mark.parametrize(("answer", "settings"), UNSTORABLE.values(), ids=UNSTORABLE.keys())
async def test_an_answer_that_may_not_be_stored_is_handed_to_the_process_waiting_on_it(
    open_gateway: OpenGateway,
    fake: CacheFake,
    redis_target: RedisTarget,
    monkeypatch: pytest.MonkeyPatch,
    answer: tuple[str, str],
    settings: dict[str, Any],
) -> None:
    """Neither stored nor published, it left each waiting process to find the lease gone and take it in turn:
    four processes asking at once made four provider calls, one after another. In one process the waiting
    callers already shared the first one's answer, stored or not."""
    fake.finish_with(VENDOR, *answer)
    release = fake.hold(VENDOR)
    settings = {**redis_target.settings(), **settings}
    async with open_gateway(**settings) as one, open_gateway(**settings) as two:
        holder, peer = await holder_and_peer(one, two, fake, release, monkeypatch)

    assert [r.results[0].status for r in (holder, peer)] == ["ok", "ok"]
    assert peer.answer == holder.answer == answer[0]
    assert peer.results[0].finish_reason == holder.results[0].finish_reason
    assert (peer.results[0].cached, peer.results[0].attempts, holder.results[0].cached) == (True, 0, False)
    assert fake.count(VENDOR) == 1
    assert answers_stored(redis_target) == []


async def test_an_unstored_answer_too_large_to_hand_over_lets_every_waiting_process_call_at_once(
    open_gateway: OpenGateway, fake: CacheFake, redis_target: RedisTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Told nothing, a waiting process that looked after another had taken the lease waited on that one's call
    too, so the processes called one after another. Here gateway three looks only once two is calling."""
    monkeypatch.setattr(store_module, "HANDOFF_MAX_BYTES", 100)
    fake.finish_with(VENDOR, "Paris, " * 60, "stop")
    first = fake.hold(VENDOR)
    settings = {**redis_target.settings(), "cache_max_entry_bytes": 50}
    async with (
        open_gateway(**settings) as one,
        open_gateway(**settings) as two,
        open_gateway(**settings) as three,
    ):
        waits = [watch_waits(two, monkeypatch), watch_waits(three, monkeypatch)]
        backend: Any = three.gateway.cache.backend
        real_peer_state, holder_done, three_may_look = backend.peer_state, asyncio.Event(), asyncio.Event()

        async def peer_state(key: str) -> tuple[bytes | None, bytes | None, bool]:
            if holder_done.is_set():
                await three_may_look.wait()
            return await real_peer_state(key)

        monkeypatch.setattr(backend, "peer_state", peer_state)
        holder = direct(one)
        await fake.wait_for_calls(1, VENDOR)
        peers = [direct(two), direct(three)]
        await asyncio.wait_for(asyncio.gather(*(w.wait() for w in waits)), 5)  # both found the lease taken
        second = fake.hold(VENDOR)  # the calls after the holder's are held here
        holder_done.set()
        first.set()
        await fake.wait_for_calls(2, VENDOR)  # gateway two asks the provider
        three_may_look.set()
        await fake.wait_for_calls(3, VENDOR)  # and three too, while two's call runs: nobody waits on a lease
        second.set()
        results = [await holder, *[await peer for peer in peers]]

    assert [(r.results[0].status, r.results[0].cached) for r in results] == [("ok", False)] * 3
    assert {r.answer for r in results} == {"Paris, " * 60}
    assert answers_stored(redis_target) == []
    assert [k for k in redis_target.stored_keys() if b":lease:" in k] == []


async def test_a_lease_lives_a_few_seconds_whatever_the_call_s_deadline(
    open_gateway: OpenGateway, fake: CacheFake, redis_target: RedisTarget
) -> None:
    """A holder that dies (killed, out of memory) or freezes cannot settle: its lease then held every other gateway
    asking the same question until it expired, and it lived as long as the holder's deadline (up to 300 s)."""
    release = fake.hold(VENDOR)
    raw = redis_target.client()
    try:
        async with open_gateway(**redis_target.settings()) as one:
            holder = direct(one, timeout_s=120)
            await fake.wait_for_calls(1, VENDOR)
            [lease] = [k for k in redis_target.stored_keys() if b":lease:" in k]
            left_ms = raw.pttl(lease)
            release.set()
            await holder
    finally:
        raw.close()
    assert 0 < left_ms <= LEASE_TTL_S * 1000


async def test_a_live_holder_renews_its_lease_so_its_peers_keep_waiting_for_its_answer(
    open_gateway: OpenGateway, fake: CacheFake, redis_target: RedisTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call longer than the lease: renewed while it runs, the lease never lapses, and the peer gets the holder's
    answer instead of making the same call. Renewals are counted, not timed: twelve, a third of the lease apart,
    span four lease lifetimes (call_later never fires early)."""
    monkeypatch.setattr(store_module, "LEASE_TTL_S", 0.3)
    monkeypatch.setattr(store_module, "LEASE_RENEW_S", 0.1)
    monkeypatch.setattr(dispatch_module, "LEASE_TTL_S", 0.3)
    fake.set(VENDOR, Scenario(text="Paris"))
    release = fake.hold(VENDOR)
    async with open_gateway(**redis_target.settings()) as one, open_gateway(**redis_target.settings()) as two:
        backend: Any = one.gateway.cache.backend
        renewals, renewed, real_renew = 0, asyncio.Event(), backend.renew
        extended: list[tuple[int, int]] = []
        raw = redis_target.client()

        async def renew(lease_key: str, token: str, ttl_s: float) -> None:
            nonlocal renewals
            before = raw.pttl(lease_key)
            await real_renew(lease_key, token, ttl_s)
            extended.append((before, raw.pttl(lease_key)))
            renewals += 1
            if renewals == 12:
                renewed.set()

        monkeypatch.setattr(backend, "renew", renew)
        waiting = watch_waits(two, monkeypatch)
        holder = direct(one, timeout_s=60)
        await fake.wait_for_calls(1, VENDOR)
        peer = direct(two, timeout_s=60)
        await asyncio.wait_for(waiting.wait(), 5)
        await asyncio.wait_for(renewed.wait(), 30)
        release.set()
        holder_result, peer_result = await holder, await peer
        raw.close()

    assert all(0 < before < after for before, after in extended), extended
    assert (holder_result.answer, peer_result.answer) == ("Paris", "Paris")
    assert peer_result.results[0].cached is True  # the holder's answer
    assert fake.count(VENDOR) == 1


async def test_bytes_that_are_no_answer_under_a_key_are_a_miss_that_claims_the_call(
    open_gateway: OpenGateway, fake: CacheFake, redis_target: RedisTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis returns whatever is stored, and its lookup took no lease: the gateway used to read that as another
    process making the call, and waited for one that did not exist before making it."""
    fake.set(VENDOR, Scenario(text="Paris"))
    async with open_gateway(**redis_target.settings()) as seed:
        await seed.ask()
    [key] = [k for k in redis_target.stored_keys() if b":lease:" not in k and b":error:" not in k]
    raw = redis_target.client()
    raw.set(key, b"\x00garbage, not an envelope")
    try:
        async with open_gateway(**redis_target.settings()) as gw:
            waiting = watch_waits(gw, monkeypatch)
            reply = await gw.ask()
        stored = raw.get(key)
    finally:
        raw.close()

    assert (reply.only["status"], reply.answer, reply.only["cached"]) == ("ok", "Paris", False)
    assert not waiting.is_set()
    assert fake.count(VENDOR) == 2
    assert stored is not None and b"Paris" in stored  # replaced


async def test_when_the_lease_holder_is_cancelled_a_peer_calls_the_provider_itself(
    open_gateway: OpenGateway, fake: CacheFake, redis_target: RedisTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.set(VENDOR, Scenario(text="Paris"))
    release = fake.hold(VENDOR)
    async with open_gateway(**redis_target.settings()) as one, open_gateway(**redis_target.settings()) as two:
        waiting = watch_waits(two, monkeypatch)
        holder = direct(one)
        await fake.wait_for_calls(1, VENDOR)
        peer = direct(two, timeout_s=10)
        await asyncio.wait_for(waiting.wait(), 5)  # the second gateway found the lease taken
        holder.cancel()
        await fake.wait_for_calls(2, VENDOR)  # the lease was released: the peer made the call itself
        release.set()
        peer_result = await peer
        await asyncio.wait([holder])

    assert holder.cancelled()
    assert (peer_result.results[0].status, peer_result.answer) == ("ok", "Paris")


async def test_when_the_lease_holder_is_cancelled_one_waiting_process_calls_and_the_others_wait_for_it(
    open_gateway: OpenGateway, fake: CacheFake, redis_target: RedisTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Waiters poll in step, so several find the lease gone at once. Only one can claim it; the others called the
    provider anyway, unleased (3 calls of 20 runs in 6, found by a review), where they should wait for the new
    holder. Here both waiters see the lease gone before either claims it."""
    fake.set(VENDOR, Scenario(text="Paris"))
    release = fake.hold(VENDOR)
    settings = redis_target.settings()
    async with open_gateway(**settings) as one, open_gateway(**settings) as two, open_gateway(**settings) as three:
        gave_up: list[str] = []
        both_gave_up = asyncio.Event()

        def wait_for_each_other(gw: Running) -> None:
            cache = gw.gateway.cache
            real_await_peer = cache.await_peer

            async def await_peer(key: str, give_up_s: float, *, replacing: bool = False) -> Any:
                peer = await real_await_peer(key, give_up_s, replacing=replacing)
                if peer is None and not both_gave_up.is_set():
                    gave_up.append(key)
                    if len(gave_up) == 2:
                        both_gave_up.set()
                    await both_gave_up.wait()
                return peer

            monkeypatch.setattr(cache, "await_peer", await_peer)

        waiting = [watch_waits(two, monkeypatch), watch_waits(three, monkeypatch)]
        wait_for_each_other(two)
        wait_for_each_other(three)
        holder = direct(one)
        await fake.wait_for_calls(1, VENDOR)
        peers = [direct(two, timeout_s=10), direct(three, timeout_s=10)]
        await asyncio.wait_for(asyncio.gather(*(w.wait() for w in waiting)), 5)  # both found the lease taken
        holder.cancel()
        await asyncio.wait_for(both_gave_up.wait(), 5)
        await fake.wait_for_calls(2, VENDOR)  # the one that claimed the call made it
        release.set()
        results = await asyncio.gather(*peers)
        await asyncio.wait([holder])

    assert holder.cancelled()
    assert [(r.results[0].status, r.answer) for r in results] == [("ok", "Paris")] * 2
    assert sorted(r.results[0].cached for r in results) == [False, True]  # one called; the other had its answer
    assert fake.count(VENDOR) == 2


@pytest.mark.parametrize("holder_cache", ["use", "refresh"])
async def test_an_earlier_failure_is_not_reported_to_waiters_of_a_later_successful_call(
    open_gateway: OpenGateway,
    fake: CacheFake,
    redis_target: RedisTarget,
    monkeypatch: pytest.MonkeyPatch,
    holder_cache: str,
) -> None:
    """However the holder claimed the call, its waiters are not told the failure of the call before. A refresh
    claims without reading, and that claim left the old error marker: a use call waiting on the refresh took the old
    failure for its outcome at its first poll, while the refresh was succeeding (an eval --retry-failed run's
    pattern; found by a review). Claiming clears it, as a lookup's does."""
    fake.set(VENDOR, Scenario.error("bad_request", times=1))  # fails once, then answers
    async with open_gateway(**redis_target.settings()) as one, open_gateway(**redis_target.settings()) as two:
        earlier = await one.ask()
        assert earlier.only["error"]["code"] == "bad_request"

        release = fake.hold(VENDOR)
        holder = direct(two, cache=holder_cache)
        await fake.wait_for_calls(2, VENDOR)  # gateway two holds the lease; its call is in flight
        polled = asyncio.Event()
        backend: Any = one.gateway.cache.backend
        real_peer_state = backend.peer_state

        async def peer_state(key: str) -> tuple[bytes | None, bytes | None, bool]:
            state = await real_peer_state(key)
            polled.set()
            return state

        monkeypatch.setattr(backend, "peer_state", peer_state)
        waiter = direct(one)
        await asyncio.wait_for(polled.wait(), 5)  # gateway one is waiting on two's lease and has looked for errors
        release.set()
        holder_result, waiter_result = await holder, await waiter

    assert holder_result.results[0].status == "ok"
    assert waiter_result.results[0].status == "ok", waiter_result.results[0].error
    assert waiter_result.results[0].cached is True  # the holder's answer, not a call of its own
    assert fake.count(VENDOR) == 2


async def test_a_holder_with_a_short_deadline_does_not_fail_peers_with_time_left(
    open_gateway: OpenGateway, fake: CacheFake, redis_target: RedisTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = fake.hold(VENDOR)
    async with open_gateway(**redis_target.settings()) as one, open_gateway(**redis_target.settings()) as two:
        for gw in (one, two):  # start-up work done first: the holder's 0.3 s is for its call, and the peer must
            assert gw.gateway.warm is not None  # find the lease while the holder still has some of it left
            await gw.gateway.warm.wait()
        waiting = watch_waits(two, monkeypatch)
        holder = direct(one, timeout_s=0.3)
        await fake.wait_for_calls(1, VENDOR)
        peer = direct(two, timeout_s=10)
        await asyncio.wait_for(waiting.wait(), 5)  # the second gateway found the lease taken
        holder_result = await holder
        release.set()
        peer_result = await peer

    assert holder_result.results[0].error is not None and holder_result.results[0].error.code == "deadline"
    assert peer_result.results[0].status == "ok", peer_result.results[0].error


async def test_concurrent_calls_in_one_redis_backed_gateway_do_not_deadlock(
    open_gateway: OpenGateway, fake: CacheFake, redis_target: RedisTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The deadlock needed two callers in one process to race for the Redis lease. Only the first
    # caller in a process may look up and claim; the others wait for it in memory.
    fake.set(VENDOR, Scenario(text="Paris", delay_ms=100))
    async with open_gateway(**redis_target.settings()) as gw:
        backend: Any = gw.gateway.cache.backend
        real_lookup, lookups = backend.lookup, []

        async def lookup(*args: Any, **options: Any) -> Any:
            lookups.append(args[0])
            return await real_lookup(*args, **options)

        monkeypatch.setattr(backend, "lookup", lookup)
        results = await asyncio.gather(*(direct(gw, timeout_s=5) for _ in range(10)))

    assert statuses(results) == ["ok"] * 10
    assert len(lookups) == 1
    assert fake.count(VENDOR) == 1


async def test_a_refresh_waiting_on_another_gateway_s_refresh_gets_its_new_answer_not_the_old_entry(
    open_gateway: OpenGateway, fake: CacheFake, redis_target: RedisTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The entry under the key while the holder's refresh runs is the one both callers asked to replace."""
    fake.set(VENDOR, Scenario(text="OLD answer"))
    async with open_gateway(**redis_target.settings()) as one, open_gateway(**redis_target.settings()) as two:
        assert (await one.ask()).answer == "OLD answer"
        fake.set(VENDOR, Scenario(text="NEW answer"))
        release = fake.hold(VENDOR)
        backend: Any = two.gateway.cache.backend
        polled, real_peer_state = asyncio.Event(), backend.peer_state
        polls = 0

        async def counting_peer_state(key: str) -> Any:
            nonlocal polls
            polls += 1
            if polls >= 3:  # the snapshot and two polls with the holder's call still in flight
                polled.set()
            return await real_peer_state(key)

        monkeypatch.setattr(backend, "peer_state", counting_peer_state)
        holder = direct(one, cache="refresh")
        await fake.wait_for_calls(2, VENDOR)  # the seed's call, then the holder's
        peer = direct(two, cache="refresh", timeout_s=30)
        await asyncio.wait_for(
            asyncio.wait([asyncio.ensure_future(polled.wait()), peer], return_when="FIRST_COMPLETED"), 10
        )
        assert not peer.done(), peer.result().results[0]  # it did not settle for the old entry
        release.set()
        holder_result, peer_result = await holder, await peer

    assert (holder_result.answer, peer_result.answer) == ("NEW answer", "NEW answer")
    assert peer_result.results[0].cached is True  # the holder's answer, not a call of its own
    assert fake.count(VENDOR) == 2


async def test_a_query_cancelled_as_a_redis_command_is_written_stops_at_once(
    open_gateway: OpenGateway, fake: CacheFake, redis_target: RedisTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python 3.11's asyncio.wait_for, which redis-py put around every write when given a socket timeout, drops a
    cancellation that lands in the loop turn the write completes: the cancelled query went on waiting for the other
    gateway's answer (or called the provider) until its own deadline. Here the cancel lands exactly there."""
    fake.set(VENDOR, Scenario(text="Paris"))
    release = fake.hold(VENDOR)
    async with open_gateway(**redis_target.settings()) as one, open_gateway(**redis_target.settings()) as two:
        holder = direct(one)
        await fake.wait_for_calls(1, VENDOR)
        waiting = watch_waits(two, monkeypatch)
        peer = direct(two, timeout_s=60)
        await asyncio.wait_for(waiting.wait(), 5)  # polling the holder's lease with MGET

        fired = cancel_after_write(monkeypatch, b"MGET", lambda: peer)  # only the waiting peer sends MGET here
        done, _ = await asyncio.wait([peer], timeout=10)
        assert fired.is_set() and peer in done and peer.cancelled()
        release.set()
        await holder

    assert fake.count(VENDOR) == 1  # the cancelled peer made no call of its own


class ModelTasks:
    """Every model task of the running queries: cancelling them cancels their lookups' replies at once."""

    def cancel(self) -> None:
        for task in asyncio.all_tasks():
            if task.get_name().startswith("model:"):
                task.cancel()


OTHER = "openai/gpt-4.1"


@pytest.mark.parametrize(
    ("models", "strategy", "cancelled"),
    [
        pytest.param([MODEL], "first_available", asyncio.current_task, id="one model, sent from its task"),
        pytest.param([MODEL, OTHER], "consensus", ModelTasks, id="two models, one pipeline"),
    ],
)
async def test_a_claim_cancelled_on_the_wire_leaves_no_lease_behind(
    open_gateway: OpenGateway,
    fake: CacheFake,
    redis_target: RedisTarget,
    monkeypatch: pytest.MonkeyPatch,
    models: list[str],
    strategy: str,
    cancelled: Any,
) -> None:
    """A lookup (read, and take the lease on a miss) cancelled once written, before its reply: Redis took the lease
    for nobody. Left there, it kept every gateway asking the same question waiting, until its own deadline, for an
    answer nobody was making (a ``fastest`` race cancels its losers at any moment)."""
    fake.set(VENDOR, Scenario(text="Paris"))
    fake.set(OTHER.partition("/")[2], Scenario(text="Paris"))
    async with open_gateway(**redis_target.settings()) as one:
        # Cancelled in the turn after the write, before the reply is read.
        fired = cancel_after_write(monkeypatch, b"EVALSHA", cancelled)
        query = direct(one, models=models, strategy=strategy, timeout_s=60)
        await asyncio.wait([query])
        assert fired.is_set()
        assert query.cancelled() or {r.status for r in query.result().results} == {"cancelled"}
    assert fake.count() == 0
    assert [k for k in redis_target.items() if b":lease:" in k] == []  # released once the server closed, at last

    async with open_gateway(**redis_target.settings()) as two:
        answer = await two.query(prompt=PROMPT, models=models, strategy=strategy, timeout_s=5)
    assert [(r["status"], r["cached"]) for r in answer.results] == [("ok", False)] * len(models)
    assert fake.count() == len(models)
