"""What one model call cost in USD: (provider, model, Usage) to a float, or None when no price is known.

Cost is the core's job, done once per result in :func:`ai_gateway.gateway.build_result`; an adapter never
computes it. A price comes from the first of:

1. ``AI_GATEWAY_MODEL_PRICES``: the key ``provider/model``, else the most specific matching pattern
   ``provider/<glob>`` (``*``, ``?``, ``[...]``; the longest pattern wins). Local models, negotiated rates.
2. The genai-prices table (a snapshot bundled with the package; nothing is ever fetched), under the provider's
   ``ProviderSpec.price_source`` id, looked up by the model name as requested.
3. Otherwise the price is unknown: None.

Which source applies to a (provider, model) is found once and memoised, unknown models included, so a lookup
(and the ~200 ms import of genai-prices, done off the loop by :class:`ai_gateway.http.WarmUp`) is paid once.

genai-prices' own ``calc_price`` takes ~100 µs a call (usage validation, unit decomposition), several times the
gateway's whole per-call overhead. So the table is used only to find a model's prices; each call's arithmetic is
done here, the way ``calc_price`` does it for the counts a chat answer has (a test checks both agree on every
model of every built-in provider):

- input tokens not read from the prompt cache at the input price, cached ones at the cache-read price (the
  input price where the table has none); genai-prices' ``input_tokens`` includes cache reads, as ours does;
- output tokens at the output price (reasoning tokens, part of them, at the reasoning price where there is one);
- a per-request fee where there is one;
- tiered prices (e.g. prompts over 200k tokens): the tier is chosen by the call's total input tokens and applies
  to all its tokens; prices that change by date or time of day are resolved per call.

What a :class:`~ai_gateway.types.Usage` cannot say is not priced: prompt-cache *writes* (Anthropic bills them above
the input price) count as plain input, and a model priced by units other than tokens (characters, audio hours,
pages) has no price here.
"""

from __future__ import annotations

import fnmatch
import logging
import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from ai_gateway.settings import ModelPrice
from ai_gateway.types import Usage

log = logging.getLogger(__name__)

PER_MTOK = 1_000_000
USD_DIGITS = 12  # costs in results are rounded to 1e-12 USD: no float noise such as 0.00045000000000000004
MEMO_LIMIT = 4096  # (provider, model) pairs remembered; past it the memo starts over
# genai-prices price keys for counts a text chat answer has.
_COUNTED = ("input_mtok", "output_mtok", "cache_read_mtok", "output_reasoning_mtok", "requests_kcount")
# Price keys of counts our Usage never has (media, cache writes, tools): zero for every call, as in calc_price.
_ZERO = frozenset(
    {
        "cache_write_mtok",
        "cache_write_1h_mtok",
        "input_audio_mtok",
        "output_audio_mtok",
        "cache_audio_read_mtok",
        "input_image_mtok",
        "output_image_mtok",
        "cache_image_read_mtok",
        "input_video_mtok",
        "output_video_mtok",
        "output_citation_mtok",
        "web_searches_kcount",
        "storage_searches_kcount",
    }
)

Price = float | tuple[float, tuple[tuple[int, float], ...]]  # per million tokens: flat, or (base, tiers high first)


def preload() -> None:
    """Import genai-prices and load its table (~200 ms): call it in a worker thread, never on the loop."""
    from genai_prices import Usage as TableUsage
    from genai_prices import calc_price

    calc_price(TableUsage(input_tokens=1, output_tokens=1), model_ref="gpt-4o-mini", provider_id="openai")


class FixedRate:
    """A price from AI_GATEWAY_MODEL_PRICES."""

    __slots__ = ("cached_input", "input", "output", "source")

    def __init__(self, price: ModelPrice, key: str) -> None:
        self.input = price.input_per_mtok
        self.output = price.output_per_mtok
        self.cached_input = price.input_per_mtok if price.cached_input_per_mtok is None else price.cached_input_per_mtok
        self.source = f"AI_GATEWAY_MODEL_PRICES[{key!r}]"

    def cost(self, usage: Usage) -> float:
        cached = min(usage.cached_input_tokens or 0, usage.input_tokens)
        # tokens x USD per million tokens: millionths of a USD, divided once at the end
        micro = (
            (usage.input_tokens - cached) * self.input + cached * self.cached_input + usage.output_tokens * self.output
        )
        return micro / PER_MTOK


class _Plan:
    """One genai-prices ModelPrice, reduced to what a chat answer's usage can be charged."""

    __slots__ = ("cache_read", "input", "output", "per_request", "reasoning")

    def __init__(self, values: Mapping[str, Price]) -> None:
        self.input = values.get("input_mtok", 0.0)
        self.output = values.get("output_mtok", 0.0)
        self.cache_read = values.get("cache_read_mtok")
        self.reasoning = values.get("output_reasoning_mtok")
        per_thousand = values.get("requests_kcount")
        # USD per thousand requests, as millionths of a USD per call
        self.per_request = _flat(per_thousand) * 1000 if per_thousand is not None else 0.0

    def cost(self, usage: Usage) -> float:
        n_in, n_out = usage.input_tokens, usage.output_tokens
        cached = min(usage.cached_input_tokens or 0, n_in) if self.cache_read is not None else 0
        reasoning = min(usage.reasoning_tokens or 0, n_out) if self.reasoning is not None else 0
        micro = (n_in - cached) * _at(self.input, n_in) + (n_out - reasoning) * _at(self.output, n_in)
        if cached:
            micro += cached * _at(self.cache_read, n_in)  # type: ignore[arg-type]
        if reasoning:
            micro += reasoning * _at(self.reasoning, n_in)  # type: ignore[arg-type]
        return (micro + self.per_request) / PER_MTOK


def _at(price: Price, total_input: int) -> float:
    """The price per million tokens for a call with ``total_input`` input tokens (genai-prices' tier rule)."""
    if isinstance(price, float):
        return price
    base, tiers = price
    for start, tier_price in tiers:  # highest threshold first
        if total_input > start:
            return tier_price
    return base


def _flat(price: Price) -> float:
    return price if isinstance(price, float) else price[0]


class TableRate:
    """A model of the genai-prices table: its prices found once, each call's arithmetic done by a _Plan."""

    __slots__ = ("_model", "_plans", "_single", "source")

    def __init__(self, model: Any, plans: dict[int, _Plan], source: str) -> None:
        self._model = model
        self._plans = plans  # by id() of the table's ModelPrice objects, which live as long as the table
        self._single = next(iter(plans.values())) if len(plans) == 1 else None
        self.source = source

    def cost(self, usage: Usage) -> float:
        plan = self._single
        if plan is None:  # prices that change by date or time of day: the one in force now
            plan = self._plans[id(self._model.get_prices(datetime.now(tz=UTC)))]
        return plan.cost(usage)


Rate = FixedRate | TableRate


class Pricing:
    """Prices every answer of one gateway. ``price_source(provider)`` is the provider's genai-prices id, or None."""

    def __init__(self, overrides: Mapping[str, ModelPrice], price_source: Callable[[str], str | None]) -> None:
        self._exact = {key: price for key, price in overrides.items() if not _is_pattern(key)}
        patterns = [(key, price) for key, price in overrides.items() if _is_pattern(key)]
        patterns.sort(key=lambda item: _literal_chars(item[0]), reverse=True)  # most specific first
        self._patterns = patterns
        self._price_source = price_source
        self._rates: dict[tuple[str, str], Rate | None] = {}

    def cost(self, provider: str, model: str, usage: Usage | None) -> float | None:
        """USD for ``usage`` of ``provider``/``model``; None without usage or without a known price."""
        if usage is None:
            return None
        key = (provider, model)
        try:
            rate = self._rates[key]
        except KeyError:
            rate = self._find(provider, model)
        return None if rate is None else rate.cost(usage)

    def source(self, provider: str, model: str) -> str | None:
        """Where the price of ``provider``/``model`` comes from (for logs and tests), or None when unknown."""
        key = (provider, model)
        rate = self._rates[key] if key in self._rates else self._find(provider, model)
        return None if rate is None else rate.source

    def _find(self, provider: str, model: str) -> Rate | None:
        if len(self._rates) >= MEMO_LIMIT:
            self._rates.clear()
        rate = self._rates[(provider, model)] = self._override(provider, model) or self._table(provider, model)
        if rate is None:
            log.debug(
                "no price for %s/%s: cost is null (prices can be set in AI_GATEWAY_MODEL_PRICES)", provider, model
            )
        return rate

    def _override(self, provider: str, model: str) -> FixedRate | None:
        key = f"{provider}/{model}"
        price = self._exact.get(key)
        if price is not None:
            return FixedRate(price, key)
        for pattern, price in self._patterns:
            if fnmatch.fnmatchcase(key, pattern) and pattern.partition("/")[0] == provider:
                return FixedRate(price, pattern)
        return None

    def _table(self, provider: str, model: str) -> TableRate | None:
        try:
            source = self._price_source(provider)
        except LookupError:
            return None
        if source is None:
            return None
        from genai_prices import Usage as TableUsage
        from genai_prices import calc_price

        try:
            found = calc_price(TableUsage(input_tokens=0, output_tokens=0), model_ref=model, provider_id=source)
        except LookupError as exc:
            if str(exc).startswith("Unable to find provider"):  # a plugin's typo, not an unknown model
                log.warning("provider %r: price_source %r is not a genai-prices provider id", provider, source)
            return None
        info = found.model
        prices = [info.prices] if not isinstance(info.prices, list) else [c.prices for c in info.prices]
        plans: dict[int, _Plan] = {}
        for price in prices:
            values = _plan_values(price)
            if values is None:
                log.debug("%s/%s is priced by units other than tokens: no price", provider, model)
                return None
            plans[id(price)] = _Plan(values)
        return TableRate(info, plans, f"genai-prices {found.provider.id}/{info.id}")


def _is_pattern(key: str) -> bool:
    return any(char in key for char in "*?[")


def _literal_chars(pattern: str) -> int:
    return len(pattern) - pattern.count("*") - pattern.count("?")


def _plan_values(price: Any) -> dict[str, Price] | None:
    """The counted prices of a genai-prices ModelPrice as floats, or None if it charges for uncounted units."""
    from genai_prices.types import TieredPrices

    values: dict[str, Price] = {}
    for name, value in vars(price).items():
        if value is None or name.startswith("_") or name in _ZERO:
            continue
        if name not in _COUNTED:
            return None
        if isinstance(value, TieredPrices):
            tiers = tuple(sorted(((t.start, float(t.price)) for t in value.tiers), reverse=True))
            values[name] = (float(value.base), tiers)
        else:
            values[name] = float(value)
    return values


# -- for people reading a cost (progress lines, summaries, the CLI) --------------------------


def usd(value: float | None) -> str:
    """Dollars with three significant digits below $1 ($0.000450, $0.0123), cents above; "?" when unknown."""
    if value is None:
        return "?"
    if value == 0:
        return "$0"
    if value >= 1:
        return f"${value:,.2f}"
    return f"${value:.{max(4, 2 - math.floor(math.log10(value)))}f}"


def plus_unpriced(count: int) -> str:
    """How many answers a shown sum leaves out, as a suffix (nothing when none)."""
    return f" + {count:,} unpriced" if count else ""
