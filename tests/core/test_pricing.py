"""Pricing: AI_GATEWAY_MODEL_PRICES, the genai-prices table, and the arithmetic done here instead of calc_price."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from decimal import Decimal
from importlib.metadata import entry_points
from typing import Any

import genai_prices
import pytest
from genai_prices import Usage as TableUsage
from genai_prices import calc_price
from genai_prices.data_snapshot import get_snapshot
from pydantic import ValidationError

from ai_gateway import pricing
from ai_gateway.cli import describe_settings_error
from ai_gateway.pricing import Pricing
from ai_gateway.registry import ENTRY_POINT_GROUP, Registry
from ai_gateway.settings import CustomProvider, ModelPrice, Settings
from ai_gateway.types import Usage

SOURCES = {"openai": "openai", "anthropic": "anthropic", "gemini": "google", "deepseek": "deepseek", "ollama": None}


def prices(**overrides: dict[str, float]) -> dict[str, ModelPrice]:
    return {key: ModelPrice(**value) for key, value in overrides.items()}


def table_pricing(overrides: dict[str, ModelPrice] | None = None) -> Pricing:
    return Pricing(overrides or {}, SOURCES.get)


# ---------------------------------------------------------------------------- the setting
def test_model_prices_setting_parses_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AI_GATEWAY_MODEL_PRICES",
        '{"ollama/*": {"input_per_mtok": 0, "output_per_mtok": 0}, '
        '"openai/gpt-4o-mini": {"input_per_mtok": 0.1, "output_per_mtok": 0.4, "cached_input_per_mtok": 0.05}}',
    )
    got = Settings(_env_file=None).model_prices
    assert got["ollama/*"] == ModelPrice(input_per_mtok=0, output_per_mtok=0)
    assert got["openai/gpt-4o-mini"].cached_input_per_mtok == 0.05
    monkeypatch.setenv("AI_GATEWAY_MODEL_PRICES", "")
    assert Settings(_env_file=None).model_prices == {}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{nope", "not valid JSON"),
        ('["a/b"]', "must be a JSON object of provider/model keys"),
        ('{"ollama": {"input_per_mtok": 0, "output_per_mtok": 0}}', "key 'ollama': write provider/model"),
        ('{"*/x": {"input_per_mtok": 0, "output_per_mtok": 0}}', "key '*/x': write provider/model"),
        ('{"a/b": 0.5}', "key 'a/b': the price must be an object"),
        ('{"a/b": {"input_per_mtok": 1}}', "key 'a/b': output_per_mtok is missing"),
        ('{"a/b": {"input": 1, "output_per_mtok": 1}}', "key 'a/b': unknown field 'input'"),
        ('{"a/b": {"input_per_mtok": -1, "output_per_mtok": 1}}', "key 'a/b': input_per_mtok must be a number"),
        ('{"a/b": {"input_per_mtok": "1", "output_per_mtok": 1}}', "key 'a/b': input_per_mtok must be a number"),
        ('{"a/b": {"input_per_mtok": 1, "output_per_mtok": true}}', "key 'a/b': output_per_mtok must be a number"),
    ],
)
def test_bad_model_prices_name_the_setting_the_key_and_the_fix(
    monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    monkeypatch.setenv("AI_GATEWAY_MODEL_PRICES", value)
    with pytest.raises(ValidationError) as info:
        Settings(_env_file=None)
    described = describe_settings_error(info.value)
    assert described.startswith("AI_GATEWAY_MODEL_PRICES: ") and message in described


# ---------------------------------------------------------------------------- overrides
def test_overrides_exact_key_first_then_the_most_specific_pattern() -> None:
    p = table_pricing(
        prices(**{
            "together/*": {"input_per_mtok": 1, "output_per_mtok": 1},
            "together/meta-llama/*": {"input_per_mtok": 2, "output_per_mtok": 2},
            "together/meta-llama/Llama-3.3-70B-Instruct-Turbo": {"input_per_mtok": 3, "output_per_mtok": 3},
            "ollama/*": {"input_per_mtok": 0, "output_per_mtok": 0},
        })
    )  # fmt: skip
    usage = Usage(input_tokens=1_000_000, output_tokens=0)
    assert p.cost("together", "meta-llama/Llama-3.3-70B-Instruct-Turbo", usage) == 3.0
    assert p.cost("together", "meta-llama/Llama-3.1-8B", usage) == 2.0
    assert p.cost("together", "Qwen/Qwen2.5-72B", usage) == 1.0
    assert p.cost("ollama", "llama3.2", usage) == 0.0  # a local model made free, not unknown
    assert p.source("ollama", "llama3.2") == "AI_GATEWAY_MODEL_PRICES['ollama/*']"
    assert p.cost("ollamax", "llama3.2", usage) is None  # another provider's prefix does not match


def test_an_override_beats_the_table_and_prices_cached_input() -> None:
    p = table_pricing(
        prices(**{"openai/gpt-4o-mini": {"input_per_mtok": 1, "output_per_mtok": 4, "cached_input_per_mtok": 0.5}})
    )
    usage = Usage(input_tokens=1000, output_tokens=500, cached_input_tokens=400)
    assert p.cost("openai", "gpt-4o-mini", usage) == pytest.approx((600 * 1 + 400 * 0.5 + 500 * 4) / 1e6)
    # Without a cached price, cached input costs what input costs.
    plain = table_pricing(prices(**{"openai/gpt-4o-mini": {"input_per_mtok": 1, "output_per_mtok": 4}}))
    assert plain.cost("openai", "gpt-4o-mini", usage) == pytest.approx((1000 * 1 + 500 * 4) / 1e6)


# ---------------------------------------------------------------------------- the genai-prices table
def test_table_price_of_gpt_4o_mini() -> None:
    p = table_pricing()
    assert p.cost("openai", "gpt-4o-mini", Usage(input_tokens=1000, output_tokens=500)) == pytest.approx(0.00045)
    assert p.source("openai", "gpt-4o-mini") == "genai-prices openai/gpt-4o-mini"


def test_cached_input_is_priced_at_the_cache_read_price() -> None:
    # genai-prices' input_tokens includes cache reads, as ours does: 600 at $0.15, 400 at $0.075, 500 out at $0.60.
    table = calc_price(TableUsage(input_tokens=1000, output_tokens=500, cache_read_tokens=400), "gpt-4o-mini",
                       provider_id="openai")  # fmt: skip
    assert table.total_price == Decimal("0.00042")
    usage = Usage(input_tokens=1000, output_tokens=500, cached_input_tokens=400)
    assert table_pricing().cost("openai", "gpt-4o-mini", usage) == pytest.approx(0.00042)


def test_unknown_models_and_unpriced_providers_cost_none(caplog: pytest.LogCaptureFixture) -> None:
    p = Pricing({}, {"openai": "openai", "ollama": None, "odd": "no-such-genai-provider"}.get)
    usage = Usage(input_tokens=10, output_tokens=10)
    assert p.cost("openai", "no-such-model-xyz", usage) is None
    assert p.cost("ollama", "llama3.2", usage) is None  # local: no price source
    assert p.cost("mock", "echo", usage) is None  # not even a spec entry
    assert p.cost("openai", "gpt-4o-mini", None) is None  # no usage reported
    with caplog.at_level(logging.WARNING, logger="ai_gateway.pricing"):
        assert p.cost("odd", "gpt-4o-mini", usage) is None
    assert "price_source 'no-such-genai-provider' is not a genai-prices provider id" in caplog.text


def test_lookups_are_memoised_found_or_not(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str | None]] = []
    asked: list[str] = []

    def counting(usage: Any, model_ref: str, **kwargs: Any) -> Any:
        calls.append((model_ref, kwargs.get("provider_id")))
        return calc_price(usage, model_ref, **kwargs)

    def source(provider: str) -> str | None:
        asked.append(provider)
        return SOURCES.get(provider)

    monkeypatch.setattr(genai_prices, "calc_price", counting)
    p = Pricing({}, source)
    usage = Usage(input_tokens=100, output_tokens=100)
    for _ in range(3):
        assert p.cost("openai", "gpt-4o-mini", usage) is not None
        assert p.cost("openai", "no-such-model-xyz", usage) is None
        assert p.cost("ollama", "llama3.2", usage) is None
    assert calls == [("gpt-4o-mini", "openai"), ("no-such-model-xyz", "openai")]
    assert asked == ["openai", "openai", "ollama"]


def test_every_built_in_price_source_is_a_genai_prices_provider() -> None:
    registry = Registry(list(entry_points(group=ENTRY_POINT_GROUP)), environ={})
    sources = {name: registry.spec(name).price_source for name in registry.names()}
    assert sources["gemini"] == "google" and sources["openai"] == "openai"
    assert {sources[name] for name in ("ollama", "vllm", "lmstudio", "mock")} == {None}
    known = {provider.id for provider in get_snapshot().providers}
    assert {source for source in sources.values() if source} <= known


def test_a_custom_host_may_name_its_price_source() -> None:
    custom = {
        "corp": CustomProvider(base_url="https://llm.corp.example/v1", api_key_env="CORP_KEY", price_source="openai"),
        "gpu": CustomProvider(base_url="http://10.0.0.5:8000/v1"),
    }
    registry = Registry(list(entry_points(group=ENTRY_POINT_GROUP)), environ={"CORP_KEY": "k"}, custom=custom)
    p = Pricing({}, lambda provider: registry.spec(provider).price_source)
    usage = Usage(input_tokens=1000, output_tokens=500)
    assert p.cost("corp", "gpt-4o-mini", usage) == pytest.approx(0.00045)
    assert p.cost("gpu", "gpt-4o-mini", usage) is None  # a custom host is unpriced unless it says otherwise


# ---------------------------------------------------------------------------- our arithmetic = calc_price
USAGES = [
    Usage(input_tokens=1234, output_tokens=567),
    Usage(input_tokens=1234, output_tokens=567, cached_input_tokens=1000, reasoning_tokens=300),
    Usage(input_tokens=250_000, output_tokens=4000, cached_input_tokens=50_000),  # past 200k-token tiers
]


class FrozenDatetime(datetime):
    at = datetime(2025, 6, 2, 3, 0, tzinfo=UTC)

    @classmethod
    def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
        return cls.at


@pytest.mark.parametrize("at", [datetime(2025, 6, 2, 3, 0, tzinfo=UTC), datetime(2025, 6, 2, 18, 0, tzinfo=UTC)])
def test_our_arithmetic_equals_calc_price_on_every_model_of_the_built_in_sources(
    monkeypatch: pytest.MonkeyPatch, at: datetime
) -> None:
    """Both hours: some prices change by time of day (DeepSeek's off-peak discount)."""
    monkeypatch.setattr(FrozenDatetime, "at", at)
    monkeypatch.setattr(pricing, "datetime", FrozenDatetime)
    sources = sorted({"openai", "anthropic", "google", "groq", "mistral", "deepseek", "together", "openrouter",
                      "fireworks"})  # fmt: skip
    checked = unpriced = 0
    for source in sources:
        p = Pricing({}, lambda provider: provider)
        for model in get_snapshot().find_provider(None, source, None).models:
            ref = _a_ref(model)
            if ref is None:
                continue
            for usage in USAGES:
                ours = p.cost(source, ref, usage)
                if ours is None:  # charged for units a chat answer's usage does not count
                    unpriced += 1
                    continue
                theirs = calc_price(
                    TableUsage(
                        input_tokens=usage.input_tokens,
                        output_tokens=usage.output_tokens,
                        cache_read_tokens=usage.cached_input_tokens,
                        output_reasoning_tokens=usage.reasoning_tokens,
                    ),
                    ref,
                    provider_id=source,
                    genai_request_timestamp=at,
                )
                assert ours == pytest.approx(float(theirs.total_price), rel=1e-9, abs=1e-15), (source, ref, usage)
                checked += 1
    assert checked > 3000 and unpriced < checked / 50


def _a_ref(model: Any) -> str | None:
    """A model reference that the model's own match rule accepts (its id, most of the time)."""
    clause = model.match
    while hasattr(clause, "or_"):
        clause = clause.or_[0]
    for ref in (model.id, getattr(clause, "equals", None), getattr(clause, "starts_with", None)):
        if ref and model.is_match(ref):
            return ref
    return None


def test_deepseek_off_peak_prices_apply_by_the_hour(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pricing, "datetime", FrozenDatetime)
    p, usage = table_pricing(), Usage(input_tokens=1_000_000, output_tokens=0)
    costs = set()
    for hour in (3, 18):
        monkeypatch.setattr(FrozenDatetime, "at", datetime(2025, 6, 2, hour, 0, tzinfo=UTC))
        costs.add(p.cost("deepseek", "deepseek-chat", usage))
    assert len(costs) == 2  # peak and off-peak differ
