"""fastest: call every model at once; the first success answers and the rest are cancelled.

A cached answer wins before any model is called (the first listed, if several are cached;
every cached answer is reported, and the models without one are reported cancelled, having sent nothing).

In a replay (``cache: only``) a model with no cached answer is held back as if still
racing (see :func:`~ai_gateway.strategies.base.replay_miss`): when another answers,
it is cancelled, as it was in the run being replayed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from ai_gateway.outcome import ModelTarget, Outcome, never
from ai_gateway.strategies.base import (
    CallModel,
    HedgeDelay,
    StrategyResult,
    cancel_and_wait,
    collect,
    no_hedge,
    not_started,
    release_held,
    replay_miss,
    start_all,
)


async def fastest(
    targets: Sequence[ModelTarget], call: CallModel, hedge_delay: HedgeDelay = no_hedge
) -> StrategyResult:
    """``hedge_delay`` is ignored: fastest already races every model."""
    started = time.perf_counter()
    reason = "another model answered first"
    outcomes: list[Outcome | None] = [None] * len(targets)
    # A cached answer wins any race: asking the others would only send requests to cancel (and pay for).
    # Every cached answer is reported; the first listed wins, as when several answer in one turn.
    cached = await call.from_cache(targets)
    if cached:
        for position, outcome in cached.items():
            outcomes[position] = outcome
        return StrategyResult(not_started(outcomes, targets, started, reason), min(cached))
    # Each racer retries on its own, as if it raced alone: one that gave its retry up to another racer lost the
    # call whenever that racer hung or failed too, which asking the first model alone would have answered.
    tasks = start_all(targets, call, never)
    held: dict[int, Outcome] = {}
    winner: int | None = None
    pending = set(tasks)
    try:
        while pending and winner is None:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                outcome = task.result()
                if replay_miss(outcome):
                    held[tasks[task]] = outcome
                else:
                    outcomes[tasks[task]] = outcome
            # Several may finish in the same turn of the loop: the one listed first wins. Which of them the
            # loop happened to handle first says nothing about the models; and every answer of that turn is
            # stored, so a replay (all its hits arriving in one turn) picks the same winner by the same rule.
            finished_ok = [i for i in (tasks[t] for t in done) if i not in held and outcomes[i].ok]  # type: ignore[union-attr]
            if finished_ok:
                winner = min(finished_ok)
    finally:
        await cancel_and_wait(pending)
    release_held(held, outcomes, targets, started, reason, decided=winner is not None)
    return StrategyResult(collect(tasks, outcomes, targets, started, reason), winner)
