"""Cost through the real stack: per-model and per-query cost in query_models results, and in evaluation runs.

Prices come from AI_GATEWAY_MODEL_PRICES (the fake's models are not in any price table) and, for
anthropic/claude-haiku-4-5, from the genai-prices table. The fake counts words as tokens.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastmcp import Client, FastMCP

from ai_gateway.cache.store import CachePolicy
from ai_gateway.evaluation.console import lifespan_gateway, totals_line
from ai_gateway.evaluation.dataset import load_dataset
from ai_gateway.evaluation.runner import EvalConfig, execute, gateway_query, prepare
from ai_gateway.types import ChatRequest, Message
from tests.fake_provider import Scenario
from tests.integration.conftest import GatedFake
from tests.integration.test_evaluation import dataset_rows, evaluate, read_records, write_jsonl

PROMPT = "What is the capital of France?"  # 6 words in; the answer "Paris" is 1 word out
PRICES: dict[str, Any] = {
    "openai/*": {"input_per_mtok": 2.5, "output_per_mtok": 10.0, "cached_input_per_mtok": 1.25},
    "anthropic/ev-*": {"input_per_mtok": 1.0, "output_per_mtok": 4.0},
}
OPENAI, ANTHROPIC, OLLAMA = "openai/gpt-4o-mini", "anthropic/claude-haiku-4-5", "ollama/llama3.2"
A, B = "openai/ev-a", "anthropic/ev-b"


def by_model(result: Any) -> dict[str, dict[str, Any]]:
    return {r["model"]: r for r in result.structured_content["results"]}


async def test_query_cost_and_a_cache_hit_that_costs_nothing(make_server: Callable[..., FastMCP],
                                                             fake: GatedFake) -> None:  # fmt: skip
    for model in ("gpt-4o-mini", "claude-haiku-4-5", "llama3.2"):
        fake.set(model, Scenario(text="Paris"))
    server = make_server(model_prices=PRICES)
    async with Client(server) as client:
        gateway = lifespan_gateway(server)
        args: dict[str, Any] = {"prompt": PROMPT, "models": [OPENAI, ANTHROPIC], "strategy": "consensus"}

        first = await client.call_tool("query_models", args)
        openai_cost = (6 * 2.5 + 1 * 10.0) / 1e6  # the override beats the table's price for gpt-4o-mini
        anthropic_cost = (6 * 1.0 + 1 * 5.0) / 1e6  # genai-prices: claude-haiku-4-5 at $1 in, $5 out
        results = by_model(first)
        assert [(r["cached"], r["cost_saved_usd"]) for r in results.values()] == [(False, None), (False, None)]
        assert results[OPENAI]["cost_usd"] == pytest.approx(openai_cost)
        assert results[ANTHROPIC]["cost_usd"] == pytest.approx(anthropic_cost)
        assert first.structured_content["cost_usd"] == pytest.approx(openai_cost + anthropic_cost)
        assert first.structured_content["cost_saved_usd"] == 0.0

        await gateway.cache.flush()
        again = await client.call_tool("query_models", args)
        assert fake.count() == 2  # both answers came from the cache
        results = by_model(again)
        assert [(r["cached"], r["cost_usd"]) for r in results.values()] == [(True, 0.0), (True, 0.0)]
        assert results[OPENAI]["cost_saved_usd"] == pytest.approx(openai_cost)
        assert results[ANTHROPIC]["cost_saved_usd"] == pytest.approx(anthropic_cost)
        assert again.structured_content["cost_usd"] == 0.0
        assert again.structured_content["cost_saved_usd"] == pytest.approx(first.structured_content["cost_usd"])

        # The cached envelope holds the usage, never a cost: prices are applied when a result is built.
        target = gateway.resolve([OPENAI])[0]
        request = ChatRequest(messages=(Message("user", PROMPT),))
        adapter = target.adapter
        key = gateway.cache.key_for(
            target.provider, adapter.config.base_url, target.model, request, CachePolicy(), adapter.cache_options()
        )
        raw, _ = gateway.cache.backend.entry(key)
        assert b'"usage"' in raw and b"cost" not in raw

        # One unpriced model makes the query's cost unknown, not understated.
        mixed = await client.call_tool("query_models", {**args, "models": [OPENAI, OLLAMA], "cache": "bypass"})
        results = by_model(mixed)
        assert results[OPENAI]["cost_usd"] == pytest.approx(openai_cost)
        assert results[OLLAMA]["cost_usd"] is None and results[OLLAMA]["usage"] is not None
        assert mixed.structured_content["cost_usd"] is None


async def test_cost_fields_are_in_the_output_schema(client: Client) -> None:
    tool = next(t for t in await client.list_tools() if t.name == "query_models")
    schema = tool.output_schema
    assert schema is not None
    query_cost = schema["properties"]["cost_usd"]
    assert (
        query_cost["type"] == ["number", "null"]
        and "summed over the calls a provider billed" in query_cost["description"]
    )
    model_result = schema["properties"]["results"]["items"]["properties"]
    assert model_result["cost_usd"]["type"] == ["number", "null"]
    assert "0 for a cached answer" in model_result["cost_usd"]["description"]
    assert "would have cost" in model_result["cost_saved_usd"]["description"]


# ---------------------------------------------------------------------------- evaluation runs
ROW_A = (3 * 2.5 + 3 * 10.0) / 1e6  # "question number i": 3 words in, echoed: 3 out
ROW_B = (3 * 1.0 + 3 * 4.0) / 1e6


async def test_an_empty_answer_cut_off_at_the_limit_is_an_error_that_still_costs(
    make_server: Callable[..., FastMCP], fake: GatedFake
) -> None:
    """A reasoning model that spends max_tokens thinking returns no text, finish reason length: an error
    (empty_response), but the provider billed it, so its usage, cost and finish reason are in the result."""
    fake.set("gpt-4o-mini", Scenario(text="Paris", thinking=50))
    fake.set("claude-haiku-4-5", Scenario(text="Paris"))
    async with Client(make_server(model_prices=PRICES)) as client:
        args = {"prompt": PROMPT, "models": [OPENAI, ANTHROPIC], "max_tokens": 20}
        result = await client.call_tool("query_models", args)
        again = await client.call_tool("query_models", args)
    thinker, answerer = by_model(result).values()
    assert (thinker["status"], thinker["error"]["code"], thinker["text"]) == ("error", "empty_response", None)
    assert (thinker["finish_reason"], thinker["usage"]["output_tokens"]) == ("length", 20)
    assert thinker["cost_usd"] == pytest.approx((6 * 2.5 + 20 * 10.0) / 1e6)
    anthropic_cost = (6 * 1.0 + 1 * 5.0) / 1e6
    assert (answerer["status"], answerer["cost_usd"]) == ("ok", pytest.approx(anthropic_cost))
    sc = result.structured_content
    assert sc["cost_usd"] == pytest.approx(thinker["cost_usd"] + anthropic_cost)  # what the call cost, failure included
    assert sc["usage"]["output_tokens"] == 21
    # Never cached: asked again, the thinking model is called (and billed) again; the answer comes from the cache.
    assert [r["cached"] for r in again.structured_content["results"]] == [False, True]
    assert fake.count("gpt-4o-mini") == 2 and fake.count("claude-haiku-4-5") == 1


async def test_eval_cost_in_a_run_its_replay_and_a_resume(make_server: Callable[..., FastMCP], fake: GatedFake,
                                                           tmp_path: Path) -> None:  # fmt: skip
    server = make_server(model_prices=PRICES)
    async with Client(server):
        gateway = lifespan_gateway(server)
        dataset = write_jsonl(tmp_path / "data.jsonl", dataset_rows(4))
        run = await evaluate(gateway, dataset, tmp_path / "run.jsonl", [A, B], strategy="consensus")
        await gateway.cache.flush()

        assert (run.cost_usd, run.cost_saved_usd, run.unpriced) == (pytest.approx(4 * (ROW_A + ROW_B)), 0.0, 0)
        a, b = run.per_model
        assert (a.cost_usd, b.cost_usd) == (pytest.approx(4 * ROW_A), pytest.approx(4 * ROW_B))
        records = read_records(tmp_path / "run.jsonl")
        assert {m["model"]: m["cost_usd"] for m in records[0]["results"]} == {
            A: pytest.approx(ROW_A),
            B: pytest.approx(ROW_B),
        }

        replay = await evaluate(gateway, dataset, tmp_path / "replay.jsonl", [A, B], strategy="consensus",
                                cache="only")  # fmt: skip
        assert fake.count() == 8  # the replay called no provider
        assert replay.cost_usd == 0.0 and replay.cost_saved_usd == pytest.approx(run.cost_usd)
        assert [m.cost_saved_usd for m in replay.per_model] == [pytest.approx(4 * ROW_A), pytest.approx(4 * ROW_B)]

        # Resume from a file holding two finished rows, one of them written before costs were recorded.
        old, kept = records[0], records[1]
        for m in old["results"]:
            del m["cost_usd"], m["cost_saved_usd"]
        out = write_jsonl(tmp_path / "resumed.jsonl", [old, kept])
        config = EvalConfig(models=(A, B), strategy="consensus", cache="only")
        plan = prepare(dataset, load_dataset(dataset), config, out)
        resumed = await execute(plan, gateway_query(gateway))

        assert (resumed.resumed, resumed.ran) == (2, 2)
        assert resumed.cost_usd == pytest.approx(ROW_A + ROW_B)  # the earlier row's cost, from its line
        assert resumed.unpriced == 2  # the line without costs: counted, never guessed
        assert resumed.cost_saved_usd == pytest.approx(2 * (ROW_A + ROW_B))  # the two rows run now, from the cache
        state = plan.state  # this run's own rows
        assert (state.cost_usd, state.cost_saved_usd, state.unpriced) == (0.0, pytest.approx(2 * (ROW_A + ROW_B)), 0)
        assert "cost $0 (saved $0.000105)" in totals_line(state)  # 2 x (37.5 + 15) µ$


async def test_eval_counts_unpriced_answers(make_server: Callable[..., FastMCP], fake: GatedFake,
                                            tmp_path: Path) -> None:  # fmt: skip
    server = make_server(model_prices=PRICES)
    async with Client(server):
        gateway = lifespan_gateway(server)
        dataset = write_jsonl(tmp_path / "data.jsonl", dataset_rows(4))
        config = EvalConfig(models=(A, "mock/echo"), strategy="consensus")  # mock has no price
        plan = prepare(dataset, load_dataset(dataset), config, tmp_path / "out.jsonl")
        summary = await execute(plan, gateway_query(gateway))

        a, mock = summary.per_model
        assert (a.cost_usd, a.unpriced, mock.cost_usd, mock.unpriced) == (pytest.approx(4 * ROW_A), 0, None, 4)
        assert (summary.cost_usd, summary.unpriced) == (pytest.approx(4 * ROW_A), 4)
        assert "cost $0.000150 + 4 unpriced (saved $0)" in totals_line(plan.state)  # 4 x 37.5 µ$
        assert json.loads(summary.model_dump_json())["per_model"][1]["cost_usd"] is None
