"""What every strategy shares: the call signature, the result, and task clean-up."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from ai_gateway.errors import Cancelled, ErrorCode
from ai_gateway.outcome import ModelTarget, Outcome
from ai_gateway.strategies.voting import Tally


class CallModel(Protocol):
    """Runs one model to an Outcome; ``can_fail_over`` says whether another candidate could still answer."""

    async def __call__(
        self,
        target: ModelTarget,
        can_fail_over: Callable[[], bool],
        *,
        hedge: bool = False,
        raise_cancel: bool = False,
        resume: Outcome | None = None,
    ) -> Outcome: ...

    def available(self, target: ModelTarget) -> bool:
        """False when the target would be refused at once (its circuit is open)."""
        ...

    async def from_cache(self, targets: Sequence[ModelTarget]) -> dict[int, Outcome]:
        """The targets (by position) answered by the cache, read together; nothing is claimed or called."""
        ...


# Seconds to wait for a model before hedging with the next one; None means never hedge.
HedgeDelay = Callable[[ModelTarget], float | None]


def no_hedge(target: ModelTarget) -> float | None:
    return None


@dataclass(frozen=True, slots=True)
class StrategyResult:
    outcomes: list[Outcome]  # one per target, in request order
    winner: int | None  # index of the chosen outcome, if any
    tally: Tally | None = None  # consensus only


async def cancel_and_wait(tasks: Collection[asyncio.Task[Outcome]]) -> None:
    """Cancel ``tasks`` and wait until each has really finished (its connection closed).

    Waiting is what guarantees that no request outlives the tool call. If the
    caller is itself cancelled while waiting, the tasks are already cancelled;
    they are still awaited so the cancellation does not leave them orphaned.
    """
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    try:
        await asyncio.wait(tasks)
    except asyncio.CancelledError:
        await asyncio.wait(tasks)
        raise


def replay_miss(outcome: Outcome) -> bool:
    """A replayed model (``cache: only``) with no cached answer: the run being replayed never received one,
    usually because it cancelled that model. fastest and consensus hold it back as if still outstanding,
    since in a replay every cached answer arrives at once, and cancel it if the others decide without it."""
    return outcome.error is not None and outcome.error.code == ErrorCode.CACHE_MISS


def release_held(
    held: dict[int, Outcome],
    outcomes: list[Outcome | None],
    targets: Sequence[ModelTarget],
    started: float,
    reason: str,
    *,
    decided: bool,
) -> None:
    """The held-back replay misses: cancelled (for ``reason``) when the call was decided without them."""
    now = time.perf_counter()
    for position, outcome in held.items():
        outcomes[position] = Outcome.cancelled(targets[position], started, now, reason) if decided else outcome


def start_all(
    targets: Sequence[ModelTarget],
    call: CallModel,
    can_fail_over: Callable[[], bool],
    answered: Collection[int] = (),
) -> dict[asyncio.Task[Outcome], int]:
    """One task per target not ``answered`` already (by the cache), keyed back to its position in the request."""
    return {
        asyncio.create_task(call(target, can_fail_over), name=f"model:{target.id}"): i
        for i, target in enumerate(targets)
        if i not in answered
    }


def not_started(
    outcomes: list[Outcome | None], targets: Sequence[ModelTarget], started: float, reason: str
) -> list[Outcome]:
    """The call was decided by cached answers alone: the others are reported as a race or a vote reports
    the models it cancelled, having sent nothing."""
    now = time.perf_counter()
    return [o if o is not None else Outcome.cancelled(targets[i], started, now, reason) for i, o in enumerate(outcomes)]


def collect(
    tasks: dict[asyncio.Task[Outcome], int],
    outcomes: list[Outcome | None],
    targets: Sequence[ModelTarget],
    started: float,
    reason: str,
) -> list[Outcome]:
    """Every target's outcome once its tasks are done; cancelled ones say why they were cancelled.

    A cancelled call reports itself (with the attempts it had sent); a task
    cancelled before it ever ran sent nothing. Targets never started are skipped.
    """
    now = time.perf_counter()
    for task, position in tasks.items():
        if outcomes[position] is not None:
            continue
        if task.cancelled():
            outcomes[position] = Outcome.cancelled(targets[position], started, now, reason)
        else:
            outcome = task.result()
            if outcome.status == "cancelled":
                outcome = replace(outcome, error=Cancelled(reason, provider=outcome.target.provider))
            outcomes[position] = outcome
    return [o if o is not None else Outcome.skipped(targets[i]) for i, o in enumerate(outcomes)]
