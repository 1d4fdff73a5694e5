"""Fan-out strategies: how the answers of several models become one result.

Each strategy is one small module of plain asyncio that reads top to bottom. It
receives the resolved targets and a ``call`` function that runs one model and
returns its :class:`~ai_gateway.outcome.Outcome` (never raising, except when
cancelled). Whatever a strategy starts, it cancels and awaits before it
returns, so nothing runs after the tool has answered.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from ai_gateway.outcome import ModelTarget
from ai_gateway.strategies.base import CallModel, HedgeDelay, StrategyResult
from ai_gateway.strategies.consensus import consensus
from ai_gateway.strategies.fastest import fastest
from ai_gateway.strategies.first_available import first_available

Strategy = Callable[[Sequence[ModelTarget], CallModel, HedgeDelay], Awaitable[StrategyResult]]

STRATEGIES: dict[str, Strategy] = {
    "first_available": first_available,
    "fastest": fastest,
    "consensus": consensus,
}

__all__ = ["STRATEGIES", "CallModel", "HedgeDelay", "Strategy", "StrategyResult"]
