"""Pricing: AI_GATEWAY_MODEL_PRICES, the genai-prices table, and the arithmetic done here instead of calc_price."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from decimal import Decimal
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import genai_prices
import pytest
from genai_prices import Usage as TableUsage
from genai_prices import calc_price
from genai_prices.data_snapshot import get_snapshot
from pydantic import ValidationError

from ai_gateway import price_memo, pricing
from ai_gateway.cli import describe_settings_error
from ai_gateway.price_memo import PriceMemo, Remembered, table_build
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


def test_an_override_matches_the_model_in_any_case_as_the_table_does() -> None:
    """An override keyed "Claude-Haiku-4-5" priced that spelling only, while the table priced both: the same model
    cost two prices by how a caller spelt it."""
    p = table_pricing(
        prices(**{
            "anthropic/Claude-Haiku-4-5": {"input_per_mtok": 100, "output_per_mtok": 100},
            "together/Meta-Llama/*": {"input_per_mtok": 2, "output_per_mtok": 2},
        })
    )  # fmt: skip
    usage = Usage(input_tokens=1_000_000, output_tokens=0)
    for model in ("claude-haiku-4-5", "Claude-Haiku-4-5", "CLAUDE-HAIKU-4-5"):
        assert p.cost("anthropic", model, usage) == 100.0
        assert p.source("anthropic", model) == "AI_GATEWAY_MODEL_PRICES['anthropic/Claude-Haiku-4-5']"
    assert p.cost("together", "meta-llama/Llama-3.1-8B", usage) == 2.0
    assert table_pricing().cost("anthropic", "Claude-Haiku-4-5", usage) == table_pricing().cost(
        "anthropic", "claude-haiku-4-5", usage
    )  # the premise: the table ignores case


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


# Off-peak and peak hours (DeepSeek), before and after the 2026 price changes, and between two of them.
TIMES = [datetime(2025, 6, 2, 3, 0, tzinfo=UTC), datetime(2025, 6, 2, 18, 0, tzinfo=UTC),
         datetime(2026, 8, 20, 12, 0, tzinfo=UTC), datetime(2026, 11, 21, 3, 0, tzinfo=UTC),
         datetime(2026, 11, 21, 18, 0, tzinfo=UTC)]  # fmt: skip
BUILT_IN_SOURCES = [
    "openai",
    "anthropic",
    "google",
    "groq",
    "mistral",
    "deepseek",
    "together",
    "openrouter",
    "fireworks",
]


@pytest.mark.parametrize("at", TIMES)
def test_our_arithmetic_equals_calc_price_on_every_model_of_the_built_in_sources(
    monkeypatch: pytest.MonkeyPatch, at: datetime
) -> None:
    """At each of TIMES: some prices change by time of day (DeepSeek's off-peak discount), many on a date."""
    monkeypatch.setattr(FrozenDatetime, "at", at)
    monkeypatch.setattr(pricing, "datetime", FrozenDatetime)
    checked = unpriced = 0
    for source in BUILT_IN_SOURCES:
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


# ---------------------------------------------------------------------------- the memo on disk (price_memo.py)
def table_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """From here on, any use of the genai-prices table fails the test."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the table was consulted")

    monkeypatch.setattr(genai_prices, "calc_price", refuse)


@pytest.mark.parametrize("at", TIMES)
def test_remembered_prices_equal_the_table_s_on_every_model_of_the_built_in_sources(
    monkeypatch: pytest.MonkeyPatch, at: datetime
) -> None:
    """What is remembered (flat, tiered, cache-read, reasoning and per-request prices, prices from a date on or by
    the hour, and "no price") gives the same cost as the table itself, for every model; kept in memory here (one
    file write per model would be slow)."""
    monkeypatch.setattr(FrozenDatetime, "at", at)
    monkeypatch.setattr(pricing, "datetime", FrozenDatetime)
    monkeypatch.setattr(PriceMemo, "_write", lambda self, source, model: None)
    monkeypatch.setattr(price_memo, "MAX_REMEMBERED", 10**6)  # every model of the table, not a file's share
    memo = PriceMemo(Path("/nonexistent"))
    expected: dict[tuple[str, str, int], float | None] = {}
    table = Pricing({}, lambda provider: provider, memo)
    for source in BUILT_IN_SOURCES:
        for model in get_snapshot().find_provider(None, source, None).models:
            if (ref := _a_ref(model)) is not None:
                for i, usage in enumerate(USAGES):
                    expected[source, ref, i] = table.cost(source, ref, usage)
    expected[("openai", "no-such-model-xyz", 0)] = table.cost("openai", "no-such-model-xyz", USAGES[0])

    table_refused(monkeypatch)
    remembered = Pricing({}, lambda provider: provider, memo)
    assert not remembered.needs_table({(source, ref) for source, ref, _ in expected})
    assert {(s, ref, i): remembered.cost(s, ref, USAGES[i]) for s, ref, i in expected} == expected
    assert sum(value is not None for value in expected.values()) > 3000


def test_a_new_process_prices_from_the_memo_file_without_loading_the_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = [("openai", "gpt-4o-mini"), ("gemini", "gemini-2.5-pro"), ("openai", "no-such-model-xyz")]
    first = Pricing({}, SOURCES.get, PriceMemo(tmp_path))
    assert first.needs_table(models)
    costs = [first.cost(provider, model, USAGES[2]) for provider, model in models]
    sources = [first.source(provider, model) for provider, model in models]
    assert costs[0] and costs[1] and costs[2] is None  # flat, tiered (over 200k tokens), unknown
    assert [p.name for p in tmp_path.iterdir()] == [f"prices-{table_build()}.json"]

    table_refused(monkeypatch)
    later = Pricing({}, SOURCES.get, PriceMemo(tmp_path))  # as in a new process
    assert not later.needs_table([*models, ("ollama", "llama3.2")])  # ollama: unpriced, no table needed either
    assert [later.cost(provider, model, USAGES[2]) for provider, model in models] == costs
    assert [later.source(provider, model) for provider, model in models] == sources
    assert later.needs_table([("openai", "gpt-4o")])  # never asked
    assert not Pricing(prices(**{"openai/*": {"input_per_mtok": 1, "output_per_mtok": 1}}), SOURCES.get).needs_table(
        [("openai", "gpt-4o")]
    )  # an override needs no table


def test_the_memo_file_stops_growing_at_its_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A caller inventing model ids rewrote an ever larger file on each new one (a review: 3,000 ids)."""
    monkeypatch.setattr(price_memo, "MAX_REMEMBERED", 2)
    table = Pricing({}, SOURCES.get, PriceMemo(tmp_path))
    for model in ("invented-1", "invented-2", "invented-3"):
        assert table.cost("openai", model, USAGES[0]) is None
    (path,) = tmp_path.iterdir()
    assert sorted(json.loads(path.read_text())["entries"]["openai"]) == ["invented-1", "invented-2"]
    memo = PriceMemo(tmp_path)
    memo.put("openai", "invented-2", Remembered("replaced", None))  # one already remembered is still updated
    assert memo.get("openai", "invented-2") == Remembered("replaced", None)
    assert PriceMemo(tmp_path).get("openai", "invented-2") == Remembered("replaced", None)


def test_a_new_table_build_or_a_foreign_memo_file_is_not_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Pricing({}, SOURCES.get, PriceMemo(tmp_path)).cost("openai", "gpt-4o-mini", USAGES[0])
    (old,) = tmp_path.iterdir()
    right = Pricing({}, SOURCES.get).cost("openai", "gpt-4o-mini", USAGES[0])

    monkeypatch.setattr(price_memo, "table_build", lambda: "another-release")  # genai-prices upgraded
    upgraded = Pricing({}, SOURCES.get, PriceMemo(tmp_path))
    assert upgraded.needs_table([("openai", "gpt-4o-mini")])
    assert upgraded.cost("openai", "gpt-4o-mini", USAGES[0]) == right
    assert [p.name for p in tmp_path.iterdir()] == ["prices-another-release.json"]  # the old build's file is gone
    assert not old.exists()

    memo_file = tmp_path / "prices-another-release.json"
    for foreign in (b"\x00garbage", b"[1, 2]", b'{"layout": 99, "entries": {}}'):
        memo_file.write_bytes(foreign)
        assert Pricing({}, SOURCES.get, PriceMemo(tmp_path)).needs_table([("openai", "gpt-4o-mini")])
    bad_entry = {"source": "x", "plans": [[None, {"input_mtok": "cheap"}]]}
    memo_file.write_text(json.dumps({"layout": 1, "entries": {"openai": {"gpt-4o-mini": bad_entry}}}))
    again = Pricing({}, SOURCES.get, PriceMemo(tmp_path))
    assert again.cost("openai", "gpt-4o-mini", USAGES[0]) == right  # the table answered instead, and is remembered
    assert json.loads(memo_file.read_text())["entries"]["openai"]["gpt-4o-mini"]["plans"] == [
        [None, {"input_mtok": 0.15, "cache_read_mtok": 0.075, "output_mtok": 0.6}]
    ]


def test_a_memo_directory_that_cannot_be_written_costs_only_the_speed_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    p = Pricing({}, SOURCES.get, PriceMemo(blocked / "ai-gateway"))
    with caplog.at_level(logging.INFO, logger="ai_gateway.price_memo"):
        assert p.cost("openai", "gpt-4o-mini", USAGES[0]) == Pricing({}, SOURCES.get).cost(
            "openai", "gpt-4o-mini", USAGES[0]
        )
        assert p.cost("openai", "gpt-4o", USAGES[0])
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        f"cannot remember prices in {blocked / 'ai-gateway'}"
    ]  # once
