"""Calling one model: the deadline, then the adapter; every failure becomes an Outcome.

This is the one place a provider call is made, so the cross-cutting layers
(cache, circuit breaker, retries) wrap :meth:`Dispatcher.call` and nothing
else. A call never raises except ``asyncio.CancelledError``: strategies read
outcomes, not exceptions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ai_gateway.adapter import Adapter
from ai_gateway.errors import Cancelled, DeadlineExceeded, EmptyResponse, GatewayError, InternalError
from ai_gateway.types import ChatRequest, Completion

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

# Where the shared HTTP client comes from: built on first use (see ai_gateway.http).
ClientSource = Callable[[], "httpx.AsyncClient"]
Clock = Callable[[], float]
OutcomeStatus = Literal["ok", "error", "cancelled", "skipped"]


@dataclass(frozen=True, slots=True)
class ModelTarget:
    """A requested model resolved to the adapter that will serve it."""

    id: str  # as the caller wrote it: provider/model
    provider: str
    model: str  # the vendor's model name: everything after the first "/"
    adapter: Adapter


@dataclass(frozen=True, slots=True)
class Outcome:
    target: ModelTarget
    status: OutcomeStatus
    completion: Completion | None = None
    error: GatewayError | None = None
    latency_s: float | None = None
    finished_at: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def skipped(cls, target: ModelTarget, error: GatewayError | None = None) -> Outcome:
        return cls(target, "skipped", error=error)

    @classmethod
    def cancelled(cls, target: ModelTarget, started: float, now: float, reason: str) -> Outcome:
        return cls(target, "cancelled", error=Cancelled(reason, provider=target.provider), latency_s=now - started)


class Deadline:
    """One wall-clock budget for a whole tool call, spent by every model it tries."""

    __slots__ = ("_clock", "expires_at", "total_s")

    def __init__(self, total_s: float, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self.total_s = total_s
        self.expires_at = clock() + total_s

    def remaining(self) -> float:
        return self.expires_at - self._clock()


class Dispatcher:
    def __init__(self, client: ClientSource, clock: Clock = time.perf_counter) -> None:
        self.client = client
        self.clock = clock

    async def call(self, target: ModelTarget, request: ChatRequest, deadline: Deadline) -> Outcome:
        started = self.clock()
        remaining = deadline.remaining()
        if remaining <= 0:
            error = DeadlineExceeded(f"not started: the {deadline.total_s:g}s deadline was reached")
            return Outcome.skipped(target, error)
        try:
            async with asyncio.timeout(remaining):
                completion = await target.adapter.complete(self.client(), request, target.model)
        except TimeoutError:
            error = DeadlineExceeded(
                f"no answer within the call's {deadline.total_s:g}s deadline", provider=target.provider
            )
            return self._failed(target, error, started)
        except GatewayError as exc:
            return self._failed(target, exc, started)
        except Exception as exc:
            # An adapter bug: report its type, never its traceback or arguments.
            log.error("adapter %s raised %s", target.provider, type(exc).__name__)
            error = InternalError(f"adapter error ({type(exc).__name__})", provider=target.provider)
            return self._failed(target, error, started)
        now = self.clock()
        if not completion.text.strip():
            reason = completion.raw_finish_reason or str(completion.finish_reason)
            error = EmptyResponse(f"the model returned no text (finish reason: {reason})", provider=target.provider)
            return Outcome(target, "error", error=error, latency_s=now - started, finished_at=now)
        return Outcome(target, "ok", completion=completion, latency_s=now - started, finished_at=now)

    def _failed(self, target: ModelTarget, error: GatewayError, started: float) -> Outcome:
        now = self.clock()
        log.info("model %s failed: %s", target.id, error.code)
        return Outcome(target, "error", error=error, latency_s=now - started, finished_at=now)
