"""first_available: try the models in order; the first success answers.

A model that fails hands over to the next at once; if none of them answers, the models that
failed over instead of retrying get their retries after all. With hedging (opt-in), a
model that has not answered within its hedge delay is joined by the next one
without being cancelled; whichever succeeds first answers and the rest are
cancelled. Models never started are reported as ``skipped``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from ai_gateway.outcome import ModelTarget, Outcome, never
from ai_gateway.resilience.retry import FAILED_OVER
from ai_gateway.strategies.base import (
    CallModel,
    HedgeDelay,
    StrategyResult,
    cancel_and_wait,
    collect,
    no_hedge,
)


async def first_available(
    targets: Sequence[ModelTarget], call: CallModel, hedge_delay: HedgeDelay = no_hedge
) -> StrategyResult:
    outcomes: list[Outcome | None] = [None] * len(targets)
    started: dict[asyncio.Task[Outcome], int] = {}  # every task ever started
    running: dict[asyncio.Task[Outcome], int] = {}
    began = time.perf_counter()
    next_up = 0
    winner: int | None = None

    def can_fail_over() -> bool:
        # Another candidate can still answer: another model in flight, or a later one whose circuit admits calls.
        others_running = sum(not task.done() for task in running) > 1
        return others_running or any(call.available(target) for target in targets[next_up:])

    def start_next(hedge: bool) -> float | None:
        nonlocal next_up
        position, next_up = next_up, next_up + 1
        target = targets[position]
        task = asyncio.create_task(call(target, can_fail_over, hedge=hedge), name=f"model:{target.id}")
        running[task] = started[task] = position
        return hedge_delay(target)

    if len(targets) == 1 and hedge_delay(targets[0]) is None:
        # One model, no hedging: called in this task, which saves a task and two turns of the event loop
        # (a fifth of a cache hit's cost); a cancellation is then this task's own and is raised as is.
        outcome = await call(targets[0], never, raise_cancel=True)
        return StrategyResult([outcome], 0 if outcome.ok else None)
    try:
        delay = start_next(hedge=False)
        while running and winner is None:
            timeout = delay if next_up < len(targets) else None
            done, _ = await asyncio.wait(running, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if not done:  # the newest model is slower than its hedge delay: add the next one
                delay = start_next(hedge=True)
                continue
            for task in sorted(done, key=running.__getitem__):
                position = running.pop(task)
                outcomes[position] = task.result()
            succeeded = [i for i, outcome in enumerate(outcomes) if outcome is not None and outcome.ok]
            if succeeded:
                winner = min(succeeded)  # several in one turn of the loop (a hedge race): the one listed first
            elif next_up < len(targets):
                delay = start_next(hedge=False)  # a model failed: fail over at once, no backoff
        if winner is None:
            # Every model failed: those that failed over instead of retrying get their retries now, one at a time.
            for position in second_chances(outcomes):
                target = targets[position]
                task = asyncio.create_task(call(target, never, resume=outcomes[position]), name=f"model:{target.id}")
                running[task] = started[task] = position
                outcomes[position] = await task
                del running[task]
                if outcomes[position].ok:  # type: ignore[union-attr]
                    winner = position
                    break
    finally:
        await cancel_and_wait(running)
    return StrategyResult(collect(started, outcomes, targets, began, "another model answered first"), winner)


def second_chances(outcomes: Sequence[Outcome | None]) -> list[int]:
    """The models that gave their retry up because another model could still answer, when none did.

    Asking for a fallback must never make a call less reliable than asking the first model alone:
    such a model's retries are picked up where they stopped (``resume``), in request order.
    """
    return [
        i
        for i, outcome in enumerate(outcomes)
        if outcome is not None and outcome.error is not None and outcome.error.not_retried == FAILED_OVER
    ]
