"""``python -m ai_gateway.cli`` as subprocesses against the fake provider running in the test's loop.

Process start-up dominates, so every run of the module is started at once by one fixture and
each test checks one run. Runs use distinct model names, so their fake calls never mix.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from tests.fake_provider import Call, Scenario
from tests.integration.conftest import KEYS, GatedFake, run_cli, subprocess_env

pytestmark = pytest.mark.asyncio(loop_scope="module")


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


@dataclass(frozen=True)
class Runs:
    fake: GatedFake
    runs: dict[str, Run]

    def __getitem__(self, name: str) -> Run:
        return self.runs[name]

    def calls(self, *models: str) -> list[Call]:
        return [c for c in self.fake.calls if c.model in models]


DOTENV = """\
# A .env in the working directory fills in what the process environment does not set.
MISTRAL_API_KEY=test-MISTRAL-from-dotenv-0123456789
AI_GATEWAY_DEFAULT_MODELS=openai/gpt-4o-mini,groq/llama-3.3-70b-versatile
"""

RUNS: dict[str, tuple[list[str], dict[str, str]]] = {
    "json": (
        ["query", "What is 2+2?", "--models", "openai/j-four,anthropic/j-answer", "--strategy", "consensus", "--json"],
        {},
    ),
    "summary": (
        [
            "query",
            "Capital of France?",
            "--models",
            "openai/s-first,gemini/s-paris,anthropic/s-never",
            "--system",
            "Be brief.",
            "--max-tokens",
            "50",
        ],
        {"AI_GATEWAY_MODEL_PRICES": '{"gemini/*": {"input_per_mtok": 1000000, "output_per_mtok": 0}}'},
    ),
    "models": (["models"], {}),
    "unknown": (["query", "hi", "--models", "nope/some-model"], {}),
    "leak": (["query", "hi", "--models", "gemini/l-bad", "--json", "--log-level", "debug"], {}),
    "typo": (["models"], {"AI_GATEWAY_AUTH_TOKN": "s3cret-typo-value", "ai_gateway_log_levle": "debug"}),
    "bad-token": (["models"], {"AI_GATEWAY_AUTH_TOKEN": "tok-\x01-typed"}),
    "clash": (
        ["query", "hi", "--models", "openai/c-never"],
        {"AI_GATEWAY_CUSTOM_PROVIDERS": '{"openai": {"base_url": "http://127.0.0.1:9/v1"}}'},
    ),
    "eval-setting": (
        ["eval", "data.jsonl", "--models", "openai/e-never", "--out", "out.jsonl"],
        {"AI_GATEWAY_MAX_MODELS": "100"},
    ),
    "none-enabled": (
        ["models"],
        {"AI_GATEWAY_DISABLED_PROVIDERS": "anthropic,deepseek,fireworks,gemini,groq,lmstudio,mistral,mock,ollama,"
                                          "openai,openrouter,together,vllm"},
    ),
    "disabled-typo": (["query", "hi", "--models", "openai/c-never"], {"AI_GATEWAY_DISABLED_PROVIDERS": "grok"}),
    "price-key": (
        ["query", "hi", "--models", "openai/c-never"],
        {"AI_GATEWAY_MODEL_PRICES": '{"OpenAI/c-never": {"input_per_mtok": 1, "output_per_mtok": 1}}'},
    ),
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cli(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Runs]:
    async with GatedFake() as fake:
        fake.set("j-four", Scenario(text="4"))
        fake.set("j-answer", Scenario(text="The answer is 4."))
        fake.set("s-first", Scenario.error("rate_limited"))
        fake.set("s-paris", Scenario(text="Paris is the capital."))
        # Not shaped like a key: only the gateway's own knowledge of it can redact it.
        fake.set("l-bad", Scenario.error("auth", message=f"API key not valid: {KEYS['GEMINI_API_KEY']}"))
        cwds: dict[str, Path] = {}
        for name in RUNS:
            cwds[name] = tmp_path_factory.mktemp(f"cli-{name}")  # an empty directory: no .env
        (cwds["models"] / ".env").write_text(DOTENV)
        (cwds["eval-setting"] / "data.jsonl").write_text('{"prompt": "hi"}\n')
        results = await asyncio.gather(
            *(
                run_cli(*args, env=subprocess_env(fake.url, **extra), cwd=cwds[name])
                for name, (args, extra) in RUNS.items()
            )
        )
        yield Runs(fake, {name: Run(*result) for name, result in zip(RUNS, results, strict=True)})


async def test_query_json_consensus(cli: Runs) -> None:
    run = cli["json"]
    assert run.code == 0, run.err
    result = json.loads(run.out)
    assert result["strategy"] == "consensus"
    assert result["answer"] == "4" and result["model"] == "openai/j-four"
    assert [(r["model"], r["status"], r["text"]) for r in result["results"]] == [
        ("openai/j-four", "ok", "4"),
        ("anthropic/j-answer", "ok", "The answer is 4."),
    ]
    consensus = result["consensus"]
    assert consensus["reached"] is True
    assert (consensus["votes"], consensus["answered"], consensus["requested"]) == (2, 2, 2)
    assert result["usage"]["input_tokens"] == 6  # the fake counts 3 words in "What is 2+2?", sent to 2 models
    calls = cli.calls("j-four", "j-answer")
    assert sorted(c.path for c in calls) == ["/v1/chat/completions", "/v1/messages"]
    assert all(c.json["messages"][-1]["content"] == "What is 2+2?" for c in calls)


async def test_query_prints_a_readable_summary(cli: Runs) -> None:
    run = cli["summary"]
    assert run.code == 0, run.err
    lines = run.out.splitlines()
    assert lines[0] == "Paris is the capital."
    assert any(line.startswith("answered by gemini/s-paris (first_available, ") for line in lines)
    rows = {line.split()[1]: line.split()[0] for line in lines if line.startswith("  ")}
    assert rows == {"openai/s-first": "error", "gemini/s-paris": "ok", "anthropic/s-never": "skipped"}
    assert "rate_limited: Rate limit reached" in run.out
    (cost,) = [line for line in lines if line.startswith("cost ")]  # $1 per input token of the answer
    assert re.fullmatch(r"cost \$[1-9][0-9]*\.00", cost), cost
    (gemini_call,) = cli.calls("s-paris")
    assert gemini_call.json["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert gemini_call.json["generationConfig"] == {"maxOutputTokens": 50}
    assert cli.calls("s-never") == []


async def test_models_lists_configured_and_unconfigured_providers(cli: Runs) -> None:
    run = cli["models"]
    assert run.code == 0, run.err
    rows = {line.split()[0]: line for line in run.out.splitlines() if line.strip() and not line.startswith("default")}
    assert "not configured" not in rows["openai"] and "OPENAI_API_KEY is set" in rows["openai"]
    assert "openai/gpt-4o-mini" in rows["openai"]
    assert "GEMINI_API_KEY is set" in rows["gemini"]
    assert "not configured" in rows["deepseek"] and "DEEPSEEK_API_KEY is not set" in rows["deepseek"]
    # From the .env in the working directory: a key and a setting.
    assert "not configured" not in rows["mistral"] and "MISTRAL_API_KEY is set" in rows["mistral"]
    assert "default models: openai/gpt-4o-mini, groq/llama-3.3-70b-versatile" in run.out
    for secret in [*KEYS.values(), "test-MISTRAL-from-dotenv-0123456789"]:
        assert secret not in run.out + run.err


async def test_models_with_every_provider_disabled_says_so(cli: Runs) -> None:
    """It ended in a traceback: max() of no providers."""
    run = cli["none-enabled"]
    assert (run.code, run.err) == (0, "")
    assert run.out.startswith("no providers: every one is disabled (AI_GATEWAY_DISABLED_PROVIDERS)\n")


async def test_unknown_model_exits_non_zero_naming_the_field(cli: Runs) -> None:
    run = cli["unknown"]
    assert run.code != 0
    assert run.out == ""
    assert "models[0]" in run.err and "unknown provider 'nope'" in run.err
    assert cli.calls("some-model") == []


async def test_all_failed_query_exits_1_and_never_prints_a_key(cli: Runs) -> None:
    run = cli["leak"]
    assert run.code == 1, run.err
    result = json.loads(run.out)
    assert result["answer"] is None
    (r,) = result["results"]
    assert r["status"] == "error" and r["error"]["code"] == "auth"
    assert r["error"]["message"] == "API key not valid: [REDACTED]"
    assert " DEBUG " in run.err  # debug logging was on, on stderr
    for secret in KEYS.values():
        assert secret not in run.out
        assert secret not in run.err


async def test_a_misspelt_setting_stops_the_command_naming_the_setting_it_meant(cli: Runs) -> None:
    """Unknown names were ignored: AI_GATEWAY_AUTH_TOKN served with no token at all, and said nothing."""
    run = cli["typo"]
    assert run.code == 2 and run.out == ""
    assert run.err.strip() == (
        "ai-gateway: invalid setting: AI_GATEWAY_AUTH_TOKN is not a setting (did you mean AI_GATEWAY_AUTH_TOKEN?); "
        "ai_gateway_log_levle is not a setting (did you mean AI_GATEWAY_LOG_LEVEL?); "
        ".env.example lists every setting"
    )
    assert "s3cret" not in run.err


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("clash", "ai-gateway: custom_providers.openai: the name is taken by a registered provider; rename it"),
        ("eval-setting", "ai-gateway: invalid setting: AI_GATEWAY_MAX_MODELS: Input should be less than or equal to 6"),
        ("disabled-typo", "ai-gateway: AI_GATEWAY_DISABLED_PROVIDERS: 'grok' names no provider 'grok' (did you mean "
                          "groq?); provider names: anthropic,"),
        ("price-key", "ai-gateway: AI_GATEWAY_MODEL_PRICES: key 'OpenAI/c-never' names no provider 'OpenAI' (write "
                      "openai/...); provider names: anthropic, deepseek,"),
    ],
)
async def test_bad_configuration_exits_2_as_bad_input_does_never_1_which_means_no_answer(
    cli: Runs, name: str, message: str
) -> None:
    """A script told a misconfigured gateway from one whose models all failed only by parsing stderr: both exited 1."""
    run = cli[name]
    assert (run.code, run.out) == (2, "") and run.err.startswith(message)
    assert cli.calls("c-never", "e-never") == []


async def test_an_auth_token_no_http_header_can_carry_is_refused_at_start(cli: Runs) -> None:
    run = cli["bad-token"]
    assert run.code == 2
    assert "AI_GATEWAY_AUTH_TOKEN" in run.err and "control or non-ASCII character" in run.err
    assert "typed" not in run.err
