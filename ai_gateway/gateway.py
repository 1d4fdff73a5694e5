"""The request path behind every entry point: validate → resolve models → run the strategy.

The MCP tool, the CLI and the benchmarks all reach providers through
:meth:`Gateway.query`. Nothing here is vendor-specific: adapters come from the
registry by provider name and are called through the dispatcher.
"""

from __future__ import annotations

import logging
import math
import time
import unicodedata
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Literal, cast

from ai_gateway.adapter import Adapter
from ai_gateway.cache.key import answer_prefix
from ai_gateway.cache.memory import MemoryBackend
from ai_gateway.cache.store import Backend, CacheMode, CachePolicy, ResponseCache
from ai_gateway.dispatch import ClientSource, Dispatcher, Resilience
from ai_gateway.errors import InvalidArgument, UnusableAnswer
from ai_gateway.http import SharedClient
from ai_gateway.outcome import ModelTarget, Outcome
from ai_gateway.price_memo import PriceMemo
from ai_gateway.pricing import USD_DIGITS, Pricing
from ai_gateway.progress import ProgressSink, QueryProgress
from ai_gateway.registry import Registry, RegistryError
from ai_gateway.resilience.clock import Deadline
from ai_gateway.schemas import (
    BreakerInfo,
    CacheStatusInfo,
    Catalogue,
    ChatMessage,
    ConsensusInfo,
    ErrorInfo,
    ModelInfo,
    ModelResult,
    ProviderStatusInfo,
    QueryResult,
    RetryBudgetInfo,
    StatusReport,
    StrategyName,
    UsageInfo,
    VoteGroup,
)
from ai_gateway.secrets import redact, redact_cut, redact_url
from ai_gateway.settings import Settings
from ai_gateway.strategies import STRATEGIES, HedgeDelay, StrategyResult
from ai_gateway.strategies.base import no_hedge
from ai_gateway.types import ChatRequest, Message, broken_character
from ai_gateway.warmup import WarmUp

if TYPE_CHECKING:  # imported when a Redis URL is set: a start without one does not pay for redis-py
    from ai_gateway.cache.redis_backend import RedisBackend

log = logging.getLogger(__name__)

HedgeChoice = float | Literal["auto", "off"] | None
AUTO_HEDGE_FALLBACK_S = 1.0  # hedge_after_s="auto" before a model has enough latency samples


class Gateway:
    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        client: ClientSource,
        resilience: Resilience | None = None,
        warm: WarmUp | None = None,
    ) -> None:
        self.settings = settings
        self.warm = warm  # the heavy imports, done off the loop; the first query waits for them
        self.registry = registry
        self.resilience = resilience or Resilience.from_settings(settings)
        self.cache = build_cache(settings)
        self.dispatcher = Dispatcher(client, self.resilience, cache=self.cache, secrets=registry.secrets)
        memo = PriceMemo.default() if settings.price_memo else None
        self.pricing = Pricing(settings.model_prices, lambda provider: registry.spec(provider).price_source, memo)
        self._adapters: dict[str, Adapter] = {}

    # -- the request path ----------------------------------------------------------

    async def query(
        self,
        *,
        prompt: str | None = None,
        messages: Sequence[ChatMessage] | None = None,
        models: Sequence[str] | None = None,
        strategy: StrategyName = "first_available",
        system: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        timeout_s: float | None = None,
        hedge_after_s: HedgeChoice = None,
        cache: CacheMode = "use",
        sample: int | None = None,
        progress: ProgressSink | None = None,
    ) -> QueryResult:
        """Answer one query. Raises InvalidArgument (naming the field) before any provider is called.

        ``progress``, when given, receives the call's progress notifications (see :mod:`ai_gateway.progress`).
        """
        started = time.perf_counter()
        request = build_chat_request(prompt, messages, system, temperature, max_tokens)
        targets = self.resolve(models)
        self.check_temperature(targets, temperature)
        run = STRATEGIES.get(strategy)
        if run is None:
            raise InvalidArgument("strategy", f"must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
        hedge_delay = self._hedge_delay(strategy, hedge_after_s)
        budget_s = self.settings.clamp_timeout(timeout_s)

        if sample is not None and sample < 0:
            raise InvalidArgument("sample", "must be 0 or more (the index of a repeated sample)")
        policy = CachePolicy(cache, sample, together=len(targets) > 1)
        warm, need_http = self.warm, policy.mode != "only"  # a replay calls no provider
        if warm is not None and not warm.ready(http=need_http):
            await warm.wait(http=need_http)
        # The caller's budget starts now: the gateway's own start-up (the first call of a new process waits for
        # its imports) is not the models' time, and once ate a short timeout whole before any model started.
        deadline = Deadline(budget_s, self.resilience.clock)
        call = self.dispatcher.bind(request, deadline, policy)
        if progress is None:
            result = await run(targets, call, hedge_delay)
        else:
            async with QueryProgress(progress, targets, deadline, self.settings.progress_interval_s) as watcher:
                result = await run(targets, watcher.watch(call), hedge_delay)
        elapsed_s = time.perf_counter() - started
        return build_result(strategy, result, self.registry.secrets(), elapsed_s, self.pricing)

    def _hedge_delay(self, strategy: StrategyName, choice: HedgeChoice) -> HedgeDelay:
        """How long each model may run before the next one joins it (first_available only)."""
        if choice is not None and choice != "off" and strategy != "first_available":
            raise InvalidArgument("hedge_after_s", f"applies to first_available only; {strategy} already races")
        # NaN passes "<= 0" and, as a timer, broke the order of every timer of the event loop (later calls' hedges
        # and deadlines fired late, or not at all); infinity is "off" spelled another way.
        if isinstance(choice, int | float) and not (0 < choice < math.inf):
            raise InvalidArgument("hedge_after_s", "must be a positive number of seconds, 'auto' or 'off'")
        configured = self.settings.hedge_after_s
        if choice == "off" or (choice is None and configured is None) or strategy != "first_available":
            return no_hedge
        if choice == "auto":
            health, min_samples = self.resilience.health, self.settings.hedge_min_samples
            fallback = configured or AUTO_HEDGE_FALLBACK_S
            return lambda target: health.latency_percentile(target.id, 95, min_samples) or fallback
        fixed = float(choice if choice is not None else configured)  # type: ignore[arg-type]
        return lambda target: fixed

    async def aclose(self) -> None:
        """Flush pending cache writes and close the cache's connections."""
        await self.cache.aclose()

    def status(self) -> StatusReport:
        """Breakers, recent errors and latency, retry budgets, load and the cache: what gateway_status shows."""
        r = self.resilience
        health = r.health.snapshot()
        providers = sorted(set(health) | set(r.budgets) | set(r.limiter.in_flight))
        # An adapter scrubs only its own provider's key: a vendor echoing another provider's key (or a custom
        # host's header) kept it here, while query_models, redacting with every secret, hid it.
        secrets = self.registry.secrets()
        breakers = [
            BreakerInfo(
                name=b.name,
                state=b.state,
                failures=b.failures,
                seconds_to_probe=b.seconds_to_probe,
                trial_calls=b.trial_calls,
                last_error=_error_info(b.last_error, secrets) if b.last_error else None,
            )
            for b in r.breakers.snapshot()
        ]
        return StatusReport(
            providers=[
                ProviderStatusInfo(
                    provider=name,
                    **health.get(name, {}),
                    in_flight=r.limiter.in_flight.get(name, 0),
                    retry_budget=RetryBudgetInfo(**asdict(r.budgets[name].snapshot())) if name in r.budgets else None,
                )
                for name in providers
            ],
            breakers=breakers,
            open_circuits=[b.name for b in breakers if b.state == "open"],
            limits={"total": r.limiter.total, "per_provider": r.limiter.per_provider},
            cache=self.cache_status(),
        )

    def cache_status(self) -> CacheStatusInfo:
        """The cache's backend (for Redis: its redacted URL and health), embedded LRU size and counters."""
        backend = self.cache.backend
        if isinstance(backend, MemoryBackend):
            return CacheStatusInfo(
                backend=backend.name,
                memory_entries=len(backend),
                memory_bytes=backend.bytes,
                **asdict(self.cache.stats),  # the counters, under the same names
            )
        redis = cast("RedisBackend", backend)  # the only other backend build_cache makes
        near = redis.near
        return CacheStatusInfo(
            backend=redis.name,
            url=redis.url,  # RedisBackend keeps it redacted: never the password
            healthy=redis.healthy,
            failures=redis.failures,
            unsynced=redis.unsynced,
            near=near.live if near is not None and not near.refused else None,
            near_entries=len(near.entries) if near is not None else None,
            memory_entries=len(redis.fallback),  # Redis answers from the embedded LRU while failing
            memory_bytes=redis.fallback.bytes,
            **asdict(self.cache.stats),
        )

    def resolve(self, models: Sequence[str] | None) -> list[ModelTarget]:
        """Turn model ids into targets, or say exactly which id is wrong and why."""
        ids = list(models) if models else list(self.settings.default_models)
        # A wrong default is the server's setting, not the caller's argument: the error names what to fix.
        source = "models" if models else "AI_GATEWAY_DEFAULT_MODELS"
        if not ids:
            raise InvalidArgument(
                "models", "name at least one model as provider/model (or set AI_GATEWAY_DEFAULT_MODELS)"
            )
        if len(ids) > self.settings.max_models:
            raise InvalidArgument(
                "models", f"at most {self.settings.max_models} models per call (AI_GATEWAY_MAX_MODELS); got {len(ids)}"
            )
        targets: list[ModelTarget] = []
        seen: dict[str, int] = {}  # each model, in its adapter's canonical spelling -> where it was first named
        for i, model_id in enumerate(ids):
            field = f"{source}[{i}]"
            if model_id in ids[:i]:
                raise InvalidArgument(field, f"{model_id!r} is listed twice; each model may appear once")
            provider, model = _split_model_id(field, model_id)
            try:
                adapter = self._adapter(provider)
            except RegistryError as exc:
                raise InvalidArgument(field, f"{model_id!r}: {exc}") from None
            try:
                problem = adapter.validate_model(model)
                # Two spellings of one model (gemini/models/x and gemini/x): under consensus it voted twice, and
                # was paid for twice.
                canonical = adapter.canonical_model(model)
            except Exception as exc:  # a plugin's bug: refused by name, as a plugin that fails to load is
                raise InvalidArgument(field, self._broken(provider, model_id, exc)) from None
            if problem:
                raise InvalidArgument(field, f"{model_id!r}: {problem}")
            first = seen.setdefault(f"{provider}/{canonical}", i)
            if first != i:
                raise InvalidArgument(
                    field,
                    f"{model_id!r} is the same model as {source}[{first}] ({ids[first]!r}); each model may appear once",
                )
            scope = self.registry.spec(provider).breaker_scope
            circuit = model_id if scope == "model" else provider
            # The canonical name is what is sent, keyed in the cache and priced: both spellings share one entry.
            targets.append(ModelTarget(model_id, provider, canonical, adapter, circuit))
        return targets

    def check_temperature(self, targets: Sequence[ModelTarget], temperature: float | None) -> None:
        """Refuse a temperature a requested model's API does not accept, before any provider is called."""
        if temperature is None:
            return
        for target in targets:
            ceiling = target.adapter.max_temperature
            if temperature > ceiling:
                raise InvalidArgument(
                    "temperature", f"{target.id!r} accepts 0 to {ceiling:g}; got {temperature:g} (ask it separately)"
                )

    def _adapter(self, provider: str) -> Adapter:
        adapter = self._adapters.get(provider)
        if adapter is None:
            spec = self.registry.spec(provider)
            config = self.registry.config(provider)
            try:
                adapter = spec.adapter(config)
            except Exception as exc:  # a plugin's bug: an error naming it, not "Error calling tool"
                raise RegistryError(self._broken(provider, None, exc)) from None
            self._adapters[provider] = adapter
        return adapter

    def _broken(self, provider: str, model_id: str | None, exc: Exception) -> str:
        """What a caller is told of an adapter that raised where it must not; the log gets its (redacted) message."""
        where = "checking the model id" if model_id else "starting its adapter"
        log.warning(
            "provider %r raised %s while %s: %s", provider, type(exc).__name__, where,
            redact(str(exc), self.registry.secrets()),
        )  # fmt: skip
        told = f"provider {provider!r} failed while {where} ({type(exc).__name__}: a bug in its adapter; see the log)"
        return f"{model_id!r}: {told}" if model_id else told

    # -- the catalogue ----------------------------------------------------------------

    def catalogue(self) -> Catalogue:
        providers = [
            ModelInfo(
                provider=s.name,
                configured=s.configured,
                reason=s.reason,
                source=s.source,
                base_url=None if s.base_url is None else redact_url(s.base_url),
                description=s.description,
                example_models=[f"{s.name}/{m}" for m in s.example_models],
            )
            for s in self.registry.statuses()
        ]
        return Catalogue(
            providers=providers, default_models=self.settings.default_models, max_models=self.settings.max_models
        )


@asynccontextmanager
async def running_gateway(settings: Settings, registry: Registry) -> AsyncIterator[Gateway]:
    """A gateway with its shared HTTP client and warm-up, closed (cache writes flushed) on exit.

    The MCP server's lifespan runs one of these; so does ``ai-gateway eval``, which needs no MCP
    server for its rows and so does not pay fastmcp's imports (~0.8 s here) at every start.
    """
    client = SharedClient(settings)
    warm = WarmUp(prepare_http=client.prepare)
    gateway = Gateway(settings, registry, client, warm=warm)
    warm.start()
    try:
        yield gateway
    finally:
        await warm.aclose()
        await gateway.aclose()
        await client.aclose()


def build_cache(settings: Settings) -> ResponseCache:
    """The embedded LRU, or Redis in front of it when a URL is configured (it falls back on failure)."""
    embedded = MemoryBackend(settings.cache_max_entries, settings.cache_max_bytes)
    backend: Backend = embedded
    if settings.redis_url is not None:
        from ai_gateway.cache.redis_backend import RedisBackend

        backend = RedisBackend(
            settings.redis_url.get_secret_value(),
            embedded,
            op_timeout_s=settings.cache_op_timeout_s,
            cooldown_s=settings.cache_cooldown_s,
            max_connections=settings.cache_max_connections,
            near_prefix=answer_prefix(settings.cache_namespace),
            near_entries=settings.cache_near_entries,
            near_bytes=settings.cache_near_bytes,
        )
    return ResponseCache(
        backend,
        namespace=settings.cache_namespace,
        ttl_s=settings.cache_ttl_s,
        max_entry_bytes=settings.cache_max_entry_bytes,
    )


def build_chat_request(
    prompt: str | None,
    messages: Sequence[ChatMessage] | None,
    system: str | None,
    temperature: float | None,
    max_tokens: int | None,
) -> ChatRequest:
    if prompt is not None and messages is not None:
        raise InvalidArgument("prompt", "give either prompt or messages, not both")
    _check_unicode("prompt", prompt)
    _check_unicode("system", system)
    for i, message in enumerate(messages or ()):
        _check_unicode(f"messages[{i}].content", message.content)
    if prompt is None and not messages:
        raise InvalidArgument("prompt", "give a prompt (text) or messages (a list of {role, content})")
    if prompt is not None:
        if not prompt.strip():
            raise InvalidArgument("prompt", "must not be empty")
        turns: tuple[Message, ...] = (Message("user", prompt),)
    else:
        assert messages is not None
        for i, message in enumerate(messages):
            if not message.content.strip():
                raise InvalidArgument(f"messages[{i}].content", "must not be empty")
        if not any(m.role == "user" for m in messages):
            raise InvalidArgument("messages", "must contain at least one message with role 'user'")
        turns = tuple(Message(m.role, m.content) for m in messages)
    if system is not None and not system.strip():
        raise InvalidArgument("system", "must not be empty when given (omit it instead)")
    return ChatRequest(messages=turns, system=system, temperature=temperature, max_tokens=max_tokens)


def _split_model_id(field: str, model_id: str) -> tuple[str, str]:
    """``provider/model`` as (provider, model), or InvalidArgument saying what is wrong with how it is written."""
    _check_unicode(field, model_id)
    if model_id != model_id.strip():
        raise InvalidArgument(field, f"{model_id!r} has surrounding spaces; write {model_id.strip()!r}")
    provider, sep, model = model_id.partition("/")
    if not sep or not provider or not model.strip():
        raise InvalidArgument(field, f"{model_id!r} is not provider/model (e.g. openai/gpt-4o-mini)")
    if any(c.isspace() for c in model_id):
        # No provider names a model with a space or a tab in it: sent as written, it would come back a 404,
        # which a fallback chain would quietly skip.
        fixed = "/".join(part.strip() for part in model_id.split("/", 1))
        hint = f"; did you mean {fixed!r}?" if not any(c.isspace() for c in fixed) else ""
        raise InvalidArgument(field, f"{model_id!r} has whitespace inside; model ids have none{hint}")
    if (at := _invisible(model_id)) is not None:
        # A zero-width space, a BOM or a NUL pasted with the id: unseen in a log or a config file, it was sent to
        # the provider as written, which answered 404 (or took it for another model).
        fixed = "".join(c for c in model_id if not _is_invisible(c))
        hint = f"; did you mean {fixed!r}?" if fixed.partition("/")[2] else ""
        raise InvalidArgument(
            field,
            f"{model_id!r} has an invisible or control character inside (U+{ord(model_id[at]):04X} at position "
            f"{at}); model ids have none{hint}",
        )
    return provider, model


def _is_invisible(char: str) -> bool:
    """A control (Cc: NUL, ESC, ...) or format character (Cf: zero-width space, BOM, bidi marks)."""
    return unicodedata.category(char) in ("Cc", "Cf")


def _invisible(text: str) -> int | None:
    return next((i for i, char in enumerate(text) if _is_invisible(char)), None)


def _check_unicode(field: str, text: str | None) -> None:
    if text is not None and (at := broken_character(text)) is not None:
        raise InvalidArgument(
            field,
            f"is not valid Unicode text: U+{ord(text[at]):04X} at position {at} is half of a surrogate pair; "
            "send the whole character",
        )


def build_result(
    strategy: StrategyName,
    result: StrategyResult,
    secrets: Sequence[str],
    elapsed_s: float,
    pricing: Pricing | None = None,
) -> QueryResult:
    results = [_model_result(outcome, secrets, pricing) for outcome in result.outcomes]
    winner = result.winner
    consensus = None
    if result.tally is not None:
        ranked = result.tally.ranked()
        leader_votes = ranked[0].votes if ranked else 0
        consensus = ConsensusInfo(
            reached=result.tally.reached(),
            agreement=round(leader_votes / result.tally.requested, 4),
            votes=leader_votes,
            answered=result.tally.answered,
            requested=result.tally.requested,
            decided_early=result.tally.decided_early,
            groups=[
                VoteGroup(
                    answer=results[g.members[0]].text or "",
                    normalized=g.normalized,
                    models=[results[i].model for i in g.members],
                    votes=g.votes,
                )
                for g in ranked
            ],
        )
    usages = [r.usage for r in results if r.usage is not None and not r.cached]  # a cached answer costs nothing
    total = (
        UsageInfo(input_tokens=sum(u.input_tokens for u in usages), output_tokens=sum(u.output_tokens for u in usages))
        if usages
        else None
    )
    # A partial sum would understate: one unpriced answer makes the total unknown.
    paid = [r.cost_usd for r in results if (r.status == "ok" or r.usage is not None) and not r.cached]
    saved = [r.cost_saved_usd for r in results if r.cached]
    return QueryResult(
        strategy=strategy,
        answer=results[winner].text if winner is not None else None,
        model=results[winner].model if winner is not None else None,
        results=results,
        consensus=consensus,
        latency_ms=round(elapsed_s * 1000, 3),
        usage=total,
        cost_usd=_total_usd(paid),
        cost_saved_usd=_total_usd(saved),
    )


def _total_usd(costs: list[float | None]) -> float | None:
    """The sum, or None when any part is unknown."""
    total = 0.0
    for cost in costs:
        if cost is None:
            return None
        total += cost
    return round(total, USD_DIGITS)


def _error_info(error: Mapping[str, Any], secrets: Sequence[str]) -> ErrorInfo:
    """An error as the gateway shows it (a result, a breaker's last error): its message redacted with every
    secret the gateway knows, not only those of the provider that raised it."""
    return ErrorInfo(**{**error, "message": redact_cut(str(error["message"]), secrets)})  # messages are cut short


def _model_result(outcome: Outcome, secrets: Sequence[str], pricing: Pricing | None = None) -> ModelResult:
    completion, error = outcome.completion, outcome.error
    # An empty or filtered answer is an error, but the provider billed it: its usage, cost and finish reason are
    # reported.
    billed = completion if completion is not None else error.completion if isinstance(error, UnusableAnswer) else None
    usage = billed.usage if billed else None
    # Priced here, after the cache: a cached answer's envelope carries its usage, never a cost. Only an answer
    # (status ok) or a billed empty answer has a usage at all.
    price = None
    if usage is not None and pricing is not None:
        price = pricing.cost(outcome.target.provider, outcome.target.model, usage)
        price = None if price is None else round(price, USD_DIGITS)
    provider_model = completion.model if completion and completion.model != outcome.target.model else None
    return ModelResult(
        model=outcome.target.id,
        status=outcome.status,
        text=completion.text if completion else None,
        latency_ms=round(outcome.latency_s * 1000, 3) if outcome.latency_s is not None else None,
        usage=UsageInfo(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cached_input_tokens=usage.cached_input_tokens,
            reasoning_tokens=usage.reasoning_tokens,
        )
        if usage
        else None,
        error=_error_info(error.to_dict(), secrets) if error else None,
        finish_reason=str(billed.finish_reason) if billed else None,
        provider_model=provider_model,
        attempts=outcome.attempts,
        hedge=outcome.hedge,
        cached=outcome.cached,
        cost_usd=0.0 if outcome.cached else price,
        cost_saved_usd=price if outcome.cached else None,
    )
