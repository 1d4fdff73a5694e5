"""query_models' progress notifications, around the real strategies and a hand-released fake adapter.

No wall clock is waited on: heartbeats run on a tiny interval (the deadline on a fake clock where its share matters)
and the tests wait for the notifications themselves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from ai_gateway.dispatch import Dispatcher
from ai_gateway.errors import AuthError, UpstreamError
from ai_gateway.outcome import ModelTarget
from ai_gateway.progress import HEARTBEAT_CEILING, QueryProgress
from ai_gateway.resilience.clock import Deadline
from ai_gateway.strategies import StrategyResult
from ai_gateway.strategies.consensus import consensus
from ai_gateway.strategies.first_available import first_available
from tests.core.fakes import FakeClock
from tests.core.gated import REQUEST

TINY_S = 0.001  # heartbeat interval: the tests wait for heartbeats, never for time


class Sink:
    """Collects notifications as fastmcp's Context.report_progress would send them."""

    def __init__(self) -> None:
        self.sent: list[tuple[float, float | None, str]] = []
        self._arrived = asyncio.Event()

    async def __call__(self, progress: float, total: float | None, message: str) -> None:
        self.sent.append((progress, total, message))
        self._arrived.set()

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(5):
            while len(self.sent) < count:
                self._arrived.clear()
                await self._arrived.wait()


def reporter_tasks() -> list[asyncio.Task]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "query-progress" and not t.done()]


async def run_with_progress(
    strategy,
    dispatcher: Dispatcher,
    targets: Sequence[ModelTarget],
    sink,
    interval_s: float | None,
    deadline: Deadline | None = None,
) -> StrategyResult:
    deadline = deadline or Deadline(30.0)
    async with QueryProgress(sink, targets, deadline, interval_s) as progress:
        return await strategy(targets, progress.watch(dispatcher.bind(REQUEST, deadline)))


async def test_each_model_done_is_reported_while_others_are_awaited_and_the_last_is_not(dispatcher, gated):
    sink = Sink()
    targets = [gated.target(m) for m in ("a", "b", "c")]
    call = asyncio.create_task(run_with_progress(consensus, dispatcher, targets, sink, None))
    await gated.wait_started("a", "b", "c")
    gated.answer("a", "4")
    await sink.wait_for(1)
    gated.fail("b", AuthError("bad key", status=401))
    await sink.wait_for(2)
    gated.answer("c", "4")
    result = await call

    assert [o.status for o in result.outcomes] == ["ok", "error", "ok"]
    assert [(p, t) for p, t, _ in sink.sent] == [(1, 3), (2, 3)]  # c's answer is the result itself
    assert sink.sent[0][2].startswith("gated/a answered in ") and sink.sent[0][2].endswith("(1 of 3 models done)")
    assert sink.sent[1][2] == "gated/b failed (auth) (2 of 3 models done)"
    assert not reporter_tasks()


async def test_a_one_model_call_sends_nothing_and_starts_no_task(dispatcher, gated):
    sink = Sink()
    (target,) = [gated.target("a")]
    call = asyncio.create_task(run_with_progress(first_available, dispatcher, [target], sink, None))
    await gated.wait_started("a")
    assert not reporter_tasks()
    gated.answer("a", "4")
    assert (await call).winner == 0
    assert sink.sent == []


async def test_a_slow_single_model_gets_heartbeats_naming_it(dispatcher, gated):
    sink = Sink()
    target = gated.target("a")
    call = asyncio.create_task(run_with_progress(first_available, dispatcher, [target], sink, TINY_S))
    await sink.wait_for(2)
    gated.answer("a", "4")
    assert (await call).winner == 0
    assert all(0 < p < 1 and t == 1 for p, t, _ in sink.sent)
    assert all(m.startswith("waiting for gated/a (") and m.endswith(" s; no answer yet)") for _, _, m in sink.sent)
    assert not reporter_tasks()


async def test_a_model_given_a_second_chance_is_counted_once(dispatcher, gated):
    sink = Sink()
    targets = [gated.target(m) for m in ("a", "b")]
    gated.script("a", UpstreamError("busy", status=503), "from a")  # fails over to b, then is resumed
    gated.fail("b", AuthError("bad key", status=401))
    result = await run_with_progress(first_available, dispatcher, targets, sink, None)

    assert result.winner == 0 and gated.started == ["a", "b", "a"]
    # a's failover is news; b's failure made both done (nothing more to count); a's second finish is not new
    assert [(p, t, m) for p, t, m in sink.sent] == [(1, 2, "gated/a failed (upstream_error) (1 of 2 models done)")]


async def test_heartbeats_grow_below_the_next_model_and_name_the_models_awaited(dispatcher, gated):
    sink = Sink()
    targets = [gated.target(m) for m in ("a", "b")]
    call = asyncio.create_task(run_with_progress(consensus, dispatcher, targets, sink, TINY_S))
    await sink.wait_for(2)  # a slow model: heartbeats before any answer
    gated.answer("a", "4")
    # a's notification, then heartbeats again (one already on its way may still come first, below 1)
    while not any(1 < p < 2 for p, _, _ in sink.sent):
        await sink.wait_for(len(sink.sent) + 1)
    gated.answer("b", "4")
    await call

    values = [p for p, _, _ in sink.sent]
    assert values == sorted(set(values)), "progress must grow with every notification"
    assert all(t == 2 for _, t, _ in sink.sent)
    before = [(p, m) for p, _, m in sink.sent if p < 1]
    assert len(before) >= 2 and all(m.startswith("waiting for gated/a, gated/b (") for _, m in before)
    assert all(m.endswith("0 of 2 models done)") for _, m in before)
    assert any(p == 1 and m.startswith("gated/a answered") for p, _, m in sink.sent)
    after = [m for p, _, m in sink.sent if 1 < p < 2]
    assert after and all(m.startswith("waiting for gated/b (") for m in after)
    assert not reporter_tasks()  # cancelled and awaited when the call answered: nothing sends after it


async def test_a_retry_after_every_model_failed_stays_below_the_total(dispatcher, gated):
    """first_available's second chance runs when every model has failed once: its heartbeats said "2 of 2 models
    done" with progress 2.x of 2, over 100% (a review's reproducer)."""
    sink = Sink()
    targets = [gated.target(m) for m in ("a", "b")]
    gated.script("a", UpstreamError("busy", status=503))  # fails over to b; its retry then waits at the gate
    gated.fail("b", AuthError("bad key", status=401))
    call = asyncio.create_task(run_with_progress(first_available, dispatcher, targets, sink, TINY_S))
    await sink.wait_for(1)
    await gated.wait_started("b")
    while gated.started.count("a") < 2:  # the second chance has begun
        await gated.wait_started("a")
        await asyncio.sleep(0)
    retrying = len(sink.sent)
    await sink.wait_for(retrying + 2)
    gated.answer("a", "4")
    assert (await call).winner == 0

    assert all(p < 2 and t == 2 for p, t, _ in sink.sent)
    values = [p for p, _, _ in sink.sent]
    assert values == sorted(set(values))
    assert sink.sent[-1][2].startswith("waiting for gated/a (")
    assert sink.sent[-1][2].endswith("; every model failed once; retrying)")


async def test_heartbeats_stop_at_the_ceiling_instead_of_spinning(dispatcher, gated):
    """With an interval below the clock's resolution, heartbeats past the ceiling (the same value each time, so
    never sent) looped without ever waiting: the deadline's own timer could not fire, and the call never ended."""
    sink = Sink()
    clock = FakeClock()
    target = gated.target("a")
    deadline = Deadline(10.0, clock)
    call = asyncio.create_task(run_with_progress(first_available, dispatcher, [target], sink, 1e-12, deadline))
    await sink.wait_for(1)
    clock.advance(9.9995)  # the share of the deadline spent reaches the ceiling
    async with asyncio.timeout(5):
        while sink.sent[-1][0] < HEARTBEAT_CEILING:
            await sink.wait_for(len(sink.sent) + 1)
    gated.answer("a", "4")  # answered only if the loop still turns
    assert (await asyncio.wait_for(call, 5)).winner == 0
    assert [p for p, _, _ in sink.sent].count(HEARTBEAT_CEILING) == 1


async def test_a_client_that_cannot_take_a_notification_never_fails_the_call(dispatcher, gated):
    attempts: list[float] = []
    tried = asyncio.Event()

    async def gone(progress: float, total: float | None, message: str) -> None:
        attempts.append(progress)
        tried.set()
        raise ConnectionResetError("the client went away")

    targets = [gated.target(m) for m in ("a", "b")]
    call = asyncio.create_task(run_with_progress(consensus, dispatcher, targets, gone, TINY_S))
    await asyncio.wait_for(tried.wait(), 5)
    await asyncio.sleep(0)  # the failed send ends the reporter within the step that tried it
    assert not reporter_tasks()
    gated.answer("a", "4")
    gated.answer("b", "4")
    result = await call
    assert [o.status for o in result.outcomes] == ["ok", "ok"] and len(attempts) == 1


async def test_a_stuck_client_delays_no_answer_and_loses_no_vote(dispatcher, gated):
    """Sent from a model's own task, a notification a client did not take held that task, and the strategy
    deciding meanwhile cancelled it: an answer already paid for was reported cancelled."""
    sink_entered = asyncio.Event()

    async def stuck(progress: float, total: float | None, message: str) -> None:
        sink_entered.set()
        await asyncio.Event().wait()  # never taken

    targets = [gated.target(m) for m in ("a", "b", "c")]
    call = asyncio.create_task(run_with_progress(consensus, dispatcher, targets, stuck, None))
    await gated.wait_started("a", "b", "c")
    gated.answer("a", "4")
    await asyncio.wait_for(sink_entered.wait(), 5)
    gated.answer("b", "four")
    gated.answer("c", "4")
    result = await asyncio.wait_for(call, 5)

    assert [o.status for o in result.outcomes] == ["ok", "ok", "ok"]
    assert result.tally is not None and result.tally.reached()
    assert not reporter_tasks()  # the stuck send was cancelled with the call's end
