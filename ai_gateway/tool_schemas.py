"""The tools' schemas, settled once when the server starts rather than at every listing and call.

Two costs fastmcp and the SDK would otherwise pay again and again, measured on the 2-core machine:

- Every ``tools/list`` inlines the ``$ref``s of every tool's schemas (fastmcp's middleware, for clients that
  cannot follow them): ~11 ms of the ~15 ms a listing took. Inlined once here, the middleware has nothing to do.
- Over streamable HTTP (MCP 2026-07-28) the SDK checks a ``tools/call``'s ``Mcp-Param-*`` headers against the
  called tool's input schema before dispatching it. Given no lookup, it finds that schema by running a whole
  ``tools/list``, for every call that has arguments: ~12 ms of the server's CPU per ``query_models`` call (15.4 ms
  in all; 3.7 ms with the lookup). Under load that held the event loop long enough for Redis operations in flight
  to time out, and the calls then went to the provider instead of waiting on another process's lease.

The tools are fixed by the time the server starts, so both are done then.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastmcp import FastMCP
from fastmcp.server.middleware.dereference import _dereference_tool
from fastmcp.utilities.versions import dedupe_with_versions


async def settle_tool_schemas(server: FastMCP) -> None:
    """Inline every tool's ``$ref``s and give the SDK each tool's input schema by name (once all tools are added)."""
    for tool in await server.list_tools(run_middleware=False):  # the tools as registered, changed in place
        # fastmcp's middleware's own step, on the same test of what needs it: after this it finds nothing to do.
        inlined = _dereference_tool(tool)
        tool.parameters, tool.output_schema = inlined.parameters, inlined.output_schema
    # Through the middleware, deduplicated by version as the listing is: the schemas exactly as clients see them.
    listed = dedupe_with_versions(list(await server.list_tools()), lambda tool: tool.name)
    schemas: dict[str, Mapping[str, Any]] = {tool.name: tool.to_mcp_tool().input_schema for tool in listed}
    # fastmcp 4.1.2 leaves the SDK's hook unset. A name it does not know gets None: dispatch refuses that tool.
    server._mcp_server.get_tool_input_schema = schemas.get
