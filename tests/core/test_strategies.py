"""Strategy semantics with a hand-released fake adapter: order, cancellation, votes, ties."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from ai_gateway.dispatch import Dispatcher, Resilience
from ai_gateway.errors import AuthError, RateLimited, UpstreamError
from ai_gateway.resilience.clock import Deadline
from ai_gateway.resilience.retry import CANCELLED_IN_BACKOFF
from ai_gateway.settings import Settings
from ai_gateway.strategies import StrategyResult
from ai_gateway.strategies.consensus import consensus
from ai_gateway.strategies.fastest import fastest
from ai_gateway.strategies.first_available import first_available
from tests.core.fakes import FakeClock
from tests.core.gated import REQUEST


def caller(dispatcher: Dispatcher, total_s: float = 30.0):
    deadline = Deadline(total_s)

    return dispatcher.bind(REQUEST, deadline)


def statuses(result: StrategyResult) -> list[str]:
    return [o.status for o in result.outcomes]


# -- first_available ------------------------------------------------------------------


async def test_first_available_tries_in_order_and_skips_after_success(dispatcher, gated):
    targets = [gated.target(m) for m in ("a", "b", "c")]
    run = asyncio.create_task(first_available(targets, caller(dispatcher)))
    await gated.wait_started("a")
    assert gated.started == ["a"]  # b is not called while a is still in flight
    gated.fail("a", RateLimited("slow down", status=429))
    await gated.wait_started("b")
    gated.answer("b", "4")
    result = await run
    assert statuses(result) == ["error", "ok", "skipped"]
    assert result.winner == 1
    assert result.outcomes[0].error.code == "rate_limited"
    assert gated.started == ["a", "b"]  # c never called


async def test_first_available_reports_every_failure_when_none_succeeds(dispatcher, gated):
    targets = [gated.target(m) for m in ("a", "b")]
    gated.fail("a", UpstreamError("boom", status=500))
    gated.fail("b", RateLimited("later", status=429))
    result = await first_available(targets, caller(dispatcher))
    assert result.winner is None
    assert [o.error.code for o in result.outcomes] == ["upstream_error", "rate_limited"]


async def test_a_model_that_failed_over_gets_its_retry_when_no_later_model_answers(dispatcher, gated):
    """a's transient error handed over to b at once, and b failed for good: the call failed with its deadline
    barely touched, where asking a alone would have answered (a review's reproducer)."""
    targets = [gated.target(m) for m in ("a", "b")]
    gated.script("a", UpstreamError("busy", status=503), "from a")
    gated.fail("b", AuthError("bad key", status=401))
    result = await first_available(targets, caller(dispatcher))
    assert result.winner == 0 and statuses(result) == ["ok", "error"]
    assert gated.started == ["a", "b", "a"]  # b was still asked first: no backoff while another could answer
    assert result.outcomes[0].attempts == 2 and result.outcomes[1].error.code == "auth"


async def test_a_resumed_model_keeps_its_attempts_and_reports_the_last_error(dispatcher, gated):
    targets = [gated.target(m) for m in ("a", "b")]
    gated.script("a", *(UpstreamError(f"busy {n}", status=503) for n in (1, 2, 3)), "never reached")
    gated.fail("b", AuthError("bad key", status=401))
    result = await first_available(targets, caller(dispatcher))
    assert result.winner is None
    a = result.outcomes[0]
    assert a.attempts == 3 and gated.started == ["a", "b", "a", "a"]  # max_attempts (3) counts the first one
    assert (a.error.message, a.error.not_retried) == ("busy 3", "all 3 attempts used")


async def test_an_expired_deadline_starts_no_model(dispatcher, gated):
    targets = [gated.target(m) for m in ("a", "b")]
    result = await first_available(targets, caller(dispatcher, total_s=-1))
    assert statuses(result) == ["skipped", "skipped"]
    assert {o.error.code for o in result.outcomes} == {"deadline"}
    assert gated.started == []


async def test_deadline_cuts_a_model_that_never_answers(dispatcher, gated):
    target = gated.target("hangs")
    result = await first_available([target], caller(dispatcher, total_s=0.2))
    assert result.outcomes[0].status == "error"
    assert result.outcomes[0].error.code == "deadline"
    assert gated.cancelled == ["hangs"]


# -- fastest --------------------------------------------------------------------------


async def test_fastest_cancels_every_loser_when_one_answers(dispatcher, gated):
    targets = [gated.target(m) for m in ("a", "b", "c")]
    run = asyncio.create_task(fastest(targets, caller(dispatcher)))
    await gated.wait_started("a", "b", "c")
    gated.answer("b", "4")
    result = await run
    assert result.winner == 1
    assert statuses(result) == ["cancelled", "ok", "cancelled"]
    assert sorted(gated.cancelled) == ["a", "c"]
    assert {o.error.code for o in result.outcomes if o.status == "cancelled"} == {"cancelled"}


async def test_fastest_answers_arriving_in_the_same_turn_go_to_the_one_listed_first(dispatcher, gated):
    # b is released first, so its task runs (and finishes) first within the turn. Both answers are complete and
    # stored; a replay gets both back in one turn, so only an order both runs share (the request's) replays exactly.
    targets = [gated.target(m) for m in ("a", "b", "c")]
    run = asyncio.create_task(fastest(targets, caller(dispatcher)))
    await gated.wait_started("a", "b", "c")
    gated.answer("b", "from b")
    gated.answer("a", "from a")
    result = await run
    assert statuses(result) == ["ok", "ok", "cancelled"]
    assert result.outcomes[1].finished_at <= result.outcomes[0].finished_at  # b did finish first
    assert result.winner == 0


async def test_fastest_keeps_waiting_past_a_failure(dispatcher, gated):
    targets = [gated.target(m) for m in ("a", "b")]
    run = asyncio.create_task(fastest(targets, caller(dispatcher)))
    await gated.wait_started("a", "b")
    gated.fail("a", UpstreamError("boom", status=502))
    gated.answer("b", "ok")
    result = await run
    assert statuses(result) == ["error", "ok"]
    assert result.winner == 1
    assert gated.cancelled == []


async def test_a_racer_retries_on_its_own_while_the_other_never_answers(dispatcher, gated):
    """Giving its retry up to a racer still running lost the call whenever that racer hung."""
    targets = [gated.target(m) for m in ("a", "b")]
    gated.script("a", UpstreamError("busy", status=503), "from a")
    result = await fastest(targets, caller(dispatcher, total_s=5))  # b is never released
    assert result.winner == 0 and statuses(result) == ["ok", "cancelled"]
    assert result.outcomes[0].attempts == 2 and gated.cancelled == ["b"]


class HeldClock(FakeClock):
    """Backoffs that never end on their own: a model stays between attempts until it is cancelled."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        self.waiting.set()
        await asyncio.Event().wait()


async def test_a_racer_stopped_between_attempts_reports_the_error_it_was_retrying(gated):
    clock = HeldClock()
    async with httpx.AsyncClient() as client:
        dispatcher = Dispatcher(lambda: client, Resilience.from_settings(Settings(_env_file=None), clock=clock))
        targets = [gated.target(m) for m in ("a", "b")]
        gated.fail("a", UpstreamError("busy", status=503))
        run = asyncio.create_task(fastest(targets, caller(dispatcher)))
        await clock.waiting.wait()  # a failed and waits to retry
        gated.answer("b", "from b")
        result = await run
    assert result.winner == 1 and statuses(result) == ["error", "ok"]
    a = result.outcomes[0]
    assert (a.error.code, a.error.not_retried, a.attempts) == ("upstream_error", CANCELLED_IN_BACKOFF, 1)


async def test_fastest_with_no_success_has_no_winner(dispatcher, gated):
    targets = [gated.target(m) for m in ("a", "b")]
    gated.fail("a", UpstreamError("x", status=500))
    gated.fail("b", UpstreamError("y", status=500))
    result = await fastest(targets, caller(dispatcher))
    assert result.winner is None
    assert statuses(result) == ["error", "error"]


# -- consensus ------------------------------------------------------------------------


async def test_consensus_decides_once_a_majority_of_all_requested_agree(dispatcher, gated):
    targets = [gated.target(m) for m in ("a", "b", "c")]
    run = asyncio.create_task(consensus(targets, caller(dispatcher)))
    await gated.wait_started("a", "b", "c")
    gated.answer("a", "4")
    gated.answer("b", "The answer is four.")
    result = await run
    assert statuses(result) == ["ok", "ok", "cancelled"]
    assert gated.cancelled == ["c"]
    assert result.tally.decided_early and result.tally.reached()
    assert result.winner == 0  # the group's first model in request order


async def test_consensus_counts_a_majority_of_successful_answers(dispatcher, gated):
    targets = [gated.target(m) for m in ("a", "b", "c", "d", "e")]
    gated.answer("a", "Paris")
    gated.answer("b", "paris.")
    gated.fail("c", UpstreamError("x", status=500))
    gated.fail("d", RateLimited("y", status=429))
    gated.answer("e", "Lyon")
    result = await consensus(targets, caller(dispatcher))
    tally = result.tally
    assert not tally.decided_early  # 2 of 5 requested is no majority of all
    assert tally.reached() and tally.answered == 3
    assert [g.votes for g in tally.ranked()] == [2, 1]
    assert result.winner == 0


async def test_consensus_reports_no_majority_and_keeps_every_answer(dispatcher, gated):
    targets = [gated.target(m) for m in ("a", "b", "c")]
    for model, text in (("a", "4"), ("b", "5"), ("c", "6")):
        gated.answer(model, text)
    result = await consensus(targets, caller(dispatcher))
    assert result.winner is None
    assert not result.tally.reached()
    assert statuses(result) == ["ok", "ok", "ok"]
    assert [g.normalized for g in result.tally.ranked()] == ["4", "5", "6"]


async def test_a_tie_at_the_top_is_never_a_consensus_and_ranks_by_request_order(dispatcher, gated):
    targets = [gated.target(m) for m in ("a", "b", "c", "d")]
    for model, text in (("a", "yes"), ("b", "no"), ("c", "No"), ("d", "Yes!")):
        gated.answer(model, text)
    result = await consensus(targets, caller(dispatcher))
    ranked = result.tally.ranked()
    assert [(g.normalized, g.members) for g in ranked] == [("yes", [0, 3]), ("no", [1, 2])]
    assert not result.tally.reached()
    assert result.winner is None


async def test_a_single_model_is_its_own_consensus(dispatcher, gated):
    targets = [gated.target("a")]
    gated.answer("a", "42")
    result = await consensus(targets, caller(dispatcher))
    assert result.winner == 0 and result.tally.reached()


# -- cancellation from outside ----------------------------------------------------------


@pytest.mark.parametrize("strategy", [fastest, consensus])
async def test_cancelling_the_call_cancels_and_awaits_every_model(dispatcher, gated, strategy):
    targets = [gated.target(m) for m in ("a", "b", "c")]
    run = asyncio.create_task(strategy(targets, caller(dispatcher)))
    await gated.wait_started("a", "b", "c")
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert sorted(gated.cancelled) == ["a", "b", "c"]
    leftovers = [t for t in asyncio.all_tasks() if t.get_name().startswith("model:")]
    assert leftovers == []
