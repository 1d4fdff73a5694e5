"""What a strategy works with: a requested model resolved to its adapter, and how one call of it ended.

Kept apart from the dispatcher that makes the calls, so a reader of the strategies meets these types without the
cache and resilience code around every call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ai_gateway.adapter import Adapter
from ai_gateway.errors import Cancelled, GatewayError
from ai_gateway.types import Completion

OutcomeStatus = Literal["ok", "error", "cancelled", "skipped"]


def never() -> bool:
    return False


@dataclass(frozen=True, slots=True)
class ModelTarget:
    """A requested model resolved to the adapter that will serve it."""

    id: str  # as the caller wrote it: provider/model
    provider: str
    model: str  # the vendor's model name: everything after the first "/", as the adapter's canonical_model spells it
    adapter: Adapter
    breaker_key: str = ""  # the provider, or provider/model where models fail independently

    @property
    def circuit(self) -> str:
        return self.breaker_key or self.provider


@dataclass(frozen=True, slots=True)
class Outcome:
    target: ModelTarget
    status: OutcomeStatus
    completion: Completion | None = None
    error: GatewayError | None = None
    latency_s: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    hedge: bool = False
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def skipped(cls, target: ModelTarget, error: GatewayError | None = None) -> Outcome:
        return cls(target, "skipped", error=error)

    @classmethod
    def cancelled(cls, target: ModelTarget, started: float, now: float, reason: str) -> Outcome:
        return cls(target, "cancelled", error=Cancelled(reason, provider=target.provider), latency_s=now - started)
