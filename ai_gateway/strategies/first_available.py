"""first_available: try the models in order; the first success answers."""

from __future__ import annotations

from collections.abc import Sequence

from ai_gateway.dispatch import ModelTarget, Outcome
from ai_gateway.strategies.base import CallModel, StrategyResult


async def first_available(targets: Sequence[ModelTarget], call: CallModel) -> StrategyResult:
    outcomes: list[Outcome] = []
    for i, target in enumerate(targets):
        outcome = await call(target)
        outcomes.append(outcome)
        if outcome.ok:
            # Models after the winner were never needed, so never called.
            outcomes.extend(Outcome.skipped(later) for later in targets[i + 1 :])
            return StrategyResult(outcomes, winner=i)
    return StrategyResult(outcomes, winner=None)
