"""The gateway through fastmcp's in-memory Client, with real HTTP from its adapters to the fake provider.

Races are made deterministic with the fake's gates (a held model answers only when the test
says so) and proven with what the fake saw: call order, disconnects, open connections.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
from fastmcp import Client, FastMCP
from fastmcp.client.client import CallToolResult
from mcp import MCPError
from mcp.types import INVALID_PARAMS

from ai_gateway.evaluation.console import lifespan_gateway
from ai_gateway.server import build_server
from ai_gateway.settings import Settings
from tests.fake_provider import Scenario
from tests.integration.conftest import KEYS, MODELS, GatedFake, free_port, vendor
from tests.redis_harness import RedisTarget

PROMPT = "What is the capital of France?"


def statuses(result: CallToolResult) -> list[str]:
    return [r["status"] for r in result.structured_content["results"]]


def text_of(result: CallToolResult) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)


def model_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("model:")]


async def query(client: Client, **arguments: Any) -> CallToolResult:
    return await client.call_tool("query_models", arguments, raise_on_error=False)


# ---------------------------------------------------------------------------- each dialect
# dialect -> (path the fake must see, auth header, its expected value)
WIRE: dict[str, tuple[str, str | None, str | None]] = {
    "openai": ("/v1/chat/completions", "authorization", f"Bearer {KEYS['OPENAI_API_KEY']}"),
    "anthropic": ("/v1/messages", "x-api-key", KEYS["ANTHROPIC_API_KEY"]),
    "gemini": ("/v1beta/models/gemini-2.5-flash:generateContent", "x-goog-api-key", KEYS["GEMINI_API_KEY"]),
    "ollama": ("/api/chat", None, None),
    "groq": ("/v1/chat/completions", "authorization", f"Bearer {KEYS['GROQ_API_KEY']}"),
}


@pytest.mark.parametrize("provider", list(MODELS))
async def test_each_dialect_answers(
    client: Client, fake: GatedFake, provider: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="httpx")
    model_id = MODELS[provider]
    fake.set(vendor(model_id), Scenario(text="Paris"))

    result = await query(client, prompt=PROMPT, models=[model_id])

    assert not result.is_error
    sc = result.structured_content
    assert sc["strategy"] == "first_available"
    assert sc["answer"] == "Paris"
    assert sc["model"] == model_id
    assert sc["consensus"] is None
    (r,) = sc["results"]
    assert r["model"] == model_id
    assert r["status"] == "ok"
    assert r["text"] == "Paris"
    assert r["error"] is None
    assert r["finish_reason"] == "stop"
    # The fake counts words: the prompt has 6, the answer 1.
    assert r["usage"]["input_tokens"] == 6
    assert r["usage"]["output_tokens"] == 1
    assert isinstance(r["latency_ms"], float) and r["latency_ms"] >= 0
    assert sc["usage"]["input_tokens"] == 6 and sc["usage"]["output_tokens"] == 1

    path, auth_header, auth_value = WIRE[provider]
    (call,) = fake.calls
    assert call.path == path
    assert call.model == vendor(model_id)
    if auth_header is None:
        assert "authorization" not in call.headers  # Ollama runs keyless here
    else:
        assert call.headers[auth_header] == auth_value
    if provider == "gemini":
        # The key travels in a header only: never in the URL (which transports and logs print).
        urls = [rec.args[1] for rec in caplog.records if rec.name == "httpx" and rec.args]
        assert urls, "httpx logged no request"
        assert all(str(u).endswith(":generateContent") and not urlsplit(str(u)).query for u in urls)
        assert all(KEYS["GEMINI_API_KEY"] not in str(u) for u in urls)
        assert "authorization" not in call.headers
    if provider == "anthropic":
        assert call.headers["anthropic-version"] == "2023-06-01"
        assert call.json["max_tokens"] > 0  # required by the real API


# ---------------------------------------------------------------------------- listing and catalogue
async def test_tools_resource_and_prompts_are_listed_and_work(client: Client) -> None:
    tools = {t.name: t for t in await client.list_tools()}
    assert {"query_models", "list_models", "gateway_status"} <= set(tools)
    qm = tools["query_models"]
    assert "results" in qm.output_schema["properties"]
    # Inlined and compacted: every nullable field, nested objects included, is a type array, not an anyOf
    # (the one an MCP client validates each result against; see compact_nullables).
    assert "anyOf" not in json.dumps(qm.output_schema) and "$defs" not in qm.output_schema
    assert qm.output_schema["properties"]["results"]["items"]["properties"]["error"]["type"] == ["object", "null"]
    assert {"prompt", "messages", "models", "strategy", "timeout_s", "hedge_after_s"} <= set(
        qm.input_schema["properties"]
    )

    catalogue = (await client.call_tool("list_models", {})).structured_content
    by_name = {p["provider"]: p for p in catalogue["providers"]}
    assert by_name["openai"]["configured"] is True
    assert by_name["openai"]["reason"] == "OPENAI_API_KEY is set"
    assert by_name["mistral"]["configured"] is False
    assert "MISTRAL_API_KEY" in by_name["mistral"]["reason"]
    assert "openai/gpt-4o-mini" in by_name["openai"]["example_models"]

    (content,) = await client.read_resource("gateway://models")
    assert json.loads(content.text) == catalogue
    resources = await client.list_resources()
    assert sorted(str(r.uri) for r in resources) == ["gateway://models", "gateway://status"]

    prompts = {p.name for p in await client.list_prompts()}
    assert {"compare_models", "second_opinion"} <= prompts
    compare = await client.get_prompt(
        "compare_models", {"question": "Is P = NP?", "models": "openai/gpt-4o-mini, anthropic/claude-haiku-4-5"}
    )
    text = compare.messages[0].content.text
    assert "Is P = NP?" in text and "strategy='consensus'" in text
    assert '["openai/gpt-4o-mini", "anthropic/claude-haiku-4-5"]' in text
    second = await client.get_prompt("second_opinion", {"question": "2+2?", "answer": "5", "models": "mock/echo"})
    text = second.messages[0].content.text
    assert "Question: 2+2?" in text and "Proposed answer: 5" in text and 'models=["mock/echo"]' in text


async def test_a_prompt_naming_no_models_says_how_to_choose_them_when_there_are_no_defaults(
    make_server: Callable[..., FastMCP],
) -> None:
    """With no AI_GATEWAY_DEFAULT_MODELS (the default), a prompt naming no models led the agent to a query_models
    call the gateway could only refuse (found by a review); second_opinion took no models at all."""
    async with Client(make_server()) as client:
        asked = [("compare_models", {"question": "Q?"}), ("second_opinion", {"question": "Q?", "answer": "A"})]
        for name, arguments in asked:
            text = (await client.get_prompt(name, arguments)).messages[0].content.text
            assert "this gateway has no default models; call the list_models tool" in text, text
    async with Client(make_server(default_models=["mock/echo", "mock/fixed:4"])) as client:
        text = (await client.get_prompt("second_opinion", {"question": "Q?", "answer": "A"})).messages[0].content.text
        assert text.startswith("Use the query_models tool with strategy='consensus' to ask the question below")


async def test_each_prompt_argument_says_what_to_put_in_it(client: Client) -> None:
    """Every argument carried fastmcp's boilerplate ("Provide a value matching the following JSON schema"), which
    told a client nothing, not even that models is a comma-separated list of provider/model ids."""
    prompts = {p.name: {a.name: a for a in p.arguments or []} for p in await client.list_prompts()}
    compare, second = prompts["compare_models"], prompts["second_opinion"]
    assert (compare["question"].required, compare["models"].required) == (True, False)
    assert "Comma-separated model ids as provider/model" in (compare["models"].description or "")
    assert "question" in (compare["question"].description or "")
    assert "answer to check" in (second["answer"].description or "")
    for argument in (*compare.values(), *second.values()):
        assert argument.description and "JSON schema" not in argument.description


async def test_a_token_before_the_host_of_a_base_url_is_not_listed(
    make_server: Callable[..., FastMCP], environ: dict[str, str]
) -> None:
    """https://TOKEN@host has no ":" in its userinfo: list_models and gateway://models showed the token as given."""
    token = "tok-SECRETUSERONLY123"
    environ["OPENAI_BASE_URL"] = f"https://{token}@api.example/v1"
    async with Client(make_server()) as client:
        catalogue = (await client.call_tool("list_models", {})).structured_content
        (content,) = await client.read_resource("gateway://models")

    openai = next(p for p in catalogue["providers"] if p["provider"] == "openai")
    assert openai["base_url"] == "https://****@api.example/v1"
    assert openai["configured"] is False and "token@" in openai["reason"]
    assert token not in json.dumps(catalogue) and token not in content.text


@pytest.mark.parametrize(
    ("prompt", "arguments", "says"),
    [
        ("second_opinion", {"question": "2+2?"}, "prompt 'second_opinion': missing argument 'answer'; it takes"),
        ("compare_models", {}, "prompt 'compare_models': missing argument 'question'; it takes 'question', 'models'"),
        ("compare_models", {"question": "Is P = NP?", "modles": "a/b"}, "unknown argument 'modles'"),
        ("second_opinion", {"question": " ", "answer": "5"}, "argument 'question' must not be empty"),
    ],
)
async def test_a_prompt_names_its_missing_or_unknown_argument(
    client: Client, caplog: pytest.LogCaptureFixture, prompt: str, arguments: dict[str, str], says: str
) -> None:
    """The caller's mistake, said as one: invalid params (-32602) naming the argument, not an internal error
    with a traceback in the server's log; a misspelt argument is refused, not dropped."""
    caplog.set_level(logging.DEBUG)
    with pytest.raises(MCPError) as caught:
        await client.get_prompt(prompt, arguments)
    assert caught.value.code == INVALID_PARAMS
    assert says in str(caught.value)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


# ---------------------------------------------------------------------------- strategies
async def test_first_available_falls_back_in_order(client: Client, fake: GatedFake) -> None:
    fake.set("fa-1", Scenario.error("server_error"))
    fake.set("fa-2", Scenario(text="second"))
    models = ["openai/fa-1", "anthropic/fa-2", "gemini/fa-3"]

    result = await query(client, prompt=PROMPT, models=models, strategy="first_available")

    assert not result.is_error
    sc = result.structured_content
    assert statuses(result) == ["error", "ok", "skipped"]
    assert sc["answer"] == "second" and sc["model"] == "anthropic/fa-2"
    err = sc["results"][0]["error"]
    assert err["code"] == "upstream_error" and err["status"] == 500 and err["provider"] == "openai"
    assert sc["results"][2]["text"] is None and sc["results"][2]["latency_ms"] is None
    # In order, one after the other: every fa-1 attempt ended before fa-2 was asked; fa-3 never was.
    first, second = fake.calls_for("fa-1"), fake.calls_for("fa-2")
    assert first and len(second) == 1
    assert all(c.finished_at is not None and c.finished_at <= second[0].started_at for c in first)
    assert fake.count("fa-3") == 0


async def test_fastest_answers_from_the_fast_model_and_cancels_the_others(client: Client, fake: GatedFake) -> None:
    fake.set("slow-1", Scenario(delay_ms=5000))
    fake.set("slow-2", Scenario(delay_ms=5000))
    fake.set("fast", Scenario(text="quick"))
    release = fake.hold("fast")
    models = ["anthropic/slow-1", "openai/fast", "gemini/slow-2"]

    call = asyncio.create_task(query(client, prompt=PROMPT, models=models, strategy="fastest"))
    # Every request is in flight before the fast one may answer.
    for model in ("slow-1", "slow-2", "fast"):
        await fake.wait_for_calls(1, model=model)
    release.set()
    result = await call

    assert not result.is_error
    sc = result.structured_content
    assert sc["answer"] == "quick" and sc["model"] == "openai/fast"
    assert statuses(result) == ["cancelled", "ok", "cancelled"]
    for i in (0, 2):
        assert sc["results"][i]["error"]["code"] == "cancelled"
        assert sc["results"][i]["text"] is None
    assert model_tasks() == []  # nothing the strategy started outlives the tool call
    await fake.wait_for_disconnects(2)
    assert sorted(c.model for c in fake.disconnects) == ["slow-1", "slow-2"]


async def test_consensus_decides_early_and_cancels_the_straggler(client: Client, fake: GatedFake) -> None:
    fake.set("c-four", Scenario(text="4"))
    fake.set("c-answer", Scenario(text="The answer is 4."))
    fake.set("c-slow", Scenario(hang=True))
    release = fake.hold("c-four", "c-answer")
    models = ["openai/c-four", "anthropic/c-answer", "gemini/c-slow"]

    call = asyncio.create_task(query(client, prompt="What is 2+2?", models=models, strategy="consensus"))
    await fake.wait_for_calls(1, model="c-slow")
    await fake.wait_for_calls(2)
    release.set()
    result = await call

    assert not result.is_error
    sc = result.structured_content
    assert sc["answer"] == "4" and sc["model"] == "openai/c-four"
    assert statuses(result) == ["ok", "ok", "cancelled"]
    consensus = sc["consensus"]
    assert consensus["reached"] is True and consensus["decided_early"] is True
    assert (consensus["votes"], consensus["answered"], consensus["requested"]) == (2, 2, 3)
    assert consensus["agreement"] == pytest.approx(2 / 3, abs=1e-4)
    assert consensus["groups"] == [
        {"answer": "4", "normalized": "4", "models": ["openai/c-four", "anthropic/c-answer"], "votes": 2}
    ]
    assert model_tasks() == []
    await fake.wait_for_disconnects(1)
    assert [c.model for c in fake.disconnects] == ["c-slow"]


async def test_a_long_call_keeps_the_client_informed_with_progress_notifications(
    make_server: Callable[..., FastMCP], fake: GatedFake
) -> None:
    """A client resetting its timeout on progress keeps waiting: one notification per model answered while
    others are awaited, and heartbeats naming the models still awaited; none once the call has answered."""
    fake.set("p-fast", Scenario(text="Paris"))
    fake.set("p-slow", Scenario(text="Paris"))
    fake.set("p-other", Scenario(text="Lyon"))
    release = fake.hold("p-slow", "p-other")
    models = ["openai/p-fast", "anthropic/p-slow", "gemini/p-other"]
    got: list[tuple[float, float | None, str | None]] = []
    arrived = asyncio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        got.append((progress, total, message))
        arrived.set()

    async def wait_for(pred: Callable[[], bool]) -> None:
        async with asyncio.timeout(5):
            while not pred():
                arrived.clear()
                await arrived.wait()

    async with Client(make_server(progress_interval_s=0.1)) as client:
        call = asyncio.create_task(
            client.call_tool(
                "query_models",
                {"prompt": PROMPT, "models": models, "strategy": "consensus"},
                progress_handler=on_progress,
            )
        )
        await wait_for(lambda: any(p > 1 for p, _, _ in got))  # p-fast's answer, then a heartbeat
        assert not call.done()
        release.set()
        result = await call
        # The server shares this loop: its reporter, cancelled and awaited with the call, can send nothing more.
        assert not [t for t in asyncio.all_tasks() if t.get_name() == "query-progress"]
    assert not result.is_error and result.structured_content["answer"] == "Paris"
    values = [p for p, _, _ in got]
    assert values == sorted(set(values)) and all(total == 3 for _, total, _ in got)
    (answered,) = [m for p, _, m in got if p == 1]
    assert answered.startswith("openai/p-fast answered in ") and answered.endswith("(1 of 3 models done)")
    heartbeats = [m for p, _, m in got if 1 < p < 2]
    assert heartbeats[0].startswith("waiting for anthropic/p-slow, gemini/p-other (")


async def test_consensus_without_majority_has_no_answer(client: Client, fake: GatedFake) -> None:
    texts = {"n-1": "Paris", "n-2": "London", "n-3": "Berlin"}
    for model, text in texts.items():
        fake.set(model, Scenario(text=text))
    models = ["openai/n-1", "anthropic/n-2", "gemini/n-3"]

    result = await query(client, prompt=PROMPT, models=models, strategy="consensus")

    assert not result.is_error
    sc = result.structured_content
    assert sc["answer"] is None and sc["model"] is None
    assert statuses(result) == ["ok", "ok", "ok"]
    assert [r["text"] for r in sc["results"]] == ["Paris", "London", "Berlin"]
    consensus = sc["consensus"]
    assert consensus["reached"] is False and consensus["decided_early"] is False
    assert (consensus["votes"], consensus["answered"], consensus["requested"]) == (1, 3, 3)
    assert [g["answer"] for g in consensus["groups"]] == ["Paris", "London", "Berlin"]


async def test_a_large_result_says_each_answer_once_in_its_text_block(client: Client, fake: GatedFake) -> None:
    """The text block repeated the result's JSON, where a consensus group repeats its first member's text and its
    normalised form: four 40 KB answers made a 640 KB text block beside as much structuredContent. Past a size, the
    text block gives each answer once; structuredContent stays complete."""
    red, blue = ("The sky is red. " * 2_500).strip(), ("The sky is blue. " * 2_500).strip()  # 40 KB each
    for model, text in {"lg-1": red, "lg-2": red, "lg-3": blue, "lg-4": blue}.items():
        fake.set(model, Scenario(text=text))
    models = ["openai/lg-1", "groq/lg-2", "gemini/lg-3", "ollama/lg-4"]  # not anthropic: its default max_tokens

    result = await query(client, prompt=PROMPT, models=models, strategy="consensus", cache="bypass")

    sc = result.structured_content
    assert [r["text"] for r in sc["results"]] == [red, red, blue, blue] and sc["answer"] is None  # a tie
    assert [g["answer"] for g in sc["consensus"]["groups"]] == [red, blue]
    assert all(len(g["normalized"]) > 30_000 for g in sc["consensus"]["groups"])
    shown = json.loads(text_of(result))
    assert shown["note"].startswith("a large result (") and "structuredContent holds the full result" in shown["note"]
    same_as = ["(same as results[0].text)", "(same as results[2].text)"]
    assert [r["text"] for r in shown["results"]] == [red, same_as[0], blue, same_as[1]]
    groups = shown["consensus"]["groups"]
    assert [g["answer"] for g in groups] == same_as
    assert {g["normalized"] for g in groups} == {"(left out of this text block: see structuredContent)"}
    assert len(text_of(result)) < len(red) + len(blue) + 4_000
    # Everything else as in structuredContent; and a small result's text block is its JSON, as it always was.
    for key in ("strategy", "model", "latency_ms", "usage"):
        assert shown[key] == sc[key]
    assert [g["votes"] for g in groups] == [2, 2] and [r["status"] for r in shown["results"]] == ["ok"] * 4
    fake.set("lg-5", Scenario(text="short"))
    small = await query(client, prompt=PROMPT, models=["openai/lg-5"])
    assert json.loads(text_of(small)) == small.structured_content


async def test_consensus_tie_is_not_reached_and_groups_follow_request_order(client: Client, fake: GatedFake) -> None:
    for model, text in {"t-1": "Blue", "t-2": "red", "t-3": "Red.", "t-4": "blue"}.items():
        fake.set(model, Scenario(text=text))
    # The "red" group answers first, so request order (not arrival order) must rank "blue" first.
    release = fake.hold("t-1", "t-4")
    models = ["openai/t-1", "anthropic/t-2", "gemini/t-3", "ollama/t-4"]

    call = asyncio.create_task(query(client, prompt=PROMPT, models=models, strategy="consensus"))
    await fake.wait_until(
        lambda: fake.count() == 4 and all(c.outcome == "ok" for m in ("t-2", "t-3") for c in fake.calls_for(m)),
        "t-2 and t-3 answered",
    )
    release.set()
    result = await call

    sc = result.structured_content
    assert sc["answer"] is None and sc["model"] is None
    consensus = sc["consensus"]
    assert consensus["reached"] is False
    assert (consensus["votes"], consensus["answered"], consensus["requested"]) == (2, 4, 4)
    assert [(g["answer"], g["normalized"], g["models"], g["votes"]) for g in consensus["groups"]] == [
        ("Blue", "blue", ["openai/t-1", "ollama/t-4"], 2),
        ("red", "red", ["anthropic/t-2", "gemini/t-3"], 2),
    ]


async def test_consensus_majority_of_successful_answers_despite_failures(client: Client, fake: GatedFake) -> None:
    fake.set("m-1", Scenario(text="42"))
    fake.set("m-2", Scenario(text="41"))
    fake.set("m-3", Scenario(text="**42.0**"))
    fake.set("m-4", Scenario.error("bad_request"))
    fake.set("m-5", Scenario.error("not_found"))
    models = ["openai/m-1", "anthropic/m-2", "gemini/m-3", "ollama/m-4", "groq/m-5"]

    result = await query(client, prompt=PROMPT, models=models, strategy="consensus")

    assert not result.is_error
    sc = result.structured_content
    assert statuses(result) == ["ok", "ok", "ok", "error", "error"]
    assert [r["error"]["code"] for r in sc["results"][3:]] == ["bad_request", "not_found"]
    assert sc["answer"] == "42" and sc["model"] == "openai/m-1"
    consensus = sc["consensus"]
    assert consensus["reached"] is True and consensus["decided_early"] is False
    assert (consensus["votes"], consensus["answered"], consensus["requested"]) == (2, 3, 5)
    assert consensus["agreement"] == pytest.approx(0.4)
    assert consensus["groups"][0]["models"] == ["openai/m-1", "gemini/m-3"]
    assert fake.count() == 5


async def test_fastest_skips_a_fast_failure_and_takes_the_first_success(client: Client, fake: GatedFake) -> None:
    fake.set("x-fails", Scenario.error("bad_request"))  # not retried: its one failure is the whole story
    fake.set("x-ok", Scenario(text="made it"))
    fake.set("x-hangs", Scenario(hang=True))
    release = fake.hold("x-ok")
    models = ["openai/x-fails", "anthropic/x-ok", "gemini/x-hangs"]

    call = asyncio.create_task(query(client, prompt=PROMPT, models=models, strategy="fastest"))
    # x-ok answers only after x-fails has failed and x-hangs is in flight.
    await fake.wait_until(
        lambda: fake.count("x-hangs") == 1 and [c.outcome for c in fake.calls_for("x-fails")] == ["error"],
        "x-fails failed and x-hangs in flight",
    )
    release.set()
    result = await call

    sc = result.structured_content
    assert statuses(result) == ["error", "ok", "cancelled"]
    assert sc["answer"] == "made it" and sc["model"] == "anthropic/x-ok"
    assert sc["results"][0]["error"]["code"] == "bad_request"
    await fake.wait_for_disconnects(1)
    assert [c.model for c in fake.disconnects] == ["x-hangs"]


@pytest.mark.parametrize("strategy", ["first_available", "fastest", "consensus"])
async def test_a_cancelled_tool_call_abandons_its_provider_requests(
    client: Client, fake: GatedFake, strategy: str
) -> None:
    fake.set("gone-1", Scenario(hang=True))
    fake.set("gone-2", Scenario(hang=True))
    models = ["openai/gone-1", "anthropic/gone-2"]
    expected = 1 if strategy == "first_available" else 2

    call = asyncio.create_task(query(client, prompt=PROMPT, models=models, strategy=strategy))
    await fake.wait_for_calls(expected)
    call.cancel()  # the MCP client gives up on the call
    with pytest.raises(asyncio.CancelledError):
        await call
    await fake.wait_for_disconnects(expected)
    await fake.wait_idle()
    assert fake.count("gone-2") == expected - 1
    # The server is still usable afterwards.
    fake.set("after", Scenario(text="still here"))
    result = await query(client, prompt=PROMPT, models=["openai/after"])
    assert result.structured_content["answer"] == "still here"
    assert model_tasks() == []


@pytest.mark.parametrize("key", ["sk-good-half\x01bad-half", "sk-good-half\u2019bad-half"], ids=["control", "quote"])
async def test_a_key_no_http_header_may_carry_leaves_its_provider_unconfigured_and_unsent(
    fake: GatedFake, environ: dict[str, str], key: str
) -> None:
    """A control character inside a key: aiohttp refused the header ("internal: adapter error (ValueError)");
    httpx sent it, and the server's 400 quoted the header, whose second half no redaction recognised."""
    server = build_server(Settings(_env_file=None), {**environ, "OPENAI_API_KEY": key})
    async with Client(server) as client:
        result = await query(client, prompt=PROMPT, models=["openai/x"])

    text = json.dumps(result.structured_content) + text_of(result)
    assert "OPENAI_API_KEY holds a control or non-ASCII character; set it to the key alone" in text
    assert "half" not in text
    assert fake.count("x") == 0


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_wire_failures_map_to_stable_codes(fake: GatedFake, environ: dict[str, str], transport: str) -> None:
    fake.set("w-empty", Scenario(text="  "))
    fake.set("w-malformed", Scenario(malformed=True))
    fake.set("w-html", Scenario(wrong_content_type=True))
    fake.set("w-closed", Scenario(close_connection=True))
    fake.set("w-trickle", Scenario(text="slowly but surely", trickle_ms=0.5))
    # Nothing listens on this port: the connection is refused.
    env = {**environ, "GROQ_BASE_URL": f"http://127.0.0.1:{free_port()}/v1"}
    server = build_server(Settings(_env_file=None, http_transport=transport), env)
    models = [
        "openai/w-empty",
        "anthropic/w-malformed",
        "gemini/w-html",
        "ollama/w-closed",
        "openai/w-trickle",
        "groq/w-refused",
    ]
    async with Client(server) as client:
        result = await query(client, prompt=PROMPT, models=models, strategy="consensus")

    sc = result.structured_content
    codes = [r["error"]["code"] if r["error"] else r["status"] for r in sc["results"]]
    assert codes == ["empty_response", "malformed_response", "malformed_response", "upstream_error", "ok", "connect"]
    assert sc["answer"] == "slowly but surely"
    assert [r["error"]["provider"] for r in sc["results"] if r["error"]] == [
        "openai",
        "anthropic",
        "gemini",
        "ollama",
        "groq",
    ]
    # consensus gives every vote its retries: transient failures get all 3 attempts, permanent ones 1.
    assert [r["attempts"] for r in sc["results"]] == [1, 3, 3, 3, 1, 3]
    assert fake.count() == 1 + 3 + 3 + 3 + 1


# ---------------------------------------------------------------------------- invalid arguments
OK_MODEL = ["openai/gpt-4o-mini"]
INVALID: list[tuple[str, dict[str, Any], list[str]]] = [
    ("unknown provider", {"prompt": "hi", "models": ["nope/x"]}, ["models[0]", "unknown provider 'nope'"]),
    (
        "unconfigured provider",
        {"prompt": "hi", "models": ["mistral/mistral-small-latest"]},
        ["models[0]", "MISTRAL_API_KEY"],
    ),
    ("no slash", {"prompt": "hi", "models": ["gpt-4o-mini"]}, ["models[0]", "provider/model"]),
    ("empty model part", {"prompt": "hi", "models": ["openai/"]}, ["models[0]"]),
    ("blank model part", {"prompt": "hi", "models": ["openai/gpt-4o-mini", "openai/  "]}, ["models[1]"]),
    ("empty provider part", {"prompt": "hi", "models": ["/gpt-4o-mini"]}, ["models[0]"]),
    ("duplicate model", {"prompt": "hi", "models": ["openai/a", "openai/a"]}, ["models[1]", "twice"]),
    # Gemini takes a model's resource name for its id: one model, which voted twice under consensus.
    (
        "one model under two spellings",
        {"prompt": "hi", "models": [MODELS["gemini"], "gemini/models/gemini-2.5-flash"]},
        ["models[1]", f"is the same model as models[0] ({MODELS['gemini']!r}); each model may appear once"],
    ),
    ("model id with spaces", {"prompt": "hi", "models": ["openai/gpt-4o-mini "]}, ["models[0]", "spaces"]),
    (
        "model id with a space inside",
        {"prompt": "hi", "models": ["openai/ gpt-4o-mini"]},
        ["models[0]", "whitespace inside", "'openai/gpt-4o-mini'"],
    ),
    ("model id with a tab inside", {"prompt": "hi", "models": ["openai/gpt-4o\tmini"]}, ["models[0]", "whitespace"]),
    # Unseen where the id was pasted from, these were sent to the provider as written.
    (
        "model id with a zero-width space",
        {"prompt": "hi", "models": ["openai/gpt-4o-mini\u200b"]},
        ["models[0]", "invisible or control character", "U+200B at position 18", "did you mean 'openai/gpt-4o-mini'?"],
    ),
    (
        "model id with a byte order mark",
        {"prompt": "hi", "models": ["openai/\ufeffgpt-4o-mini"]},
        ["models[0]", "U+FEFF at position 7", "did you mean 'openai/gpt-4o-mini'?"],
    ),
    (
        "model id with a NUL",
        {"prompt": "hi", "models": [*OK_MODEL, "openai/gpt-4o-mini\x00"]},
        ["models[1]", "U+0000", "model ids have none"],
    ),
    ("too many models", {"prompt": "hi", "models": ["openai/a", "openai/b", "openai/c"]}, ["models", "at most 2"]),
    ("empty model list", {"prompt": "hi", "models": []}, ["models"]),
    ("no models and no default", {"prompt": "hi"}, ["models", "AI_GATEWAY_DEFAULT_MODELS"]),
    (
        "prompt and messages",
        {"prompt": "hi", "messages": [{"role": "user", "content": "hi"}], "models": OK_MODEL},
        ["prompt", "not both"],
    ),
    ("neither prompt nor messages", {"models": OK_MODEL}, ["prompt"]),
    ("empty prompt", {"prompt": "   ", "models": OK_MODEL}, ["prompt", "empty"]),
    ("empty messages", {"messages": [], "models": OK_MODEL}, ["messages"]),
    (
        "no user message",
        {"messages": [{"role": "system", "content": "be brief"}], "models": OK_MODEL},
        ["messages", "user"],
    ),
    ("bad role", {"messages": [{"role": "robot", "content": "hi"}], "models": OK_MODEL}, ["role"]),
    (
        "blank message content",
        {"messages": [{"role": "user", "content": "  "}], "models": OK_MODEL},
        ["messages[0].content"],
    ),
    (
        "extra message field",
        {"messages": [{"role": "user", "content": "hi", "name": "x"}], "models": OK_MODEL},
        ["name"],
    ),
    ("blank system", {"prompt": "hi", "system": " ", "models": OK_MODEL}, ["system"]),
    # Half a surrogate pair ("\ud83d" in JSON) is no character: no provider could be sent it, no cache key made.
    ("lone surrogate in prompt", {"prompt": "hi \ud83d", "models": OK_MODEL}, ["prompt", "U+D83D", "Unicode"]),
    ("lone surrogate in system", {"prompt": "hi", "system": "\udc00", "models": OK_MODEL}, ["system", "U+DC00"]),
    (
        "lone surrogate in a message",
        {"messages": [{"role": "user", "content": "a\ud800"}], "models": OK_MODEL},
        ["messages", "content", "unicode"],
    ),
    ("lone surrogate in a model id", {"prompt": "hi", "models": ["openai/gpt\ud800"]}, ["models[0]", "U+D800"]),
    ("temperature too high", {"prompt": "hi", "temperature": 5, "models": OK_MODEL}, ["temperature"]),
    # Anthropic's API accepts 0 to 1: every Claude model of the call would fail with the vendor's 400.
    (
        "temperature above a model's range",
        {"prompt": "hi", "temperature": 1.5, "models": ["openai/gpt-4o-mini", MODELS["anthropic"]]},
        ["temperature", f"{MODELS['anthropic']!r} accepts 0 to 1; got 1.5"],
    ),
    ("max_tokens zero", {"prompt": "hi", "max_tokens": 0, "models": OK_MODEL}, ["max_tokens"]),
    ("timeout zero", {"prompt": "hi", "timeout_s": 0, "models": OK_MODEL}, ["timeout_s"]),
    ("unknown strategy", {"prompt": "hi", "strategy": "majority", "models": OK_MODEL}, ["strategy"]),
    ("unknown argument", {"prompt": "hi", "models": OK_MODEL, "top_p": 0.5}, ["top_p"]),
    # JSON's true was taken for 1: max_tokens 1 went to the provider, sample true was paid for as sample 1.
    ("max_tokens true", {"prompt": "hi", "max_tokens": True, "models": OK_MODEL}, ["max_tokens", "got true"]),
    ("sample true", {"prompt": "hi", "temperature": 0.5, "sample": True, "models": OK_MODEL}, ["sample", "got true"]),
    ("temperature false", {"prompt": "hi", "temperature": False, "models": OK_MODEL}, ["temperature", "got false"]),
    ("timeout true", {"prompt": "hi", "timeout_s": True, "models": OK_MODEL}, ["timeout_s", "got true"]),
    ("hedge true", {"prompt": "hi", "hedge_after_s": True, "models": OK_MODEL}, ["hedge_after_s", "got true"]),
]


@pytest.mark.parametrize(("arguments", "needles"), [case[1:] for case in INVALID], ids=[case[0] for case in INVALID])
async def test_invalid_arguments_name_the_field_and_call_no_provider(
    make_server: Callable[..., FastMCP], fake: GatedFake, arguments: dict[str, Any], needles: list[str]
) -> None:
    async with Client(make_server(max_models=2)) as client:
        result = await query(client, **arguments)
    assert result.is_error
    assert result.structured_content is None
    text = text_of(result)
    for needle in needles:
        assert needle in text
    assert fake.count() == 0


async def test_a_wrong_default_model_is_blamed_on_the_setting_not_on_the_caller(
    make_server: Callable[..., FastMCP], fake: GatedFake
) -> None:
    """A call naming no models got "invalid argument models[1]", an argument it never sent. (A default that names no
    provider stops start-up: tests/core/test_registry.py.)"""
    server = make_server(default_models=["openai/gpt-4o-mini", "mock/fail:500"])
    async with Client(server) as client:
        result = await query(client, prompt=PROMPT)
    assert result.is_error
    assert "AI_GATEWAY_DEFAULT_MODELS[1]: 'mock/fail:500': fail needs one of: auth," in text_of(result)
    assert fake.count() == 0


async def test_both_spellings_of_a_gemini_model_share_one_cache_entry(
    make_server: Callable[..., FastMCP], fake: GatedFake
) -> None:
    """The cache was keyed by the name as written: asking models/gemini-2.5-flash paid again for an answer
    already held for gemini-2.5-flash."""
    fake.set("gemini-2.5-flash", Scenario(text="Paris"))
    server = make_server()
    async with Client(server) as client:
        first = await query(client, prompt=PROMPT, models=[MODELS["gemini"]])
        await lifespan_gateway(server).cache.flush()  # stored off the response path
        again = await query(client, prompt=PROMPT, models=["gemini/models/gemini-2.5-flash"])

    assert not first.is_error and not again.is_error
    (result,) = again.structured_content["results"]
    assert (result["model"], result["cached"], result["text"]) == ("gemini/models/gemini-2.5-flash", True, "Paris")
    assert fake.count() == 1


# ---------------------------------------------------------------------------- conversations
CONVERSATION = [
    {"role": "system", "content": "Answer in one word."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Capital of France?"},
]


async def test_messages_and_system_reach_each_vendor_in_its_own_shape(client: Client, fake: GatedFake) -> None:
    models = list(MODELS.values())
    result = await query(
        client,
        messages=CONVERSATION,
        system="You are terse.",
        temperature=0.25,
        max_tokens=32,
        models=models,
        strategy="consensus",
    )

    assert not result.is_error
    # The fake echoes the last user message: every model saw the conversation's last turn.
    assert result.structured_content["answer"] == "Capital of France?"
    assert result.structured_content["consensus"]["votes"] == 5
    body = {c.dialect if c.model != vendor(MODELS["groq"]) else "groq": c.json for c in fake.calls}
    chat = [
        {"role": "system", "content": "You are terse."},
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Capital of France?"},
    ]
    # OpenAI and compatible hosts: the system parameter leads the message list.
    assert body["openai"]["messages"] == chat
    assert body["openai"]["temperature"] == 0.25
    assert body["openai"]["max_completion_tokens"] == 32  # OpenAI's name for it
    assert "max_tokens" not in body["openai"]
    assert body["groq"]["messages"] == chat
    assert body["groq"]["max_tokens"] == 32
    # Anthropic: system prompts lifted out of the messages into `system`.
    assert body["anthropic"]["system"] == "You are terse.\n\nAnswer in one word."
    assert body["anthropic"]["messages"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Capital of France?"},
    ]
    assert body["anthropic"]["max_tokens"] == 32 and body["anthropic"]["temperature"] == 0.25
    # Gemini: systemInstruction, "model" for the assistant role, generationConfig.
    assert body["gemini"]["systemInstruction"] == {"parts": [{"text": "You are terse.\n\nAnswer in one word."}]}
    assert body["gemini"]["contents"] == [
        {"role": "user", "parts": [{"text": "Hi"}]},
        {"role": "model", "parts": [{"text": "Hello!"}]},
        {"role": "user", "parts": [{"text": "Capital of France?"}]},
    ]
    assert body["gemini"]["generationConfig"] == {"temperature": 0.25, "maxOutputTokens": 32}
    # Ollama: native options, never streaming.
    assert body["ollama"]["messages"] == chat
    assert body["ollama"]["options"] == {"temperature": 0.25, "num_predict": 32}
    assert body["ollama"]["stream"] is False


# ---------------------------------------------------------------------------- failures
async def test_all_models_failing_is_an_error_that_keeps_every_outcome(
    make_server: Callable[..., FastMCP], fake: GatedFake
) -> None:
    fake.set("f-1", Scenario.error("rate_limited", retry_after="7"))
    fake.set("f-2", Scenario.error("overloaded"))
    fake.set("f-3", Scenario.error("not_found"))
    models = ["openai/f-1", "anthropic/f-2", "gemini/f-3"]

    async with Client(make_server(max_attempts=1)) as client:  # each racer retries on its own: none here (7 s)
        result = await query(client, prompt=PROMPT, models=models, strategy="fastest")

    assert result.is_error
    sc = result.structured_content
    assert sc["answer"] is None and sc["model"] is None
    assert statuses(result) == ["error", "error", "error"]
    errors = [r["error"] for r in sc["results"]]
    assert [e["code"] for e in errors] == ["rate_limited", "overloaded", "not_found"]
    assert [e["status"] for e in errors] == [429, 529, 404]
    assert errors[0]["retry_after_s"] == 7
    text = text_of(result)
    assert text.startswith("no model answered (3 tried):")
    for model, code in zip(models, ["rate_limited", "overloaded", "not_found"], strict=True):
        assert f"- {model}: {code}: " in text


async def test_timeout_s_is_a_deadline_for_a_hanging_model(
    make_server: Callable[..., FastMCP], fake: GatedFake
) -> None:
    fake.set("hangs", Scenario(hang=True))
    async with Client(make_server(min_timeout_s=0.05)) as client:
        result = await query(client, prompt=PROMPT, models=["openai/hangs"], timeout_s=0.2)
        assert result.is_error
        (r,) = result.structured_content["results"]
        assert r["status"] == "error"
        assert r["error"]["code"] == "deadline"
        assert "0.2s deadline" in r["error"]["message"]
        await fake.wait_for_disconnects(1)  # the hung request was abandoned, its connection closed


async def test_the_error_text_counts_only_the_models_that_were_tried(
    make_server: Callable[..., FastMCP], fake: GatedFake
) -> None:
    fake.set("hangs", Scenario(hang=True))
    async with Client(make_server(min_timeout_s=0.05)) as client:
        result = await query(client, prompt=PROMPT, models=["openai/hangs", "anthropic/late"], timeout_s=0.2)
    assert statuses(result) == ["error", "skipped"]  # the deadline passed before "late" could start
    assert text_of(result).startswith("no model answered (1 tried, 1 not started):")


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_read_timeout_is_a_provider_timeout_not_the_deadline(
    make_server: Callable[..., FastMCP], fake: GatedFake, transport: str
) -> None:
    fake.set("silent", Scenario(hang=True))
    fake.set("fine", Scenario(text="fine"))
    async with Client(make_server(read_timeout_s=0.2, http_transport=transport)) as client:
        result = await query(client, prompt=PROMPT, models=["openai/silent", "anthropic/fine"], timeout_s=30)
    assert statuses(result) == ["error", "ok"]
    error = result.structured_content["results"][0]["error"]
    assert error["code"] == "timeout" and error["provider"] == "openai"  # retryable, unlike "deadline"
    assert result.structured_content["answer"] == "fine"


async def test_first_available_skips_the_rest_once_the_deadline_is_spent(
    make_server: Callable[..., FastMCP], fake: GatedFake
) -> None:
    fake.set("hangs", Scenario(hang=True))
    async with Client(make_server(min_timeout_s=0.05)) as client:
        result = await query(client, prompt=PROMPT, models=["openai/hangs", "anthropic/later"], timeout_s=0.2)
    assert statuses(result) == ["error", "skipped"]
    later = result.structured_content["results"][1]
    assert later["error"]["code"] == "deadline"
    assert fake.count("later") == 0


# ---------------------------------------------------------------------------- secrets
LEAKS = [
    ("openai", "OPENAI_API_KEY"),
    ("anthropic", "ANTHROPIC_API_KEY"),
    ("gemini", "GEMINI_API_KEY"),
    ("ollama", None),
    ("groq", "GROQ_API_KEY"),
]


@pytest.mark.parametrize(("provider", "key_var"), LEAKS, ids=[p for p, _ in LEAKS])
async def test_no_key_leaks_from_an_error_that_echoes_it(
    client: Client, fake: GatedFake, caplog: pytest.LogCaptureFixture, provider: str, key_var: str | None
) -> None:
    caplog.set_level(logging.DEBUG)
    model_id = MODELS[provider]
    # Ollama holds no key; it echoes another provider's key that is part of the same call.
    key = KEYS[key_var or "GEMINI_API_KEY"]
    fake.set(vendor(model_id), Scenario.error("auth", message=f"invalid api key {key} (check it)"))
    fake.set("leak-plain", Scenario(fail_status=400, fail_body={"error": f"bad key: {key}"}))
    fake.set("leak-ok", Scenario(text="fine"))
    models = [model_id, "gemini/leak-plain", "openai/leak-ok"]

    failed = await query(client, prompt=PROMPT, models=models[:2], strategy="consensus")
    answered = await query(client, prompt=PROMPT, models=models, strategy="consensus")

    assert failed.is_error and not answered.is_error
    assert failed.structured_content["results"][0]["error"]["message"] == "invalid api key [REDACTED] (check it)"
    for result in (failed, answered):
        dumped = json.dumps(result.structured_content) + text_of(result)
        assert "invalid api key" in dumped  # the vendor's message is kept, only the key goes
        for secret in KEYS.values():
            assert secret not in dumped
    logged = "\n".join(f"{rec.getMessage()} {rec.exc_text or ''} {rec.args!r}" for rec in caplog.records)
    for secret in KEYS.values():
        assert secret not in logged


async def test_no_key_leaks_from_an_answer_or_a_shared_error_that_echoes_it(
    make_server: Callable[..., FastMCP], fake: GatedFake, redis_target: RedisTarget
) -> None:
    """A provider that echoed the request's headers in its answer (a debugging proxy, a misconfigured host) handed
    the key to the caller, to Redis and so to every process reading the entry; an error echoing another provider's
    key was shared with other processes as it was (a review's reproducers)."""
    openai_key, groq_key = KEYS["OPENAI_API_KEY"], KEYS["GROQ_API_KEY"]
    example = "Authorization: Bearer YOUR_API_TOKEN_HERE"  # the model's content, not a credential: kept
    fake.set("echo-a", Scenario(text=f"You sent: Authorization: Bearer {openai_key}. {example}"))
    fake.set("echo-b", Scenario(text=f"You sent: Authorization: Bearer {openai_key}. {example}"))
    fake.set("cross", Scenario(fail_status=400, fail_body={"error": f"bad key: {groq_key}"}))
    models = ["openai/echo-a", "anthropic/echo-b"]
    async with Client(make_server(**redis_target.settings())) as client:
        answered = await query(client, prompt=PROMPT, models=models, strategy="consensus")
        failed = await query(client, prompt=PROMPT, models=["openai/cross"])
        await lifespan_gateway(client.transport.server).cache.flush()
        replayed = await query(client, prompt=PROMPT, models=models, strategy="consensus", cache="only")
    assert answered.structured_content["answer"] == f"You sent: Authorization: Bearer [REDACTED]. {example}"
    assert failed.structured_content["results"][0]["error"]["message"] == "bad key: [REDACTED]"
    assert [r["cached"] for r in replayed.structured_content["results"]] == [True, True]
    stored = redis_target.items()
    assert len(stored) == 3  # two answers and the shared error
    for shown in (json.dumps(r.structured_content) + text_of(r) for r in (answered, failed, replayed)):
        assert openai_key not in shown and groq_key not in shown
    for value in stored.values():
        assert b"[REDACTED]" in (value or b"")
        for secret in KEYS.values():
            assert secret.encode() not in (value or b"")


# ---------------------------------------------------------------------------- clean-up
async def test_no_task_or_connection_outlives_the_call_or_the_client(
    make_server: Callable[..., FastMCP], fake: GatedFake
) -> None:
    fake.set("slow", Scenario(hang=True))
    fake.set("fast-a", Scenario(text="yes"))
    fake.set("fast-b", Scenario(text="Yes."))
    release = fake.hold("fast-a", "fast-b")
    async with Client(make_server()) as client:
        for strategy in ("fastest", "consensus"):
            call = asyncio.create_task(
                query(
                    client,
                    prompt=PROMPT,
                    models=["openai/fast-a", "anthropic/fast-b", "gemini/slow"],
                    strategy=strategy,
                    cache="bypass",  # the same question twice: both rounds must reach the providers
                )
            )
            await fake.wait_until(
                lambda: (
                    fake.count("slow") == fake.count("fast-a") == fake.count("fast-b") > 0 and fake.active_requests == 3
                ),
                "all three requests in flight",
            )
            release.set()
            result = await call
            assert not result.is_error
            assert statuses(result)[2] == "cancelled"
            assert model_tasks() == []
            release.clear()
        await fake.wait_for_disconnects(2)
        assert fake.open_connections > 0  # keep-alive connections of the shared client
    # The lifespan closed the shared client: no request and no TCP connection is left open.
    await fake.wait_idle(connections=True)
    assert fake.open_connections == 0
