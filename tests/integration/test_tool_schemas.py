"""The tools' schemas are settled once at start (ai_gateway/tool_schemas.py), not at every listing and call.

The server runs in process behind its real HTTP app (``http_app()``, its lifespan entered as uvicorn would),
reached by the official ``mcp`` SDK client over streamable HTTP through ``httpx2.ASGITransport``. A fastmcp
middleware counts the tool listings the server runs.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

import httpx2
from fastmcp import FastMCP
from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from pydantic import Field

BASE_URL = "http://127.0.0.1"
PROTOCOL = "2026-07-28"


class CountListings(Middleware):
    def __init__(self) -> None:
        self.listings = 0

    async def on_list_tools(self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]) -> Any:
        self.listings += 1
        return await call_next(context)


@asynccontextmanager
async def serving(server: FastMCP) -> AsyncIterator[httpx2.AsyncClient]:
    """The server's HTTP app, started (its lifespan entered), and a raw HTTP client to it."""
    app = server.http_app()
    async with (
        app.router.lifespan_context(app),
        httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url=BASE_URL) as http,
    ):
        yield http


def with_counter_and_regional_tool(server: FastMCP) -> CountListings:
    """A listing counter, and a tool (added after build_server, as an embedder would) whose ``region`` argument
    the client must repeat in an ``Mcp-Param-Region`` header."""
    counter = CountListings()
    server.add_middleware(counter)

    @server.tool
    async def regional(region: Annotated[str, Field(json_schema_extra={"x-mcp-header": "Region"})]) -> str:
        return region

    return counter


async def test_a_tools_call_over_http_runs_no_tool_listing(make_server: Callable[..., FastMCP]) -> None:
    server = make_server()
    counter = with_counter_and_regional_tool(server)
    async with serving(server) as http, Client(streamable_http_client(f"{BASE_URL}/mcp", http_client=http)) as client:
        listed = await client.list_tools()
        after_listing = counter.listings
        for _ in range(3):
            result = await client.call_tool("query_models", {"prompt": "hi", "models": ["mock/echo"]})
            assert not result.is_error, result.content
            assert result.structured_content is not None and result.structured_content["answer"] == "hi"
        assert (await client.call_tool("regional", {"region": "eu"})).structured_content == {"result": "eu"}

    # The SDK looked each called tool's schema up: before, every call with arguments ran a whole listing.
    assert counter.listings == after_listing
    lookup = server._mcp_server.get_tool_input_schema
    assert lookup is not None
    tools = {tool.name: tool for tool in listed.tools}
    assert {"query_models", "list_models", "gateway_status", "run_eval", "regional"} <= set(tools)
    for name, tool in tools.items():
        assert lookup(name) == tool.input_schema, name  # exactly what tools/list shows
    assert lookup("no_such_tool") is None


async def test_the_mcp_param_header_check_still_holds_for_every_tool(make_server: Callable[..., FastMCP]) -> None:
    server = make_server()
    with_counter_and_regional_tool(server)
    envelope = {"io.modelcontextprotocol/protocolVersion": PROTOCOL, "io.modelcontextprotocol/clientCapabilities": {}}
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "regional", "arguments": {"region": "eu"}, "_meta": envelope},
    }
    headers = {
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": PROTOCOL,
        "Mcp-Method": "tools/call",
        "Mcp-Name": "regional",
    }
    async with serving(server) as http:
        refused = await http.post("/mcp", json=body, headers={**headers, "Mcp-Param-Region": "us"})
        accepted = await http.post("/mcp", json=body, headers={**headers, "Mcp-Param-Region": "eu"})

    assert refused.status_code == 400
    assert "Mcp-Param-Region header does not match the request body's 'region' argument" in refused.text
    assert accepted.status_code == 200, accepted.text
    as_json = accepted.headers["content-type"].startswith("application/json")
    reply = accepted.text if as_json else _sse_data(accepted.text)
    assert json.loads(reply)["result"]["structuredContent"] == {"result": "eu"}


async def test_listed_schemas_are_inlined_once_and_stay_as_listed(make_server: Callable[..., FastMCP]) -> None:
    server = make_server()
    counter = with_counter_and_regional_tool(server)
    async with serving(server) as http, Client(streamable_http_client(f"{BASE_URL}/mcp", http_client=http)) as client:
        first = (await client.list_tools()).tools
        second = (await client.list_tools()).tools
        registered = await server.list_tools(run_middleware=False)

    assert counter.listings >= 2
    assert [tool.model_dump() for tool in first] == [tool.model_dump() for tool in second]
    # fastmcp's middleware inlines $refs at every listing; inlined at start, the tools need none of it.
    for tool in registered:
        text = json.dumps([tool.parameters, tool.output_schema])
        assert '"$ref"' not in text and '"$defs"' not in text, tool.name
    by_name = {tool.name: tool for tool in first}
    assert by_name["query_models"].input_schema["properties"]["messages"]["anyOf"][0]["items"]["properties"].keys() == {
        "role",
        "content",
    }


def _sse_data(text: str) -> str:
    (data,) = [line.removeprefix("data:").strip() for line in text.splitlines() if line.startswith("data:")]
    return data
