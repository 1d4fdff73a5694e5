"""``ai-gateway serve --transport http`` as a real subprocess, reached by three different MCP clients.

The fake provider runs in this module's event loop; the gateway subprocess reaches it over TCP.
The module's gateways (plain, with a bearer token, logging to files) start together, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import httpx2
import pytest
import pytest_asyncio
from fastmcp import Client as FastMCPClient
from fastmcp.client.transports import StreamableHttpTransport
from mcp import Client, ClientSession, MCPError
from mcp.client.streamable_http import streamable_http_client

from ai_gateway import __version__
from ai_gateway.pricing import usd
from tests.cache.support import until
from tests.fake_provider import Scenario
from tests.integration.conftest import (
    CLI,
    KEYS,
    MODELS,
    GatedFake,
    ServerProcess,
    http_servers,
    run_cli,
    stop_process,
    subprocess_env,
    vendor,
    wait_healthy,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

TOKEN = "tok-integration-5f3b2a9c41d8e7"
NAMED = "gw.example.test"  # the name a reverse proxy forwards the authed gateway's requests under


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def module_fake() -> AsyncIterator[GatedFake]:
    async with GatedFake() as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_fake(module_fake: GatedFake) -> None:
    module_fake.reset()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def servers(module_fake: GatedFake, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Servers]:
    """Three gateways started side by side: plain, with a bearer token (read from a file with its newline, and
    a host name to accept), and logging at info into files, bound to every address."""
    cwd: Path = tmp_path_factory.mktemp("http-gateway")  # no .env to pick up
    logs = Servers.log_paths(cwd)
    plain = {"env": subprocess_env(module_fake.url), "cwd": cwd}
    authed_env = subprocess_env(module_fake.url, AI_GATEWAY_AUTH_TOKEN=f"{TOKEN}\n", AI_GATEWAY_ALLOWED_HOSTS=NAMED)
    authed = {"env": authed_env, "cwd": cwd}
    with logs[0].open("wb") as out, logs[1].open("wb") as err:
        logged_env = subprocess_env(module_fake.url, AI_GATEWAY_LOG_LEVEL="info")
        logged = {"env": logged_env, "cwd": cwd, "stdout": out, "stderr": err, "host": "0.0.0.0"}
        async with http_servers(plain, authed, logged) as (p, a, lg):
            yield Servers(p, a, lg, logs)


@dataclass
class Servers:
    plain: ServerProcess
    authed: ServerProcess
    logged: ServerProcess
    logs: tuple[Path, Path]  # the logged server's stdout and stderr

    @staticmethod
    def log_paths(directory: Path) -> tuple[Path, Path]:
        return directory / "stdout.log", directory / "stderr.log"


@pytest.fixture
def gateway(servers: Servers) -> ServerProcess:
    return servers.plain


def assert_answer(structured: dict, model_id: str, text: str) -> None:
    assert structured["strategy"] == "first_available"
    assert structured["answer"] == text and structured["model"] == model_id
    (r,) = structured["results"]
    assert r["status"] == "ok" and r["text"] == text and r["usage"]["output_tokens"] == len(text.split())


async def test_health_reports_version_and_configured_providers(gateway: ServerProcess) -> None:
    base_url, first = gateway.base_url, gateway.health
    assert first is not None
    async with httpx.AsyncClient() as http:
        resp = await http.get(f"{base_url}/health")
    for r in (first, resp):
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert body["status"] == "ok" and body["version"] == __version__
    assert {"openai", "anthropic", "gemini", "ollama", "groq"} <= set(body["providers"]["configured"])
    assert "mistral" in body["providers"]["unconfigured"]
    for key in KEYS.values():
        assert key not in resp.text


async def test_mcp_sdk_client_lists_and_calls(gateway: ServerProcess, module_fake: GatedFake) -> None:
    base_url = gateway.base_url
    module_fake.set("gpt-4o-mini", Scenario(text="over http"))
    async with (
        httpx2.AsyncClient(timeout=httpx2.Timeout(30)) as http,
        Client(streamable_http_client(f"{base_url}/mcp", http_client=http)) as client,
    ):
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert {"query_models", "list_models"} <= set(tools)
        assert "results" in tools["query_models"].output_schema["properties"]

        result = await client.call_tool("query_models", {"prompt": "hi there", "models": [MODELS["openai"]]})
        assert not result.is_error
        assert_answer(result.structured_content, MODELS["openai"], "over http")

        bad = await client.call_tool("query_models", {"prompt": "hi", "models": ["openai/x"], "temperature": 9})
        assert bad.is_error
        assert "temperature" in bad.content[0].text
        unknown = await client.call_tool("query_models", {"prompt": "hi", "models": ["nope/x"]})
        assert unknown.is_error
        assert "models[0]" in unknown.content[0].text
    (call,) = module_fake.calls  # invalid calls never reached a provider
    assert call.headers["authorization"] == f"Bearer {KEYS['OPENAI_API_KEY']}"


async def test_low_level_client_session(gateway: ServerProcess, module_fake: GatedFake) -> None:
    base_url = gateway.base_url
    model_id = MODELS["anthropic"]
    module_fake.set(vendor(model_id), Scenario(text="from a session"))
    async with (
        httpx2.AsyncClient(timeout=httpx2.Timeout(30)) as http,
        streamable_http_client(f"{base_url}/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        result = await session.call_tool("query_models", {"prompt": "hello", "models": [model_id]})
    assert not result.is_error
    assert_answer(result.structured_content, model_id, "from a session")
    assert [c.path for c in module_fake.calls] == ["/v1/messages"]


async def test_run_eval_over_http_reports_progress_resumes_and_replays(
    servers: Servers, module_fake: GatedFake
) -> None:
    """An agent on the official SDK client runs an evaluation on an HTTP deployment: progress per query, the summary,
    then a rerun that resumes everything and a --cache only replay, neither calling the provider."""
    directory = servers.logs[0].parent  # the server's working directory: its evaluation directory
    rows = [{"id": i, "prompt": f"eval over http {i}", "expected": f"eval over http {i}"} for i in range(1, 4)]
    (directory / "http-eval.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    progress: list[tuple[float, float | None, str | None]] = []
    finished = asyncio.Event()

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total, message))
        if done == total:
            finished.set()

    arguments = {"path": "http-eval.jsonl", "models": [MODELS["openai"]], "concurrency": 1}
    async with (
        httpx2.AsyncClient(timeout=httpx2.Timeout(30)) as http,
        Client(streamable_http_client(f"{servers.plain.base_url}/mcp", http_client=http)) as client,
    ):
        first = await client.call_tool("run_eval", arguments, progress_callback=on_progress)
        await asyncio.wait_for(finished.wait(), 30)  # notifications may be handled after the result arrives
        again = await client.call_tool("run_eval", arguments)
        replay_arguments = {**arguments, "cache": "only", "out": "http-replay.jsonl"}
        replay = await client.call_tool("run_eval", replay_arguments)
    assert not (first.is_error or again.is_error or replay.is_error)
    summary = first.structured_content
    assert (summary["ran"], summary["answered"], summary["accuracy"]) == (3, 3, 1.0)
    assert summary["results_path"] == str(directory / "http-eval.results.jsonl")
    assert sorted(p[:2] for p in progress) == [(1.0, 3.0), (2.0, 3.0), (3.0, 3.0)]
    last = next(message for done, _, message in progress if done == 3)
    assert summary["cost_usd"] > 0 and last == f"3/3 queries, cache hits 0, cost {usd(summary['cost_usd'])}"
    assert (again.structured_content["resumed"], again.structured_content["ran"]) == (3, 0)
    assert (replay.structured_content["cache_hits"], replay.structured_content["accuracy"]) == (3, 1.0)
    assert len(module_fake.calls) == 3  # one call per row, ever


async def test_fastmcp_client_over_http_runs_a_consensus(gateway: ServerProcess, module_fake: GatedFake) -> None:
    base_url = gateway.base_url
    module_fake.set("h-1", Scenario(text="4"))
    module_fake.set("h-2", Scenario(text="four"))
    module_fake.set("h-3", Scenario(hang=True))
    release = module_fake.hold("h-1", "h-2")
    async with FastMCPClient(f"{base_url}/mcp") as client:
        call = asyncio.create_task(
            client.call_tool(
                "query_models",
                {"prompt": "2+2?", "models": ["openai/h-1", "gemini/h-2", "ollama/h-3"], "strategy": "consensus"},
            )
        )
        await module_fake.wait_for_calls(3)
        release.set()
        result = await call
        resource = await client.read_resource("gateway://models")
    sc = result.structured_content
    assert sc["answer"] == "4" and sc["consensus"]["reached"] and sc["consensus"]["decided_early"]
    assert [r["status"] for r in sc["results"]] == ["ok", "ok", "cancelled"]
    await module_fake.wait_for_disconnects(1)  # the subprocess closed the abandoned request
    assert [c.model for c in module_fake.disconnects] == ["h-3"]
    catalogue = json.loads(resource[0].text)
    assert {p["provider"] for p in catalogue["providers"] if p["configured"]} >= {"openai", "gemini", "ollama"}


async def test_the_sdk_client_hears_of_each_model_answered_while_the_call_still_runs(
    gateway: ServerProcess, module_fake: GatedFake
) -> None:
    """Progress reaches an HTTP client mid-call (the notification a client resets its timeout on)."""
    module_fake.set("pr-1", Scenario(text="Paris"))
    module_fake.set("pr-2", Scenario(text="Paris"))
    module_fake.set("pr-3", Scenario(text="Lyon"))
    release = module_fake.hold("pr-2", "pr-3")
    heard = asyncio.Event()
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total, message))
        heard.set()

    models = ["openai/pr-1", "anthropic/pr-2", "gemini/pr-3"]
    async with (
        httpx2.AsyncClient(timeout=httpx2.Timeout(30)) as http,
        Client(streamable_http_client(f"{gateway.base_url}/mcp", http_client=http)) as client,
    ):
        call = asyncio.create_task(
            client.call_tool(
                "query_models",
                {"prompt": "capital?", "models": models, "strategy": "consensus"},
                progress_callback=on_progress,
            )
        )
        await asyncio.wait_for(heard.wait(), 30)
        assert not call.done()  # heard while pr-2 and pr-3 are still held
        release.set()
        result = await call
    assert not result.is_error and result.structured_content["answer"] == "Paris"
    # pr-1's first. The server's heartbeat comes after 5 s without news, so the only other one there may be is
    # of the answer that decided the vote, if it went out before the call answered.
    done, total, message = progress[0]
    assert (done, total) == (1, 3)
    assert message.startswith("openai/pr-1 answered in ") and message.endswith("(1 of 3 models done)")
    assert [p[:2] for p in progress[1:]] in ([], [(2, 3)])


async def test_a_long_answer_reaches_the_sdk_client_whose_messages_are_limited_to_1_mib(
    gateway: ServerProcess, module_fake: GatedFake
) -> None:
    """A 300 KB answer was four times in one message (as the answer and as its model's text, in structuredContent and
    again in the text block's JSON): 1.2 MB, over the SDK client's default limit of 1 MiB per event. The provider
    was paid, and the client got a transport error."""
    long = ("All work and no play makes Jack a dull boy. " * 7_000).strip()  # 308 KB
    module_fake.set("big-1", Scenario(text=long))
    async with (
        httpx2.AsyncClient(timeout=httpx2.Timeout(30)) as http,
        streamable_http_client(f"{gateway.base_url}/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()  # a session of the protocol's earlier era: its replies are SSE events
        result = await session.call_tool("query_models", {"prompt": "write", "models": ["openai/big-1"]})
    assert not result.is_error
    sc = result.structured_content
    assert sc["answer"] == long and sc["results"][0]["text"] == long
    shown = json.loads(result.content[0].text)
    assert shown["answer"] == long and shown["results"][0]["text"] == "(same as answer)"


def sse_message(text: str) -> dict:
    """The JSON-RPC message of a streamable-HTTP reply (an SSE event, or plain JSON)."""
    return json.loads(text.split("data: ", 1)[1] if text.startswith(("event:", "data:")) else text)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
async def test_a_hedge_delay_that_is_no_number_of_seconds_is_refused(
    gateway: ServerProcess, module_fake: GatedFake, value: str
) -> None:
    """Python's json writes float("nan") as NaN, and the server read it: it passed the "<= 0" check and, as a
    hedge timer, broke the order of the event loop's timers, so later calls' hedges and deadlines fired late or
    never (a 1 s deadline overran by 29 s in a review). Sent as raw JSON-RPC, as such a client sends it."""
    # json.dumps writes NaN and Infinity, as such a client's encoder does.
    arguments = {"prompt": "hi", "models": [MODELS["openai"]], "hedge_after_s": float(value)}
    params = {"name": "query_models", "arguments": arguments}
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
    headers = {"accept": "application/json, text/event-stream", "content-type": "application/json",
               "mcp-protocol-version": "2025-11-25"}  # fmt: skip
    async with httpx.AsyncClient() as http:
        hello = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}
        opened = await http.post(
            f"{gateway.base_url}/mcp",
            json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": hello},
            headers=headers,
        )
        assert opened.status_code == 200, opened.text
        headers["mcp-session-id"] = opened.headers["mcp-session-id"]
        ready = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        await http.post(f"{gateway.base_url}/mcp", json=ready, headers=headers)
        reply = await http.post(f"{gateway.base_url}/mcp", content=json.dumps(call), headers=headers)
    assert reply.status_code == 200, reply.text
    result = sse_message(reply.text)["result"]
    assert result["isError"] is True and "hedge_after_s" in result["content"][0]["text"], result
    assert module_fake.count() == 0


async def test_auth_token_is_required_for_mcp_but_not_for_health(servers: Servers, module_fake: GatedFake) -> None:
    base_url = servers.authed.base_url
    module_fake.set("gpt-4o-mini", Scenario(text="authorised"))
    async with httpx.AsyncClient() as http:
        health = await http.get(f"{base_url}/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        denied = await http.post(
            f"{base_url}/mcp",
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={"accept": "application/json, text/event-stream"},
        )
        assert denied.status_code == 401
        assert denied.headers["www-authenticate"].startswith("Bearer")
        wrong = await http.post(
            f"{base_url}/mcp",
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={"accept": "application/json, text/event-stream", "authorization": "Bearer tok-wrong"},
        )
        assert wrong.status_code == 401

    # An MCP client without the token cannot even connect (the SDK wraps the error in task groups).
    with pytest.RaisesGroup(MCPError, flatten_subgroups=True, allow_unwrapped=True):
        async with httpx2.AsyncClient() as http2, Client(streamable_http_client(f"{base_url}/mcp", http_client=http2)):
            pass

    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}) as http2,
        Client(streamable_http_client(f"{base_url}/mcp", http_client=http2)) as client,
    ):
        result = await client.call_tool("query_models", {"prompt": "hi", "models": [MODELS["openai"]]})
    assert_answer(result.structured_content, MODELS["openai"], "authorised")

    transport = StreamableHttpTransport(f"{base_url}/mcp", auth=TOKEN)
    async with FastMCPClient(transport) as client:
        listed = await client.list_tools()
    assert "query_models" in {t.name for t in listed}
    assert module_fake.count() == 1


INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
}
MCP_HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


async def initialize(base_url: str, **headers: str) -> int:
    async with httpx.AsyncClient() as http:
        reply = await http.post(f"{base_url}/mcp", json=INITIALIZE, headers={**MCP_HEADERS, **headers})
    return reply.status_code


async def test_a_web_page_rebinding_its_name_to_a_loopback_gateway_is_refused(gateway: ServerProcess) -> None:
    """A page on evil.example whose name resolves to 127.0.0.1 could initialize, call query_models with the
    user's keys and run_eval in the server's directory: the Host and Origin were never checked."""
    port = gateway.base_url.rpartition(":")[2]
    assert await initialize(gateway.base_url, host=f"evil.example:{port}", origin="http://evil.example") == 421
    assert await initialize(gateway.base_url, origin="http://evil.example") == 403
    assert await initialize(gateway.base_url, origin=f"http://localhost:{port}") == 200
    assert await initialize(gateway.base_url) == 200  # a client that is no browser sends no Origin


async def test_listed_host_names_are_accepted_and_others_refused(servers: Servers) -> None:
    auth = f"Bearer {TOKEN}"
    assert await initialize(servers.authed.base_url, host=NAMED, authorization=auth) == 200
    assert await initialize(servers.authed.base_url, host="evil.example", authorization=auth) == 421


async def test_serving_beyond_loopback_without_a_token_warns_at_start(servers: Servers) -> None:
    warning = "warning: serving on 0.0.0.0 without AI_GATEWAY_AUTH_TOKEN"
    assert warning in servers.logs[1].read_text()


async def test_client_timeout_cancels_the_provider_requests(gateway: ServerProcess, module_fake: GatedFake) -> None:
    base_url = gateway.base_url
    module_fake.set("hang-1", Scenario(hang=True))
    module_fake.set("hang-2", Scenario(hang=True))
    async with FastMCPClient(f"{base_url}/mcp") as client:
        call = asyncio.create_task(
            client.call_tool(
                "query_models",
                {"prompt": "hi", "models": ["openai/hang-1", "anthropic/hang-2"], "strategy": "consensus"},
            )
        )
        await module_fake.wait_for_calls(2)
        call.cancel()  # the client gives up: the server must abandon both provider requests
        with pytest.raises(asyncio.CancelledError):
            await call
    await module_fake.wait_for_disconnects(2)
    assert sorted(c.model for c in module_fake.disconnects) == ["hang-1", "hang-2"]


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_cancel_from_either_protocol_era_stops_the_provider_requests(
    gateway: ServerProcess, module_fake: GatedFake, mode: str
) -> None:
    """A client on a protocol before 2026-07-28 ("legacy") cancels with a notifications/cancelled in its session.
    Served without sessions, that notification arrived on a request of its own and was dropped: the provider
    requests ran to the end, billed."""
    module_fake.set("hang-1", Scenario(hang=True))
    module_fake.set("hang-2", Scenario(hang=True))
    arguments = {"prompt": "hi", "models": ["openai/hang-1", "anthropic/hang-2"], "strategy": "consensus"}
    async with Client(f"{gateway.base_url}/mcp", mode=mode) as client:
        call = asyncio.create_task(client.call_tool("query_models", arguments))
        await module_fake.wait_for_calls(2)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await module_fake.wait_for_disconnects(2)
    assert sorted(c.model for c in module_fake.disconnects) == ["hang-1", "hang-2"]


async def test_http_server_logs_are_redacted_and_stay_off_stdout(servers: Servers) -> None:
    key = KEYS["OPENAI_API_KEY"]
    async with httpx.AsyncClient() as http:
        resp = await http.get(f"{servers.logged.base_url}/health", params={"api_key": key})
    assert resp.status_code == 200
    await servers.logged.stop()  # once it has exited, its output is complete
    stdout, stderr = (path.read_text() for path in servers.logs)
    assert "Uvicorn running" in stdout + stderr  # info logging really was on
    assert key not in stdout + stderr
    assert stdout == ""  # logs belong on stderr
    assert "[REDACTED]" in stderr  # uvicorn's access line went through the gateway's redacting formatter


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_sigterm_lets_the_calls_in_flight_answer_before_the_server_exits(
    module_fake: GatedFake, tmp_path: Path, mode: str
) -> None:
    """sse-starlette closed every answer's stream the moment uvicorn was told to exit: a call in flight lost its
    answer (a broken stream) while its provider request, already billed, was dropped. Then the server stopped taking
    connections at once, and a client that fetches the tool's output schema on a new connection once the answer
    arrives (the SDK's and fastmcp's clients, if they had not listed the tools) lost the answer all the same (a
    review's reproducer). Now the server drains: still taking connections, refusing new calls, /health 503."""
    release = module_fake.hold("drain-1")
    stderr = tmp_path / "stderr.log"
    with stderr.open("wb") as err:
        spec = {"env": subprocess_env(module_fake.url), "cwd": tmp_path, "stderr": err}
        async with http_servers(spec) as (server,):
            # Leaving, the client says goodbye on a new connection, which finds the server gone: not what is tested.
            with contextlib.suppress(BaseExceptionGroup, httpx2.ConnectError):
                async with Client(f"{server.base_url}/mcp", mode=mode) as client:
                    call = asyncio.create_task(
                        client.call_tool("query_models", {"prompt": "hi", "models": ["openai/drain-1"]})
                    )
                    await module_fake.wait_for_calls(1, "drain-1")
                    server.proc.terminate()
                    await until(lambda: "waiting up to 30s for 1 call(s) in flight" in stderr.read_text(), "the drain")
                    async with httpx.AsyncClient() as http:
                        health = await http.get(f"{server.base_url}/health")
                    async with Client(f"{server.base_url}/mcp", mode=mode) as latecomer:
                        refused = await latecomer.call_tool("query_models", {"prompt": "hi", "models": ["openai/x"]})
                    release.set()
                    result = await call
            async with asyncio.timeout(15):
                assert await server.proc.wait() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it exited on
    assert (health.status_code, health.json()["status"]) == (503, "draining")
    assert refused.is_error and "shutting down and takes no new call" in refused.content[0].text
    assert not result.is_error
    assert result.structured_content is not None and result.structured_content["answer"] == "hi"
    assert module_fake.disconnects == [] and module_fake.count("x") == 0  # answer read; the latecomer's never sent


async def test_ctrl_c_stops_the_http_server_with_the_exit_status_stdio_gives(
    module_fake: GatedFake, tmp_path: Path
) -> None:
    """It exited 0, where the stdio server (and every other command) exits 130, as a shell expects of Ctrl-C."""
    with (tmp_path / "stderr.log").open("wb") as err:
        spec = {"env": subprocess_env(module_fake.url), "cwd": tmp_path, "stderr": err}
        async with http_servers(spec) as (server,):
            server.proc.send_signal(signal.SIGINT)
            async with asyncio.timeout(15):
                code = await server.proc.wait()
    stderr = (tmp_path / "stderr.log").read_text()
    assert code == 130, stderr
    assert "ai-gateway: interrupted" in stderr and "Traceback" not in stderr


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_call_still_running_after_the_grace_is_cut_with_an_error_saying_so(
    module_fake: GatedFake, tmp_path: Path, mode: str
) -> None:
    """A 2026-07-28 call ran past the grace period for five more seconds, until uvicorn cancelled its task, and the
    client got a bare HTTP 500 (a review's reproducer)."""
    module_fake.hold("drain-2")  # never released: the call outlives the grace
    spec = {"env": subprocess_env(module_fake.url, AI_GATEWAY_SHUTDOWN_GRACE_S="0.3"), "cwd": tmp_path}
    async with http_servers(spec) as (server,):
        with contextlib.suppress(BaseExceptionGroup, httpx2.ConnectError):
            async with Client(f"{server.base_url}/mcp", mode=mode) as client:
                call = asyncio.create_task(
                    client.call_tool("query_models", {"prompt": "hi", "models": ["openai/drain-2"]})
                )
                await module_fake.wait_for_calls(1, "drain-2")
                server.proc.terminate()
                result = await call
        async with asyncio.timeout(15):
            assert await server.proc.wait() in (0, -signal.SIGTERM)
    assert result.is_error
    assert result.content[0].text == (
        "the server is shutting down: this call was stopped after the 0.3s grace period (its provider requests too); "
        "send it again (to another replica)"
    )
    await module_fake.wait_for_disconnects(1)  # the provider request was dropped, not left running


def accepts(base_url: str) -> bool:
    host, _, port = base_url.removeprefix("http://").partition(":")
    with socket.socket() as sock:
        return sock.connect_ex((host, int(port))) == 0


async def test_a_legacy_client_gone_mid_call_finds_the_answer_in_the_cache_when_it_asks_again(
    gateway: ServerProcess, module_fake: GatedFake
) -> None:
    """Before 2026-07-28, a dropped stream is not a cancel (the spec: the client may resume, or ask again; a cancel
    is a notification of its own). The call runs on, and its answer is kept: asked again, it costs nothing more."""
    release = module_fake.hold("gone-1")
    base = f"{gateway.base_url}/mcp"
    headers = {"accept": "application/json, text/event-stream", "content-type": "application/json",
               "mcp-protocol-version": "2025-11-25"}  # fmt: skip
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "query_models", "arguments": {"prompt": "hi", "models": ["openai/gone-1"]}}}  # fmt: skip
    async with httpx.AsyncClient(timeout=30) as http:
        hello = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}
        opened = await http.post(base, json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": hello},
                                 headers=headers)  # fmt: skip
        headers["mcp-session-id"] = opened.headers["mcp-session-id"]
        await http.post(base, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
        first = asyncio.create_task(http.post(base, json=call, headers=headers))
        await module_fake.wait_for_calls(1, "gone-1")
        first.cancel()  # the client's connection for this call is closed
        with pytest.raises(asyncio.CancelledError):
            await first
        release.set()
        await module_fake.wait_idle()
        again = await http.post(base, json=call | {"id": 2}, headers=headers)
    result = sse_message(again.text)["result"]["structuredContent"]
    assert result["answer"] == "hi" and result["results"][0]["cached"] is True
    assert module_fake.count("gone-1") == 1 and module_fake.disconnects == []


async def test_port_0_is_announced_as_the_port_the_server_listens_on(module_fake: GatedFake, tmp_path: Path) -> None:
    """The URL was printed before the bind: `--port 0` announced port 0, and a taken port was announced too."""
    proc = await asyncio.create_subprocess_exec(
        *CLI, "serve", "--transport", "http", "--port", "0",
        env=subprocess_env(module_fake.url), cwd=tmp_path, stdin=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        async with asyncio.timeout(15):
            line = (await proc.stderr.readline()).decode()
        prefix = f"ai-gateway {__version__}: MCP at http://127.0.0.1:"
        assert line.startswith(prefix), line
        port = int(line.removeprefix(prefix).partition("/")[0])
        assert port > 0
        assert line == f"{prefix}{port}/mcp, health at http://127.0.0.1:{port}/health\n"
        health = await wait_healthy(f"http://127.0.0.1:{port}", proc)
        assert health.json()["status"] == "ok"
    finally:
        await stop_process(proc)


async def test_a_port_in_use_stops_serve_with_status_2_and_the_fix(module_fake: GatedFake, tmp_path: Path) -> None:
    """uvicorn's own exit status, 3, documented nowhere, after the URL had been announced as if serving."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = await run_cli(
            "serve", "--transport", "http", "--port", str(port), env=subprocess_env(module_fake.url), cwd=tmp_path
        )
    assert (code, out) == (2, "")
    assert "address already in use" in err
    assert err.endswith(
        f"ai-gateway: could not serve HTTP on 127.0.0.1:{port} (the error above says why); choose another --port / "
        "AI_GATEWAY_PORT or --host / AI_GATEWAY_HOST\n"
    )
    assert "MCP at" not in err


async def test_sessions_are_capped_and_idle_ones_ended_as_configured(module_fake: GatedFake, tmp_path: Path) -> None:
    """A client that never ends its session (a crash) left it open for the SDK's 30 minutes, ~45 KB each, up to
    10,000 of them; neither limit could be set. Here: two sessions at most, ended after 3 s idle; a client still
    connected (its notification stream open) is not idle, and keeps its session."""
    module_fake.set("gpt-4o-mini", Scenario(text="still here"))
    env = subprocess_env(module_fake.url, AI_GATEWAY_MAX_SESSIONS="2", AI_GATEWAY_SESSION_IDLE_TIMEOUT_S="3")
    async with (
        http_servers({"env": env, "cwd": tmp_path}) as (server,),
        httpx.AsyncClient() as http,
        httpx2.AsyncClient(timeout=httpx2.Timeout(30)) as http2,
        streamable_http_client(f"{server.base_url}/mcp", http_client=http2) as (read, write),
        ClientSession(read, write) as connected,  # a client of a protocol with sessions (before 2026-07-28)
    ):
        await connected.initialize()
        mcp_url, health_url = f"{server.base_url}/mcp", f"{server.base_url}/health"

        async def open_session() -> httpx.Response:  # and never end it, as a crashed client
            return await http.post(mcp_url, json=INITIALIZE, headers=MCP_HEADERS)

        async def open_count() -> int:
            return (await http.get(health_url)).json()["sessions"]["open"]

        first = await open_session()
        assert first.status_code == 200
        assert (await http.get(health_url)).json()["sessions"] == {"open": 2, "max": 2}
        refused = await open_session()
        assert refused.status_code == 503 and "Too many open sessions" in refused.text

        ended = {"mcp-session-id": first.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
        assert (await http.delete(mcp_url, headers=ended)).status_code == 200  # ended by its client: room again
        abandoned = await open_session()
        assert abandoned.status_code == 200

        # Left open, it idles out: polled for, a new session is admitted once it has.
        stop_at = asyncio.get_running_loop().time() + 30
        while (await open_session()).status_code != 200:
            assert asyncio.get_running_loop().time() < stop_at, "the idle session was never ended"
            await asyncio.sleep(0.2)  # poll interval, not a "wait and see"
        # The connected client's session, older than the one that idled out, is still open, and answers.
        assert await open_count() == 2
        result = await connected.call_tool("query_models", {"prompt": "hi", "models": [MODELS["openai"]]})
        assert_answer(result.structured_content, MODELS["openai"], "still here")
        gone = {"mcp-session-id": abandoned.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
        ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
        assert (await http.post(mcp_url, json=ping, headers={**MCP_HEADERS, **gone})).status_code == 404


async def test_stateless_http_serves_calls_with_no_session(module_fake: GatedFake, tmp_path: Path) -> None:
    """AI_GATEWAY_STATELESS_HTTP (any replica serves any request) was documented and never run by a test."""
    module_fake.set("gpt-4o-mini", Scenario(text="no session"))
    env = subprocess_env(module_fake.url, AI_GATEWAY_STATELESS_HTTP="true")
    async with (
        http_servers({"env": env, "cwd": tmp_path}) as (server,),
        httpx2.AsyncClient(timeout=httpx2.Timeout(30)) as http,
        Client(streamable_http_client(f"{server.base_url}/mcp", http_client=http)) as client,
    ):
        result = await client.call_tool("query_models", {"prompt": "hi", "models": [MODELS["openai"]]})
        assert_answer(result.structured_content, MODELS["openai"], "no session")
        async with httpx.AsyncClient() as raw:
            opened = await raw.post(f"{server.base_url}/mcp", json=INITIALIZE, headers=MCP_HEADERS)
            assert opened.status_code == 200 and "mcp-session-id" not in opened.headers
            assert (await raw.get(f"{server.base_url}/health")).json()["sessions"] is None
