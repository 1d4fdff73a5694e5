"""What one model call cost in USD: (provider, model, Usage) to a float, or None when no price is known.

Cost is the core's job, done once per result in :func:`ai_gateway.gateway.build_result`; an adapter never
computes it. A price comes from the first of:

1. ``AI_GATEWAY_MODEL_PRICES``: the key ``provider/model``, else the most specific matching pattern
   ``provider/<glob>`` (``*``, ``?``, ``[...]``; the longest pattern wins); the model part in any case. Local models,
   negotiated rates. A key naming no provider is refused at start (``Registry.check_names``).
2. The genai-prices table (a snapshot bundled with the package; nothing is ever fetched), under the provider's
   ``ProviderSpec.price_source`` id, looked up by the model name as requested.
3. Otherwise the price is unknown: None.

Which source applies to a (provider, model) is found once and memoised, unknown models included, so a lookup
(and the ~0.1 s import of genai-prices, done off the loop by :class:`ai_gateway.warmup.WarmUp`) is paid once; what
the table says is also remembered on disk (:mod:`ai_gateway.price_memo`), so later processes need not load it.

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
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, date, datetime, time
from typing import Any

from ai_gateway.price_memo import PriceMemo, Remembered
from ai_gateway.settings import ModelPrice
from ai_gateway.types import Usage

log = logging.getLogger(__name__)

PER_MTOK = 1_000_000
USD_DIGITS = 12  # costs in results are rounded to 1e-12 USD: no float noise such as 0.00045000000000000004
_PER_UNIT = 10**USD_DIGITS
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


# When a price of the table applies: always (None), from a date on (UTC), or daily between two UTC times.
When = date | tuple[time, time] | None


class TableRate:
    """A model of the genai-prices table: its prices found once, each call's arithmetic done by a _Plan.

    A model may have several prices, each with a condition (a new price from a date on, an off-peak discount
    between two times of day); as in genai-prices, the last one whose condition holds now applies, else the first.
    """

    __slots__ = ("_plans", "_single", "source")

    def __init__(self, plans: list[tuple[When, _Plan]], source: str) -> None:
        self._plans = plans
        self._single = plans[0][1] if len(plans) == 1 else None
        self.source = source

    def cost(self, usage: Usage) -> float:
        plan = self._single
        if plan is None:
            now = datetime.now(tz=UTC)
            plan = next((plan for when, plan in reversed(self._plans) if _applies(when, now)), self._plans[0][1])
        return plan.cost(usage)


def _applies(when: When, now: datetime) -> bool:
    if when is None:
        return True
    if isinstance(when, date):
        return now.date() >= when
    start, end, at = when[0], when[1], now.time()
    return (at >= start or at < end) if end < start else start <= at < end  # an interval may span midnight


Rate = FixedRate | TableRate


class Pricing:
    """Prices every answer of one gateway. ``price_source(provider)`` is the provider's genai-prices id, or None."""

    def __init__(
        self,
        overrides: Mapping[str, ModelPrice],
        price_source: Callable[[str], str | None],
        memo: PriceMemo | None = None,
    ) -> None:
        self._memo = memo
        # Model names matched without regard to case, as the genai-prices table matches them: an override keyed
        # "Claude-Haiku-4-5" applies to the model the table prices as "claude-haiku-4-5", not to one spelling.
        self._exact = {key.casefold(): (key, price) for key, price in overrides.items() if not _is_pattern(key)}
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

    def needs_table(self, models: Iterable[tuple[str, str]]) -> bool:
        """Whether pricing any of these (provider, model) pairs would load the genai-prices table: False when
        each has an override, no price source, or an answer the memo remembers (then nothing need preload it)."""
        for provider, model in models:
            if (provider, model) in self._rates or self._override(provider, model) is not None:
                continue
            source = self._table_source(provider)
            if source is not None and (self._memo is None or self._memo.get(source, model) is None):
                return True
        return False

    def _table_source(self, provider: str) -> str | None:
        """The provider's genai-prices id; None for an unpriced or unknown provider."""
        try:
            return self._price_source(provider)
        except LookupError:
            return None

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
        key = f"{provider}/{model}".casefold()
        exact = self._exact.get(key)
        if exact is not None:
            return FixedRate(exact[1], exact[0])
        for pattern, price in self._patterns:
            if fnmatch.fnmatchcase(key, pattern.casefold()) and pattern.partition("/")[0] == provider:
                return FixedRate(price, pattern)
        return None

    def _table(self, provider: str, model: str) -> TableRate | None:
        source = self._table_source(provider)
        if source is None:
            return None
        if self._memo is not None and (known := self._memo.get(source, model)) is not None:
            try:
                return _remembered_rate(known)
            except (TypeError, ValueError, IndexError, AttributeError):  # a foreign file: ask the table
                log.debug("ignoring a malformed remembered price of %s/%s", source, model)
        from genai_prices import Usage as TableUsage
        from genai_prices import calc_price

        try:
            found = calc_price(TableUsage(input_tokens=0, output_tokens=0), model_ref=model, provider_id=source)
        except LookupError as exc:
            if str(exc).startswith("Unable to find provider"):  # a plugin's typo, not an unknown model
                log.warning("provider %r: price_source %r is not a genai-prices provider id", provider, source)
            else:
                self._remember(source, model, Remembered(f"genai-prices {source}: no such model", None))
            return None
        info = found.model
        label = f"genai-prices {found.provider.id}/{info.id}"
        plans = _table_plans(info.prices)
        if plans is None:
            log.debug("%s/%s is priced by units other than tokens (or on conditions unknown here): no price",
                      provider, model)  # fmt: skip
            self._remember(source, model, Remembered(label, None))
            return None
        self._remember(source, model, Remembered(label, [[_when_json(w), _to_json(v)] for w, v in plans]))
        return TableRate([(when, _Plan(values)) for when, values in plans], label)

    def _remember(self, source: str, model: str, remembered: Remembered) -> None:
        if self._memo is not None:
            self._memo.put(source, model, remembered)


def _table_plans(prices: Any) -> list[tuple[When, dict[str, Price]]] | None:
    """A table model's prices as (condition, counted prices), or None if a chat answer's usage cannot be priced."""
    from genai_prices.types import StartDateConstraint, TimeOfDateConstraint

    conditional = prices if isinstance(prices, list) else None
    plans: list[tuple[When, dict[str, Price]]] = []
    for price, constraint in [(c.prices, c.constraint) for c in conditional] if conditional else [(prices, None)]:
        values = _plan_values(price)
        if values is None:
            return None
        if constraint is None:
            when: When = None
        elif isinstance(constraint, StartDateConstraint):
            when = constraint.start_date
        elif isinstance(constraint, TimeOfDateConstraint):
            when = (_utc_time(constraint.start_time), _utc_time(constraint.end_time))
        else:  # a condition this code does not know: no price rather than a wrong one
            return None
        plans.append((when, values))
    return plans


def _utc_time(value: time) -> time:
    """A time of day in UTC, without a zone (naive times are UTC, as in genai-prices)."""
    if value.tzinfo is None:
        return value
    return datetime.combine(date(1970, 1, 1), value).astimezone(UTC).time()


def _when_json(when: When) -> Any:
    if when is None or isinstance(when, date):
        return when and when.isoformat()
    return [when[0].isoformat(), when[1].isoformat()]


def _to_json(values: Mapping[str, Price]) -> dict[str, Any]:
    return {name: value if isinstance(value, float) else [value[0], [list(t) for t in value[1]]]
            for name, value in values.items()}  # fmt: skip


def _remembered_rate(known: Remembered) -> TableRate | None:
    """The rate of a remembered table answer; raises on anything but what ``_table`` writes."""
    if known.plans is None:
        return None
    plans: list[tuple[When, _Plan]] = []
    for when_json, prices in known.plans:
        when: When = None
        if isinstance(when_json, str):
            when = date.fromisoformat(when_json)
        elif when_json is not None:
            when = (time.fromisoformat(when_json[0]), time.fromisoformat(when_json[1]))
        values: dict[str, Price] = {}
        for name, value in prices.items():
            if name not in _COUNTED:
                raise ValueError(name)
            if isinstance(value, list):
                base, tiers = value
                values[name] = (float(base), tuple((int(start), float(price)) for start, price in tiers))
            else:
                values[name] = float(value)
        plans.append((when, _Plan(values)))
    if not plans:
        raise ValueError("no prices")
    return TableRate(plans, known.source)


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


def usd_units(value: float) -> int:
    """A cost as a whole number of 1e-12 USD. Sums of these are exact in any order; float sums are not, and
    the eval's running total (rows as they finish) showed another last digit than its summary (model by model)."""
    return round(value * _PER_UNIT)


def from_usd_units(units: int) -> float:
    return units / _PER_UNIT


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
