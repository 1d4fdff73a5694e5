"""consensus: ask every model, group equal answers, and report whether a majority agrees.

As soon as one answer holds a strict majority of all requested models, no
answer still outstanding can change the outcome: the strategy returns then and
cancels the rest (reported as ``cancelled``). Otherwise it waits for every
model and reports consensus only when the leading answer holds a strict
majority of the successful ones (see :mod:`ai_gateway.strategies.voting`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from ai_gateway.dispatch import ModelTarget, Outcome, never
from ai_gateway.strategies.base import (
    CallModel,
    HedgeDelay,
    StrategyResult,
    cancel_and_wait,
    collect,
    no_hedge,
    start_all,
)
from ai_gateway.strategies.voting import Tally


async def consensus(
    targets: Sequence[ModelTarget], call: CallModel, hedge_delay: HedgeDelay = no_hedge
) -> StrategyResult:
    """``hedge_delay`` is ignored, and no model fails over: every vote counts, so each may retry."""
    tasks, started = start_all(targets, call, can_fail_over=never)
    outcomes: list[Outcome | None] = [None] * len(targets)
    tally = Tally(requested=len(targets))
    pending = set(tasks)
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in sorted(done, key=tasks.__getitem__):  # request order keeps ties deterministic
                position, outcome = tasks[task], task.result()
                outcomes[position] = outcome
                if outcome.ok and outcome.completion is not None:
                    tally.add(position, outcome.completion.text)
            if pending and tally.has_majority_of_requested():
                tally.decided_early = True
                break
    finally:
        await cancel_and_wait(pending)
    leader = tally.leader()
    winner = leader.members[0] if leader is not None and tally.reached() else None
    reason = "a majority of the requested models had already agreed"
    return StrategyResult(collect(tasks, outcomes, targets, started, reason), winner, tally)
