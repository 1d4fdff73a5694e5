"""consensus: ask every model, group equal answers, and report whether a majority agrees.

As soon as one answer holds a strict majority of all requested models, no
answer still outstanding can change the outcome: the strategy returns then and
cancels the rest (reported as ``cancelled``). Otherwise it waits for every
model and reports consensus only when the leading answer holds a strict
majority of the successful ones (see :mod:`ai_gateway.strategies.voting`).

Cached answers are read first, together: when they alone hold a majority of every
model requested, no other model is called (and each is reported ``cancelled``, as
in a live vote decided early); otherwise only the models without one are called.

In a replay (``cache: only``) every cached answer arrives at once, and a model
the replayed run had cancelled has none (it was never stored). Its
``cache_miss`` is held back as if it were still outstanding: when the cached
answers decide early, it is cancelled again, as in the run; otherwise it is
reported. So a consensus replays exactly, ``decided_early`` included.
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
from ai_gateway.strategies.voting import Tally


async def consensus(
    targets: Sequence[ModelTarget], call: CallModel, hedge_delay: HedgeDelay = no_hedge
) -> StrategyResult:
    """``hedge_delay`` is ignored, and no model fails over: every vote counts, so each may retry."""
    started = time.perf_counter()
    reason = "a majority of the requested models had already agreed"
    outcomes: list[Outcome | None] = [None] * len(targets)
    tally = Tally(requested=len(targets))
    # The cached votes first: when they already hold a majority of every model asked, the others are not asked.
    cached = await call.from_cache(targets)
    for position in sorted(cached):
        outcomes[position] = outcome = cached[position]
        tally.add(position, outcome.completion.text)  # type: ignore[union-attr]  (a hit has a completion)
    if len(cached) < len(targets) and tally.has_majority_of_requested():
        tally.decided_early = True
        return StrategyResult(not_started(outcomes, targets, started, reason), _winner(tally), tally)
    tasks = start_all(targets, call, never, answered=cached)
    held: dict[int, Outcome] = {}  # replayed models with no cached answer: outstanding until the vote is decided
    pending = set(tasks)
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in sorted(done, key=tasks.__getitem__):  # request order keeps ties deterministic
                position, outcome = tasks[task], task.result()
                if replay_miss(outcome):
                    held[position] = outcome
                    continue
                outcomes[position] = outcome
                if outcome.ok and outcome.completion is not None:
                    tally.add(position, outcome.completion.text)
            if (pending or held) and tally.has_majority_of_requested():
                tally.decided_early = True
                break
    finally:
        await cancel_and_wait(pending)
    release_held(held, outcomes, targets, started, reason, decided=tally.decided_early)
    return StrategyResult(collect(tasks, outcomes, targets, started, reason), _winner(tally), tally)


def _winner(tally: Tally) -> int | None:
    leader = tally.leader()
    return leader.members[0] if leader is not None and tally.reached() else None
