"""The per-call cache policy (use, refresh, bypass, only) and what may be stored, through the MCP tool.

Each test runs a real server against the fake provider over HTTP; what reached the provider is the fake's
count, what was served from the cache is each result's ``cached`` flag.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ai_gateway.cache.memory import MemoryBackend
from ai_gateway.cache.store import ResponseCache
from ai_gateway.settings import Settings
from ai_gateway.types import Completion, FinishReason, Usage
from tests.cache.conftest import OpenGateway
from tests.cache.support import MODEL, PROMPT, CacheFake, FakeClock, Reply
from tests.fake_provider import Scenario
from tests.redis_harness import RedisTarget

VENDOR = MODEL.partition("/")[2]


# ---------------------------------------------------------------------------- use
async def test_use_serves_the_second_identical_call_from_the_cache(open_gateway: OpenGateway, fake: CacheFake) -> None:
    fake.set(VENDOR, Scenario(text="Paris"))
    async with open_gateway() as gw:
        first = await gw.ask()
        second = await gw.ask()

    assert not first.is_error and not second.is_error
    assert (first.only["cached"], first.only["attempts"]) == (False, 1)
    assert (second.only["status"], second.only["cached"], second.only["attempts"]) == ("ok", True, 0)
    assert first.answer == second.answer == "Paris"
    assert fake.count(VENDOR) == 1
    # The cached answer cost nothing: the total leaves it out (its own usage still shows what it took).
    assert first.data["usage"]["output_tokens"] == 1
    assert second.data.get("usage") is None
    assert second.only["usage"]["output_tokens"] == 1


async def test_the_usage_total_counts_only_answers_that_came_from_a_provider(
    open_gateway: OpenGateway, fake: CacheFake
) -> None:
    fake.set("a", Scenario(text="one two three"))
    fake.set("b", Scenario(text="one two three four five"))
    async with open_gateway() as gw:
        await gw.ask(models=["openai/a"])
        mixed = await gw.ask(models=["openai/a", "openai/b"], strategy="consensus")

    a, b = mixed.by_model("openai/a"), mixed.by_model("openai/b")
    assert (a["cached"], b["cached"]) == (True, False)
    total = mixed.data["usage"]
    assert (total["input_tokens"], total["output_tokens"]) == (b["usage"]["input_tokens"], 5)
    assert (fake.count("a"), fake.count("b")) == (1, 1)


# ---------------------------------------------------------------------------- refresh, bypass
async def test_refresh_calls_the_provider_and_the_next_use_gets_the_refreshed_answer(
    open_gateway: OpenGateway, fake: CacheFake
) -> None:
    fake.set(VENDOR, Scenario(text="old answer"))
    async with open_gateway() as gw:
        await gw.ask()
        fake.set(VENDOR, Scenario(text="new answer"))
        stale = await gw.ask()
        refreshed = await gw.ask(cache="refresh")
        after = await gw.ask()

    assert (stale.answer, stale.only["cached"]) == ("old answer", True)
    assert (refreshed.answer, refreshed.only["cached"], refreshed.only["attempts"]) == ("new answer", False, 1)
    assert (after.answer, after.only["cached"]) == ("new answer", True)
    assert fake.count(VENDOR) == 2


async def test_a_refresh_that_fails_removes_the_entry_but_a_cancelled_one_leaves_it(
    open_gateway: OpenGateway, fake: CacheFake
) -> None:
    """A cancelled refresh learnt nothing about the entry (and a late removal could hit another process's fresh
    answer); one the provider failed is not to be answered by the entry it was asked to replace."""
    fake.set(VENDOR, Scenario(text="old answer"))
    async with open_gateway() as gw:
        await gw.ask()
        release = fake.hold(VENDOR)
        refresh = asyncio.create_task(gw.gateway.query(prompt=PROMPT, models=[MODEL], cache="refresh"))
        await fake.wait_for_calls(2, VENDOR)
        refresh.cancel()
        await asyncio.wait([refresh])
        release.set()
        await gw.settle()
        kept = await gw.ask(cache="only")
        fake.set(VENDOR, Scenario.error("bad_request"))
        failed = await gw.ask(cache="refresh")
        gone = await gw.ask(cache="only")

    assert refresh.cancelled()
    assert (kept.answer, kept.only["cached"]) == ("old answer", True)
    assert failed.is_error and gone.only["error"]["code"] == "cache_miss"


async def test_bypass_always_calls_the_provider_and_never_reads_or_writes(
    open_gateway: OpenGateway, fake: CacheFake
) -> None:
    fake.set(VENDOR, Scenario(text="stored"))
    async with open_gateway() as gw:
        await gw.ask()  # an entry bypass must not read
        fake.set(VENDOR, Scenario(text="fresh"))
        bypassed = [await gw.ask(cache="bypass") for _ in range(2)]
        after = await gw.ask()
        assert gw.gateway.cache.stats.writes == 1  # only the first "use" call wrote

    assert [(r.answer, r.only["cached"], r.only["attempts"]) for r in bypassed] == [("fresh", False, 1)] * 2
    assert (after.answer, after.only["cached"]) == ("stored", True)  # bypass wrote nothing over it
    assert fake.count(VENDOR) == 3


async def test_bypass_on_an_empty_cache_leaves_it_empty(open_gateway: OpenGateway, fake: CacheFake) -> None:
    async with open_gateway() as gw:
        await gw.ask(cache="bypass")
        miss = await gw.ask(cache="only")

    assert miss.is_error and miss.only["error"]["code"] == "cache_miss"
    assert fake.count(VENDOR) == 1


# ---------------------------------------------------------------------------- only
async def test_only_answers_a_hit_without_calling_the_provider(open_gateway: OpenGateway, fake: CacheFake) -> None:
    fake.set(VENDOR, Scenario(text="Paris"))
    async with open_gateway() as gw:
        await gw.ask()
        hit = await gw.ask(cache="only")

    assert not hit.is_error
    assert (hit.only["status"], hit.only["cached"], hit.only["attempts"], hit.answer) == ("ok", True, 0, "Paris")
    assert fake.count(VENDOR) == 1


async def test_only_fails_a_miss_with_cache_miss_and_calls_no_provider(
    open_gateway: OpenGateway, fake: CacheFake
) -> None:
    async with open_gateway() as gw:
        await gw.ask(models=["openai/cached"])
        reply = await gw.ask(models=["openai/cached", "openai/absent"], cache="only", strategy="consensus")

    assert not reply.is_error  # one model answered from the cache
    assert reply.by_model("openai/cached")["cached"] is True
    absent = reply.by_model("openai/absent")
    assert (absent["status"], absent["error"]["code"], absent["attempts"]) == ("error", "cache_miss", 0)
    assert fake.count("absent") == 0 and fake.count("cached") == 1


async def test_only_with_every_model_missing_is_a_tool_error_naming_cache_miss(
    open_gateway: OpenGateway, fake: CacheFake
) -> None:
    async with open_gateway() as gw:
        reply = await gw.ask(cache="only")

    assert reply.is_error
    assert reply.only["error"]["code"] == "cache_miss"
    assert "cache_miss" in reply.raw.content[0].text
    assert fake.count() == 0


# ---------------------------------------------------------------------------- what is never stored
NOT_STORED: dict[str, tuple[Scenario | tuple[str, str], dict[str, Any], str]] = {
    # name: (scenario or (text, finish reason), extra arguments, the first call's status)
    "upstream error": (Scenario.error("server_error"), {}, "error"),
    "permanent error": (Scenario.error("bad_request"), {}, "error"),
    "rate limited": (Scenario.error("rate_limited"), {}, "error"),
    "malformed body": (Scenario(malformed=True), {}, "error"),
    "timeout": (Scenario(hang=True), {"timeout_s": 0.3}, "error"),
    "empty answer": (Scenario(text="   "), {}, "error"),
    "content filter, no text": (("", "content_filter"), {}, "error"),
    "content filter, partial text": (("Here is how to", "content_filter"), {}, "ok"),
    "unknown finish reason": (("An answer", "something_new"), {}, "ok"),
}


@pytest.mark.parametrize("case", list(NOT_STORED))
async def test_failures_refusals_and_incomplete_answers_are_never_stored(
    open_gateway: OpenGateway, fake: CacheFake, case: str
) -> None:
    behaviour, extra, status = NOT_STORED[case]
    if isinstance(behaviour, Scenario):
        fake.set(VENDOR, behaviour)
    else:
        fake.finish_with(VENDOR, *behaviour)
    async with open_gateway(max_attempts=2) as gw:
        first = await gw.ask(**extra)
        calls = fake.count(VENDOR)
        later = await gw.ask(cache="only")
        assert gw.gateway.cache.stats.writes == 0
        assert len(gw.memory()) == 0

    assert first.only["status"] == status
    assert calls >= 1
    assert later.is_error and later.only["error"]["code"] == "cache_miss"
    assert fake.count(VENDOR) == calls  # "only" called nobody


async def test_a_refusal_with_no_text_still_reports_the_tokens_and_cost_it_was_billed(
    open_gateway: OpenGateway, fake: CacheFake
) -> None:
    """A 200 with finish_reason content_filter, no text and a usage block became content_filtered with no usage:
    the call's cost read 0.0, though the provider billed its tokens."""
    fake.finish_with(VENDOR, "", "content_filter")  # the fake bills 3 tokens in, 5 out
    prices = {MODEL: {"input_per_mtok": 1000.0, "output_per_mtok": 2000.0}}
    async with open_gateway(model_prices=prices) as gw:
        refused = await gw.ask()

    result = refused.only
    assert (result["status"], result["error"]["code"], result["finish_reason"]) == (
        "error",
        "content_filtered",
        "content_filter",
    )
    assert (result["usage"]["input_tokens"], result["usage"]["output_tokens"]) == (3, 5)
    assert result["cost_usd"] == pytest.approx((3 * 1000.0 + 5 * 2000.0) / 1e6)
    assert refused.data["cost_usd"] == pytest.approx(result["cost_usd"])


async def test_an_ok_answer_with_a_refusal_finish_is_served_but_not_stored(
    open_gateway: OpenGateway, fake: CacheFake
) -> None:
    fake.finish_with(VENDOR, "I can only say part", "content_filter")
    async with open_gateway() as gw:
        served = await gw.ask()
        again = await gw.ask()

    assert (served.answer, served.only["finish_reason"]) == ("I can only say part", "content_filter")
    assert again.only["cached"] is False
    assert fake.count(VENDOR) == 2


async def test_a_cancelled_call_is_never_stored(open_gateway: OpenGateway, fake: CacheFake) -> None:
    """``fastest`` cancels the loser while its request is held at the fake: nothing may be stored for it."""
    release = fake.hold("slow")
    async with open_gateway() as gw:
        race = await gw.ask(models=["openai/fast", "openai/slow"], strategy="fastest")
        release.set()
        slow_only = await gw.ask(models=["openai/slow"], cache="only")
        fast_only = await gw.ask(models=["openai/fast"], cache="only")

    assert race.by_model("openai/slow")["status"] == "cancelled"
    assert race.by_model("openai/fast")["status"] == "ok"
    assert slow_only.is_error and slow_only.only["error"]["code"] == "cache_miss"
    assert fast_only.only["cached"] is True
    assert fake.count("slow") == 1


async def test_an_answer_larger_than_the_entry_limit_is_served_but_not_stored(
    open_gateway: OpenGateway, fake: CacheFake
) -> None:
    big, small = " ".join(["word"] * 200), "short"
    fake.set("big", Scenario(text=big))
    fake.set("small", Scenario(text=small))
    async with open_gateway(cache_max_entry_bytes=400) as gw:
        served = await gw.ask(models=["openai/big"])
        big_again = await gw.ask(models=["openai/big"], cache="only")
        await gw.ask(models=["openai/small"])
        small_again = await gw.ask(models=["openai/small"], cache="only")
        stats = gw.gateway.cache.stats

    assert (served.answer, served.only["status"]) == (big, "ok")
    assert big_again.is_error and big_again.only["error"]["code"] == "cache_miss"
    assert small_again.only["cached"] is True  # the limit is what kept the big one out
    assert (stats.not_stored, stats.writes) == (1, 1)


# ---------------------------------------------------------------------------- strategies share entries
async def test_strategies_share_entries(open_gateway: OpenGateway, fake: CacheFake) -> None:
    """One entry per (provider, model, request, sample), whichever strategy asked."""
    fake.set("a", Scenario(text="Paris"))
    fake.set("b", Scenario(text="Paris"))
    models = ["openai/a", "openai/b"]
    async with open_gateway() as gw:
        fallback = await gw.ask(models=models)  # first_available: only "a" is asked
        consensus = await gw.ask(models=models, strategy="consensus")  # "a" from the cache, "b" asked
        fastest = await gw.ask(models=models, strategy="fastest")
        consensus_again = await gw.ask(models=models, strategy="consensus", cache="only")

    assert [r["cached"] for r in fallback.results if r["status"] == "ok"] == [False]
    assert [r["cached"] for r in consensus.results] == [True, False]
    assert consensus.data["consensus"]["reached"] is True
    assert all(r["cached"] for r in fastest.results if r["status"] == "ok") and fastest.answer == "Paris"
    assert [r["cached"] for r in consensus_again.results] == [True, True]
    assert consensus_again.data["consensus"]["reached"] is True
    assert (fake.count("a"), fake.count("b")) == (1, 1)


# The cached answers decide before any model is called: nothing is sent only to be cancelled (and billed).
BACKENDS = ["embedded", "redis"]


@pytest.fixture(params=BACKENDS)
def backend_settings(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "embedded":
        return {}
    target: RedisTarget = request.getfixturevalue("redis_target")
    return target.settings()


async def test_fastest_with_a_cached_model_asks_no_other(
    open_gateway: OpenGateway, fake: CacheFake, backend_settings: dict[str, Any]
) -> None:
    for vendor in "abc":
        fake.set(vendor, Scenario(text=f"answer {vendor}"))
    async with open_gateway(**backend_settings) as gw:
        await gw.ask(models=["openai/b"])
        race = await gw.ask(models=["openai/a", "openai/b", "openai/c"], strategy="fastest")

    assert (fake.count("a"), fake.count("b"), fake.count("c")) == (0, 1, 0)
    assert race.data["model"] == "openai/b" and race.answer == "answer b"
    assert [(r["status"], r["attempts"], r["cached"]) for r in race.results] == [
        ("cancelled", 0, False), ("ok", 0, True), ("cancelled", 0, False)]  # fmt: skip
    assert race.data["cost_usd"] == 0.0


async def test_a_consensus_whose_cached_answers_hold_a_majority_asks_no_other_model(
    open_gateway: OpenGateway, fake: CacheFake, backend_settings: dict[str, Any]
) -> None:
    for vendor in "abc":
        fake.set(vendor, Scenario(text="Paris"))
    async with open_gateway(**backend_settings) as gw:
        for vendor in "ac":
            await gw.ask(models=[f"openai/{vendor}"])
        vote = await gw.ask(models=["openai/a", "openai/b", "openai/c"], strategy="consensus")

    assert (fake.count("a"), fake.count("b"), fake.count("c")) == (1, 0, 1)
    assert vote.data["consensus"] | {"groups": None} == {
        "reached": True, "agreement": 0.6667, "votes": 2, "answered": 2, "requested": 3, "decided_early": True,
        "groups": None}  # fmt: skip
    assert [(r["status"], r["attempts"], r["cached"]) for r in vote.results] == [
        ("ok", 0, True), ("cancelled", 0, False), ("ok", 0, True)]  # fmt: skip


async def test_a_consensus_asks_only_the_models_without_a_cached_answer(
    open_gateway: OpenGateway, fake: CacheFake, backend_settings: dict[str, Any]
) -> None:
    for vendor, text in {"a": "Paris", "b": "Lyon", "c": "Paris"}.items():  # no early majority: every vote counts
        fake.set(vendor, Scenario(text=text))
    async with open_gateway(**backend_settings) as gw:
        await gw.ask(models=["openai/b"])
        vote = await gw.ask(models=["openai/a", "openai/b", "openai/c"], strategy="consensus")

    assert (fake.count("a"), fake.count("b"), fake.count("c")) == (1, 1, 1)  # b: only its first call
    assert [(r["status"], r["cached"]) for r in vote.results] == [("ok", False), ("ok", True), ("ok", False)]
    assert vote.answer == "Paris" and vote.data["consensus"]["votes"] == 2


async def test_what_this_process_holds_locally_does_not_change_a_result(
    open_gateway: OpenGateway, fake: CacheFake, redis_target: RedisTarget
) -> None:
    """Hits held in the near cache answered a turn before hits read from Redis: a fastest winner, and a consensus's
    figures, changed with what the process happened to hold. Every hit now counts, wherever it was read."""
    texts = {"a": "Lyon", "b": "Paris", "c": "Paris."}
    for vendor, text in texts.items():
        fake.set(vendor, Scenario(text=text))
    models = [f"openai/{vendor}" for vendor in texts]

    def shape(reply: Reply) -> Any:
        return reply.data.get("model"), reply.data.get("consensus"), [(r["status"], r["cached"]) for r in reply.results]

    async with open_gateway(**redis_target.settings()) as filler:
        for model in models:
            await filler.ask(models=[model])
    results = {}
    for warm in (False, True):
        async with open_gateway(**redis_target.settings()) as gw:
            if warm:  # this process has read B and C before: the near cache holds them
                near = gw.gateway.cache.backend.near  # type: ignore[attr-defined]
                await gw.ask(models=models[1:2])  # starts the tracking connection
                await asyncio.wait_for(near.wait_live(), 5)
                for model in models[1:]:
                    await gw.ask(models=[model])
                assert len(near.entries) == 2
            results[warm] = [
                shape(await gw.ask(models=models, strategy=strategy, cache=mode))
                for strategy in ("fastest", "consensus")
                for mode in ("use", "only")
            ]

    assert results[True] == results[False]
    assert results[False][0][0] == "openai/a"  # listed first
    assert results[False][2][1]["answered"] == 3
    assert fake.count() == 3


@pytest.mark.parametrize(
    ("texts", "decided"),
    [({"a": "Paris", "b": "Paris"}, True), ({"a": "Paris", "b": "Lyon"}, False)],
)
async def test_a_consensus_replay_treats_a_model_with_nothing_cached_as_still_outstanding(
    open_gateway: OpenGateway, fake: CacheFake, texts: dict[str, str], decided: bool
) -> None:
    """Only "a" and "b" are cached (a run where "c" was cancelled). When their answers decide the vote, "c" is
    cancelled, as it was; when they do not, it is the cache_miss it is."""
    for vendor, text in texts.items():
        fake.set(vendor, Scenario(text=text))
    async with open_gateway() as gw:
        for vendor in texts:
            await gw.ask(models=[f"openai/{vendor}"])
        replay = await gw.ask(models=["openai/a", "openai/b", "openai/c"], strategy="consensus", cache="only")

    assert [r["cached"] for r in replay.results] == [True, True, False]
    assert replay.data["consensus"]["decided_early"] is decided
    third = replay.results[2]
    expected = ("cancelled", "cancelled") if decided else ("error", "cache_miss")
    assert (third["status"], third["error"]["code"]) == expected
    assert fake.count("c") == 0


async def test_a_fastest_replay_cancels_the_models_with_nothing_cached_once_one_answers(
    open_gateway: OpenGateway, fake: CacheFake
) -> None:
    """A fastest run stores the winner's answer only (the others were cancelled); its replay says the same."""
    fake.set("a", Scenario(text="Paris"))
    async with open_gateway() as gw:
        await gw.ask(models=["openai/a"])
        replay = await gw.ask(models=["openai/b", "openai/a", "openai/c"], strategy="fastest", cache="only")
        nothing = await gw.ask(models=["openai/b", "openai/c"], strategy="fastest", cache="only")

    assert replay.answer == "Paris" and replay.data["model"] == "openai/a"
    assert [(r["status"], r["error"]["code"] if r["error"] else None) for r in replay.results] == [
        ("cancelled", "cancelled"), ("ok", None), ("cancelled", "cancelled")]  # fmt: skip
    assert nothing.is_error
    assert [r["error"]["code"] for r in nothing.results] == ["cache_miss", "cache_miss"]
    assert (fake.count("b"), fake.count("c")) == (0, 0)


# ---------------------------------------------------------------------------- TTL
async def test_the_ttl_setting_is_honoured(
    open_gateway: OpenGateway, fake: CacheFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    async with open_gateway(cache_ttl_s=30) as gw:
        monkeypatch.setattr(gw.memory(), "_clock", clock)  # the embedded backend's injected clock
        await gw.ask()
        clock.advance(29.9)
        fresh = await gw.ask()
        clock.advance(0.2)
        expired = await gw.ask()

    assert fresh.only["cached"] is True
    assert expired.only["cached"] is False
    assert fake.count(VENDOR) == 2


async def test_response_cache_writes_with_its_ttl_and_entries_expire() -> None:
    clock = FakeClock()
    cache = ResponseCache(MemoryBackend(100, 1 << 20, clock=clock), namespace="t", ttl_s=10)
    answer = Completion("Paris", FinishReason.STOP, Usage(3, 1))
    cache.store_later("t:k", answer)
    await cache.flush()

    assert await cache.read("t:k") == answer
    clock.advance(9.99)
    assert await cache.read("t:k") == answer
    clock.advance(0.01)
    assert await cache.read("t:k") is None
    assert (cache.stats.hits, cache.stats.misses, cache.stats.writes) == (2, 1, 1)


def test_a_ttl_above_the_ceiling_is_refused() -> None:
    with pytest.raises(ValueError, match="CACHE_TTL_S"):
        Settings(_env_file=None, cache_ttl_s=100, cache_max_ttl_s=50)
