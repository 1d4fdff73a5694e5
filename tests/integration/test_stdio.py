"""``ai-gateway serve`` over stdio (the default transport), driven by the mcp SDK and by fastmcp.

stdout belongs to the protocol: the debug-logging test proves logs go to stderr only.
"""

from __future__ import annotations

from pathlib import Path

from fastmcp import Client as FastMCPClient
from fastmcp.client.transports import StdioTransport
from mcp import Client, StdioServerParameters

from tests.fake_provider import Scenario
from tests.integration.conftest import CLI, KEYS, MODELS, GatedFake, subprocess_env, vendor

SERVE = [*CLI[1:], "serve"]


async def test_mcp_sdk_client_over_stdio(fake: GatedFake, tmp_path: Path) -> None:
    model_id = MODELS["gemini"]
    fake.set(vendor(model_id), Scenario(text="via stdio"))
    params = StdioServerParameters(command=CLI[0], args=SERVE, env=subprocess_env(fake.url), cwd=tmp_path)
    async with Client(params) as client:
        tools = {t.name for t in (await client.list_tools()).tools}
        assert {"query_models", "list_models"} <= tools
        result = await client.call_tool("query_models", {"prompt": "hello stdio", "models": [model_id]})
        bad = await client.call_tool("query_models", {"prompt": "hello", "models": ["gemini"]})
    assert not result.is_error
    sc = result.structured_content
    assert sc["answer"] == "via stdio" and sc["model"] == model_id
    assert sc["results"][0]["status"] == "ok"
    assert bad.is_error and "models[0]" in bad.content[0].text
    (call,) = fake.calls
    assert call.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert call.headers["x-goog-api-key"] == KEYS["GEMINI_API_KEY"]


async def test_fastmcp_client_over_stdio_with_debug_logs(fake: GatedFake, tmp_path: Path) -> None:
    fake.set("s-ok", Scenario(text="still clean"))
    key = KEYS["OPENAI_API_KEY"]
    fake.set("s-bad", Scenario.error("auth", message=f"Incorrect API key provided: {key}"))
    stderr_log = tmp_path / "stderr.log"
    transport = StdioTransport(
        command=CLI[0],
        args=SERVE,
        env=subprocess_env(fake.url, AI_GATEWAY_LOG_LEVEL="debug"),
        cwd=str(tmp_path),
        keep_alive=False,
        log_file=stderr_log,
    )
    async with FastMCPClient(transport) as client:
        result = await client.call_tool(
            "query_models",
            {"prompt": "hi", "models": ["openai/s-bad", "anthropic/s-ok"], "strategy": "first_available"},
        )
        catalogue = await client.call_tool("list_models", {})
    # Every JSON-RPC message on stdout parsed, so no log line corrupted it.
    sc = result.structured_content
    assert [r["status"] for r in sc["results"]] == ["error", "ok"]
    assert sc["results"][0]["error"]["code"] == "auth"
    assert sc["answer"] == "still clean"
    assert any(p["provider"] == "openai" and p["configured"] for p in catalogue.structured_content["providers"])
    logs = stderr_log.read_text()
    assert " DEBUG " in logs  # debug logging really was on, and went to stderr
    assert "model openai/s-bad failed after 1 attempt(s): auth" in logs
    for secret in KEYS.values():
        assert secret not in logs
