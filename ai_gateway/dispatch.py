"""Calling one model: every resilience layer around every attempt; failures become Outcomes.

For one model the path is::

    deadline check → retries( breaker gate → concurrency slot → attempt timeout → adapter )

Each attempt gets ``min(attempt_timeout_s, time left)``, so a provider that
trickles bytes is still cut off by the call's one deadline. Every attempt's
outcome is counted by the breaker and the health board; cancellations count
for nothing. A call never raises: it runs as a leaf task of its strategy, and
even its cancellation comes back as an Outcome.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from ai_gateway.cache.store import LEASE_TTL_S, UNSHARED, CachePolicy, PeerFailure, ResponseCache
from ai_gateway.errors import (
    PROVIDER_ERRORS,
    AuthError,
    CacheMiss,
    Cancelled,
    CircuitOpen,
    ConnectFailed,
    DeadlineExceeded,
    EmptyResponse,
    ErrorCode,
    GatewayError,
    InternalError,
    LoadShed,
    NotFound,
    ProviderTimeout,
    QuotaExhausted,
    RateLimited,
    UnusableAnswer,
)
from ai_gateway.outcome import ModelTarget, Outcome, OutcomeStatus, never
from ai_gateway.resilience.breaker import Breaker, BreakerBoard, Result
from ai_gateway.resilience.budget import RetryBudget
from ai_gateway.resilience.clock import SYSTEM_CLOCK, Clock, Deadline
from ai_gateway.resilience.health import HealthBoard
from ai_gateway.resilience.retry import CANCELLED_IN_BACKOFF, NO_TIME_LEFT, RetryPolicy, call_with_retries
from ai_gateway.resilience.shedding import ConcurrencyLimiter
from ai_gateway.secrets import redact_cut, redact_known
from ai_gateway.types import ChatRequest, Completion, FinishReason

if TYPE_CHECKING:
    import httpx

    from ai_gateway.settings import Settings

log = logging.getLogger(__name__)

# Where the shared HTTP client comes from: built on first use (see ai_gateway.http).
ClientSource = Callable[[], "httpx.AsyncClient"]


DEFAULT_POLICY = CachePolicy()


def caller_specific(error: GatewayError) -> bool:
    """Failures that say something about this caller (its deadline, its cancellation, this gateway's
    load), not about the provider: never shared with callers waiting for the same answer. Nor is a retryable
    error this caller did not retry for reasons of its own (it could fail over, its deadline was near): a caller
    waiting for it, with a single model or more time, makes the call itself and retries."""
    return isinstance(error, DeadlineExceeded | Cancelled | LoadShed) or error.not_retried_for_caller


def process_specific(error: GatewayError) -> bool:
    """Failures that say something about this gateway process: its circuit, its credentials and account (a wrong
    key, an exhausted quota, its rate limits, a model its key may not use), its network and its own code. Callers
    in this process share them (same key, same circuit); another process, which may hold another key or sit on
    another network, is not told them: it makes the call itself."""
    return caller_specific(error) or isinstance(
        error, CircuitOpen | AuthError | QuotaExhausted | RateLimited | NotFound | ConnectFailed | InternalError
    )


def _trips(error: GatewayError, target: ModelTarget) -> bool:
    """Whether the error counts against the target's circuit. A rate limit is a model's (OpenAI's and Gemini's
    limits are per model): on a circuit for the whole provider it would refuse the provider's other models, whose
    limits are untouched. It counts where the circuit is the model's own."""
    if isinstance(error, RateLimited) and target.circuit == target.provider:
        return False
    return error.trips_breaker


@dataclass
class Resilience:
    """The long-lived state every call shares: passed in, never global."""

    policy: RetryPolicy
    breakers: BreakerBoard
    limiter: ConcurrencyLimiter
    health: HealthBoard
    attempt_timeout_s: float
    slow_call_s: float | None
    budget_settings: tuple[float, int, float]  # ratio, floor, window
    clock: Clock = SYSTEM_CLOCK
    budgets: dict[str, RetryBudget] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock = SYSTEM_CLOCK) -> Resilience:
        return cls(
            policy=RetryPolicy(
                max_attempts=settings.max_attempts,
                backoff_base_s=settings.backoff_base_s,
                backoff_max_s=settings.backoff_max_s,
                retry_after_cap_s=settings.retry_after_cap_s,
                min_attempt_s=settings.min_attempt_s,
            ),
            breakers=BreakerBoard(
                fail_max=settings.breaker_fail_max,
                reset_s=settings.breaker_reset_s,
                half_open_calls=settings.breaker_half_open_calls,
                clock=clock,
            ),
            limiter=ConcurrencyLimiter(
                settings.max_concurrency, settings.max_concurrency_per_provider, settings.queue_wait_s
            ),
            health=HealthBoard(),
            attempt_timeout_s=settings.attempt_timeout_s,
            slow_call_s=settings.slow_call_s,
            budget_settings=(settings.retry_budget_ratio, settings.retry_budget_floor, settings.retry_budget_window_s),
            clock=clock,
        )

    def budget(self, provider: str) -> RetryBudget:
        budget = self.budgets.get(provider)
        if budget is None:
            ratio, floor, window = self.budget_settings
            budget = self.budgets[provider] = RetryBudget(ratio, floor, window, self.clock)
        return budget


class Dispatcher:
    def __init__(
        self,
        client: ClientSource,
        resilience: Resilience,
        clock: Callable[[], float] = time.perf_counter,
        cache: ResponseCache | None = None,
        secrets: Callable[[], tuple[str, ...]] = tuple,
    ) -> None:
        self.client = client
        self.resilience = resilience
        self.clock = clock
        self.cache = cache
        # Every credential the gateway knows (registry.secrets): whatever a provider says is scrubbed of them here,
        # before the cache, another process or the caller can see it, whichever provider's key it echoes.
        self.secrets = secrets

    def available(self, target: ModelTarget) -> bool:
        """False while the target's circuit refuses calls (open, or half-open with its trial calls all in flight):
        not a candidate to fail over to, so a flaky model before it keeps its retries."""
        return self.resilience.breakers.get(target.circuit).admits()

    async def from_cache(
        self, targets: Sequence[ModelTarget], request: ChatRequest, policy: CachePolicy
    ) -> dict[int, Outcome]:
        """The targets (by position) whose answer is in the cache, read together and claiming nothing.

        For strategies that let any model answer (fastest, consensus): a cached answer decides before any
        provider is asked, so no request goes out only to be cancelled (and billed), and the outcome
        does not hang on which hits this process happened to hold locally and which came from Redis.
        """
        store = self.cache
        if store is None or not policy.reads:
            return {}
        started = self.clock()
        keys = {}
        for position, target in enumerate(targets):
            if (key := _key(store, target, request, policy)) is not None:
                keys[position] = key
        if not keys:
            return {}
        found = await asyncio.gather(*(store.peek(key) for key in keys.values()))
        return {
            position: self._cached(targets[position], completion, started, hedge=False)
            for position, completion in zip(keys, found, strict=True)
            if completion is not None
        }

    def bind(self, request: ChatRequest, deadline: Deadline, policy: CachePolicy = DEFAULT_POLICY) -> BoundCall:
        """What a strategy calls: one request, one deadline and one cache policy, any model."""
        return BoundCall(self, request, deadline, policy)

    async def call(
        self,
        target: ModelTarget,
        request: ChatRequest,
        deadline: Deadline,
        can_fail_over: Callable[[], bool] = never,
        *,
        hedge: bool = False,
        policy: CachePolicy = DEFAULT_POLICY,
        raise_cancel: bool = False,
        resume: Outcome | None = None,
    ) -> Outcome:
        """One model, to an Outcome: from the cache when it may, else from the provider.

        ``resume`` is this model's earlier outcome when it gave its retry up to fail over and nobody answered:
        the call picks up its retries where they stopped (the cache is asked again first).

        Runs as a task of its own: when a strategy cancels it, it answers with a
        ``cancelled`` Outcome that still says how many attempts were sent. With
        ``raise_cancel`` (a strategy calling it in its own task) the cancellation,
        which is then the caller's, is raised instead, after the same clean-up:
        swallowed, it would be lost, and a replacement CancelledError is not one
        that anyio's cancel scopes recognise as theirs.
        """
        store = self.cache
        key = None
        if store is not None:
            key = _key(store, target, request, policy)
        started = self.clock()
        if store is None or key is None:
            if policy.mode == "only":
                why = "a sampled request (temperature > 0) is cached only with a sample index"
                error = CacheMiss(f"cache only: {why}; no provider was called", provider=target.provider)
                return Outcome(target, "error", error=error, hedge=hedge)
            return await self._call_provider(
                target, request, deadline, can_fail_over, hedge=hedge, raise_cancel=raise_cancel, resume=resume
            )

        async def lead() -> Outcome:
            """Only the first caller in this process reads, claims the call across processes, and calls."""
            assert store is not None and key is not None
            # An open circuit refuses at once: nothing to claim, and no other process to make wait for it.
            claim = policy.writes and self.available(target)
            # A replay (cache only) must not turn a slow Redis reply into a miss: it waits for Redis's verdict.
            hit, lease = await store.lookup(
                key,
                read=policy.reads,
                claim=claim,
                lease_ttl_s=_lease_ttl(deadline),
                patient=policy.mode == "only",
                together=policy.together,
            )
            if hit is not None:
                return self._cached(target, hit, started, hedge)
            if policy.mode == "only":
                error = CacheMiss("cache only: not in the cache; no provider was called", provider=target.provider)
                return Outcome(target, "error", error=error, hedge=hedge)
            if claim and lease is None:  # another gateway process is making this call: wait for it
                replacing = policy.mode == "refresh"
                peer = await store.await_peer(key, deadline.remaining(), replacing=replacing)
                # The holder gave up: whoever claims the call now makes it, and the others wait for that one (all
                # calling at once, they paid once for each process that had waited).
                while peer is None and deadline.remaining() > 0:
                    _, lease = await store.lookup(key, read=False, claim=True, lease_ttl_s=_lease_ttl(deadline))
                    if lease is not None:
                        break
                    peer = await store.await_peer(key, deadline.remaining(), replacing=replacing)
                if peer is not None and peer != UNSHARED:
                    return self._from_peer(target, peer, started, hedge)
                # UNSHARED: its answer could be neither stored nor handed over; every waiter calls at once, unleased
            outcome: Outcome | None = None  # stays None if this caller is cancelled (raise_cancel)
            stop_renewing = store.keep_lease(key, lease) if lease is not None else None
            try:
                outcome = await self._call_provider(
                    target, request, deadline, can_fail_over, hedge=hedge, raise_cancel=raise_cancel, resume=resume
                )
                return outcome
            finally:
                if stop_renewing is not None:
                    stop_renewing()
                if policy.writes:  # store the answer, or release the lease, in any case
                    _store_later(store, key, lease, outcome, refresh=policy.mode == "refresh")

        def not_for_others(outcome: Outcome) -> bool:
            return outcome.error is not None and caller_specific(outcome.error)

        try:
            # A caller sharing another's call still keeps its own deadline.
            async with asyncio.timeout(max(deadline.remaining(), 0.0) + 0.05):
                outcome, led = await store.shared(key, policy.mode, lead, gone=not_for_others)
        except TimeoutError:
            late = DeadlineExceeded(
                f"no answer within the call's {deadline.total_s:g}s deadline", provider=target.provider
            )
            return self._ended(target, "error", started, hedge, error=late)
        except asyncio.CancelledError:
            if raise_cancel:
                raise
            return self._ended(
                target, "cancelled", started, hedge, error=Cancelled("cancelled", provider=target.provider)
            )
        if led:
            return outcome
        # Waited for another caller's answer (or error): its attempts were that caller's, not this one's;
        # an answer cost this caller nothing, like a cache hit, and so did an empty one.
        now = self.clock()
        return replace(outcome, error=_unbilled(outcome.error), attempts=0, cached=outcome.ok, latency_s=now - started,
                       finished_at=now, hedge=hedge)  # fmt: skip

    def _ended(
        self,
        target: ModelTarget,
        status: OutcomeStatus,
        started: float,
        hedge: bool,
        *,
        completion: Completion | None = None,
        error: GatewayError | None = None,
        attempts: int = 0,
        cached: bool = False,
    ) -> Outcome:
        """How a call that began at ``started`` ends now."""
        now = self.clock()
        return Outcome(target, status, completion=completion, error=error, latency_s=now - started, finished_at=now,
                       attempts=attempts, hedge=hedge, cached=cached)  # fmt: skip

    def _cached(self, target: ModelTarget, completion: Completion, started: float, hedge: bool) -> Outcome:
        return self._ended(target, "ok", started, hedge, completion=completion, cached=True)

    def _from_peer(self, target: ModelTarget, peer: Completion | PeerFailure, started: float, hedge: bool) -> Outcome:
        """The answer (or error) another gateway process got for the same call."""
        if isinstance(peer, Completion):
            return self._cached(target, peer, started, hedge)
        message = f"{peer.message} (from another gateway process)"
        kind = PROVIDER_ERRORS.get(peer.code)
        error = (kind or GatewayError)(
            message, provider=target.provider, status=peer.status, retry_after_s=peer.retry_after_s
        )
        if kind is None:  # no provider error has this code (a plugin's own error class): the code is kept
            error.code = ErrorCode(peer.code)  # type: ignore[misc]  (validated by await_peer)
        elif isinstance(error, UnusableAnswer) and peer.finish_reason is not None:
            # Why it was no answer, as its maker reports it; not its usage: the provider billed that caller once.
            error.completion = Completion("", FinishReason(peer.finish_reason))
        return self._ended(target, "error", started, hedge, error=error)

    async def _call_provider(
        self,
        target: ModelTarget,
        request: ChatRequest,
        deadline: Deadline,
        can_fail_over: Callable[[], bool] = never,
        *,
        hedge: bool = False,
        raise_cancel: bool = False,
        resume: Outcome | None = None,
    ) -> Outcome:
        """One model from its provider, through every resilience layer."""
        r = self.resilience
        started = self.clock()
        breaker = r.breakers.get(target.circuit)
        budget = r.budget(target.provider)
        attempts = 0
        last_error: GatewayError | None = None
        sending = False  # an attempt's request is out
        if resume is not None and resume.error is not None:
            # The model's time and attempts so far are part of it; a closed circuit or a short deadline now is
            # said on its earlier error, by the retry's own checks.
            if resume.finished_at is not None and resume.latency_s is not None:
                started = resume.finished_at - resume.latency_s
            attempts, last_error = resume.attempts, resume.error
        elif deadline.remaining() < r.policy.min_attempt_s:
            error = DeadlineExceeded(f"not started: too little of the {deadline.total_s:g}s deadline left")
            return Outcome(target, "skipped", error=error, hedge=hedge)
        elif breaker.state == "open":  # refuse in microseconds, before any retry machinery
            return self._ended(target, "error", started, hedge, error=breaker.refusal())

        def give_up(reason: str, error: GatewayError, *, for_caller: bool = False) -> GatewayError:
            # A refusal before anything was sent must not hide the real failure that came before it.
            if last_error is None:
                return error
            last_error.not_retried = reason
            last_error.not_retried_for_caller = for_caller
            return last_error

        async def attempt() -> Completion:
            nonlocal attempts, last_error, sending
            left = deadline.remaining()
            if left < r.policy.min_attempt_s:
                late = DeadlineExceeded(f"too little of the {deadline.total_s:g}s deadline left for another attempt")
                raise give_up(NO_TIME_LEFT, late, for_caller=True)
            try:
                trial = breaker.acquire()
            except CircuitOpen as refused:
                raise give_up("circuit opened", refused) from None
            try:
                await r.limiter.acquire(target.provider, left)
            except LoadShed as shed:
                breaker.release(trial, "neutral")
                raise give_up("the gateway's concurrency limit was reached", shed) from None
            attempts += 1  # from here on a request really goes to the provider
            if attempts == 1:
                budget.record_request()
            sending = True
            try:
                return await self._attempt(target, request, deadline, breaker, trial)
            except GatewayError as exc:
                last_error = exc
                raise
            finally:
                sending = False
                r.limiter.release(target.provider)

        try:
            completion = await call_with_retries(
                attempt,
                policy=r.policy,
                deadline=deadline,
                budget=budget,
                can_fail_over=can_fail_over,
                clock=r.clock,
                resume=(last_error, attempts) if last_error is not None else None,
            )
        except GatewayError as exc:
            log.info("model %s failed after %d attempt(s): %s", target.id, attempts, exc.code)
            return self._ended(target, "error", started, hedge, error=exc, attempts=attempts)
        except asyncio.CancelledError:
            if raise_cancel:
                raise
            # This is a leaf task its strategy cancelled and awaits: report, don't propagate.
            if last_error is not None and not sending:
                # Stopped between attempts: no request was cut off, and the error it was retrying is the news.
                last_error.not_retried, last_error.not_retried_for_caller = CANCELLED_IN_BACKOFF, True
                return self._ended(target, "error", started, hedge, error=last_error, attempts=attempts)
            cancelled = Cancelled("cancelled", provider=target.provider)
            return self._ended(target, "cancelled", started, hedge, error=cancelled, attempts=attempts)
        return self._ended(target, "ok", started, hedge, completion=completion, attempts=attempts)

    async def _attempt(
        self, target: ModelTarget, request: ChatRequest, deadline: Deadline, breaker: Breaker, trial: bool
    ) -> Completion:
        """One request, inside a concurrency slot; its outcome is counted by the breaker and the health board."""
        r = self.resilience
        result: Result = "neutral"
        error: GatewayError | None = None
        slow: ProviderTimeout | None = None  # a deadline cut that still says the provider is failing
        started = self.clock()
        try:
            budget_s = min(r.attempt_timeout_s, deadline.remaining())
            try:
                async with asyncio.timeout(budget_s):
                    completion = _sanitised(await target.adapter.complete(self.client(), request, target.model),
                                            self.secrets())  # fmt: skip
            except TimeoutError:
                if deadline.remaining() <= 0:
                    slow = self._slow_call(target, self.clock() - started)
                    raise DeadlineExceeded(
                        f"no answer within the call's {deadline.total_s:g}s deadline", provider=target.provider
                    ) from None
                raise ProviderTimeout(
                    f"no answer within the {budget_s:g}s attempt timeout", provider=target.provider
                ) from None
            if not completion.text.strip():
                reason = completion.raw_finish_reason or str(completion.finish_reason)
                message = f"the model returned no text (finish reason: {reason})"
                raise EmptyResponse(message, provider=target.provider, completion=completion)
            result = "success"
            r.health.record(target.provider, target.id, "ok", self.clock() - started)
            return completion
        except GatewayError as exc:
            _scrub(exc, self.secrets())
            error = slow or exc
            result = "failure" if slow or _trips(exc, target) else "neutral"
            r.health.record(target.provider, target.id, str(exc.code), None)
            raise
        except Exception as exc:
            # An adapter bug: report its type, never its traceback or arguments.
            log.error("adapter %s raised %s", target.provider, type(exc).__name__)
            error = InternalError(f"adapter error ({type(exc).__name__})", provider=target.provider)
            r.health.record(target.provider, target.id, str(error.code), None)
            raise error from None
        except asyncio.CancelledError:
            r.health.record_cancelled(target.id, self.clock() - started)
            raise
        finally:
            breaker.release(trial, result, error)

    def _slow_call(self, target: ModelTarget, elapsed_s: float) -> ProviderTimeout | None:
        """Whether an attempt the caller's deadline cut counts against the model's circuit.

        A cut is the caller's, so on its own it says nothing about the provider; but a provider that takes requests
        and never answers is only ever cut by deadlines when callers' deadlines are shorter than the attempt
        timeout, and its circuit would never open. So a cut counts once the attempt has waited ``slow_call_s``,
        unless the model's own recent answers (p99) took that long: then the caller's deadline was short for this
        model, and one caller's short deadlines must not open a circuit every caller shares.
        """
        threshold = self.resilience.slow_call_s
        if threshold is None or elapsed_s < threshold:
            return None
        usual = self.resilience.health.answer_latency_percentile(target.id, 99)
        if usual is not None and elapsed_s <= usual:
            return None
        return ProviderTimeout(
            f"no answer after {elapsed_s:.1f}s (slow call: over the {threshold:g}s slow_call_s"
            + (f" and the model's p99 of {usual:.1f}s" if usual is not None else "")
            + "); the caller's deadline cut it",
            provider=target.provider,
        )


def _sanitised(completion: Completion, secrets: tuple[str, ...]) -> Completion:
    """An adapter's completion as the gateway may pass it on: the vendor's own fields (its model name, finish
    reason, response id) dropped unless they are text, and every known secret taken out of each text. A provider
    that echoes the request's headers (a debugging proxy, a misconfigured host) would otherwise hand a key to the
    caller, the cache and every process reading it. Only known values go: a key-shaped example in an answer is
    the model's content."""
    changes: dict[str, str | None] = {}
    for name in ("text", "model", "raw_finish_reason", "response_id"):
        value = getattr(completion, name)
        if value is None or (name == "text" and not isinstance(value, str)):
            continue  # a text that is no text is the adapter's bug, reported as such further on
        clean = redact_known(value, secrets) if isinstance(value, str) else None
        if clean != value:
            changes[name] = clean
    return replace(completion, **changes) if changes else completion  # type: ignore[arg-type]


def _scrub(error: GatewayError, secrets: tuple[str, ...]) -> None:
    """An error's message, and an unusable answer's completion, scrubbed of every known secret: the adapter took
    out its own provider's credentials, but a vendor may echo another's (a shared proxy's error)."""
    error.message = redact_cut(error.message, secrets)
    if isinstance(error, UnusableAnswer) and error.completion is not None:
        error.completion = _sanitised(error.completion, secrets)


def _store_later(store: ResponseCache, key: str, lease: str | None, outcome: Outcome | None, *, refresh: bool) -> None:
    """After a call this process led: store its answer and release its lease, or share its error with the
    processes waiting on the lease. ``outcome`` None: the caller was cancelled."""
    # Only what the provider said about the request is shared with other processes; this caller's own deadline
    # or cancellation, and this process's circuit, key or network, are not their failure: they make the call
    # themselves.
    failure = None
    error = outcome.error if outcome is not None and outcome.status == "error" else None
    if error is not None and not process_specific(error):
        sent = error.completion if isinstance(error, UnusableAnswer) else None
        why = None if sent is None else str(sent.finish_reason)  # its usage stays the holder's
        failure = PeerFailure(str(error.code), error.message, error.status, error.retry_after_s, why)
    stored = outcome.completion if outcome is not None and outcome.ok else None
    # A refresh that got an answer it may not store, or an error about the call, removes the entry it was to
    # replace; one that ended for reasons of its own (cancelled, its deadline, load) learnt nothing, and a late
    # removal could hit another process's fresh answer.
    learnt = stored is not None or failure is not None
    store.store_later(key, stored, lease, failure, replace=refresh and learnt)


def _lease_ttl(deadline: Deadline) -> float:
    """A short lease (renewed while the call runs), never longer than the call may take."""
    return min(max(deadline.remaining(), 0.1), LEASE_TTL_S)


def _unbilled(error: GatewayError | None) -> GatewayError | None:
    """A billed unusable answer (empty, filtered) as a caller that waited for it sees it: the same error and finish
    reason, without the usage the provider billed once, to the caller that made the call (counted for each, it was
    counted N times)."""
    if not isinstance(error, UnusableAnswer) or error.completion is None or error.completion.usage is None:
        return error
    unbilled = copy.copy(error)
    unbilled.completion = replace(error.completion, usage=None)
    return unbilled


def _key(store: ResponseCache, target: ModelTarget, request: ChatRequest, policy: CachePolicy) -> str | None:
    adapter = target.adapter
    return store.key_for(
        target.provider, adapter.config.base_url, target.model, request, policy, adapter.cache_options()
    )


@dataclass(frozen=True, slots=True)
class BoundCall:
    dispatcher: Dispatcher
    request: ChatRequest
    deadline: Deadline
    policy: CachePolicy = DEFAULT_POLICY

    async def __call__(
        self,
        target: ModelTarget,
        can_fail_over: Callable[[], bool] = never,
        *,
        hedge: bool = False,
        raise_cancel: bool = False,
        resume: Outcome | None = None,
    ) -> Outcome:
        return await self.dispatcher.call(
            target,
            self.request,
            self.deadline,
            can_fail_over,
            hedge=hedge,
            policy=self.policy,
            raise_cancel=raise_cancel,
            resume=resume,
        )

    def available(self, target: ModelTarget) -> bool:
        return self.dispatcher.available(target)

    async def from_cache(self, targets: Sequence[ModelTarget]) -> dict[int, Outcome]:
        return await self.dispatcher.from_cache(targets, self.request, self.policy)
