"""``ai-gateway serve`` over stdio (the default transport), driven by the mcp SDK and by fastmcp.

stdout belongs to the protocol: the debug-logging test proves logs go to stderr only. The signal tests speak
JSON-RPC over the pipes themselves, so they can interrupt the server at a known point of the conversation.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import signal
import tty
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

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


INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "pipes", "version": "0"}},
}
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}


def tool_call(request_id: int, name: str, arguments: Mapping[str, Any]) -> dict[str, Any]:
    params = {"name": name, "arguments": arguments}
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


@asynccontextmanager
async def stdio_server(
    env: Mapping[str, str], cwd: Path, terminal: tuple[int, int] | None = None
) -> AsyncIterator[Pipes]:
    """``ai-gateway serve`` on pipes (or on a terminal: a pty's two sides), initialized; always reaped."""
    proc = await asyncio.create_subprocess_exec(
        *CLI, "serve", stdin=asyncio.subprocess.PIPE if terminal is None else terminal[1],
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=dict(env), cwd=cwd,
    )  # fmt: skip
    pipes = Pipes(proc, None if terminal is None else terminal[0])
    try:
        await pipes.send(INITIALIZE)
        assert (await pipes.receive())["result"]["serverInfo"]["name"]
        await pipes.send(INITIALIZED)
        yield pipes
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


class Pipes:
    def __init__(self, proc: asyncio.subprocess.Process, terminal: int | None) -> None:
        self.proc = proc
        self._terminal = terminal  # the pty's controller side, when stdin is a terminal

    async def send(self, message: Mapping[str, Any]) -> None:
        line = (json.dumps(message) + "\n").encode()
        if self._terminal is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(line)
            await self.proc.stdin.drain()
        else:
            os.write(self._terminal, line)

    async def receive(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        async with asyncio.timeout(15):
            line = await self.proc.stdout.readline()
        assert line, "the server closed stdout"
        return json.loads(line)

    async def exit_code(self) -> tuple[int, str]:
        """The exit code once the process is gone (a hang fails the test), with what it wrote on stderr."""
        assert self.proc.stderr is not None
        async with asyncio.timeout(15):
            stderr = await self.proc.stderr.read()
            return await self.proc.wait(), stderr.decode()


async def test_ctrl_c_stops_an_idle_stdio_server(fake: GatedFake, tmp_path: Path) -> None:
    # The SDK reads stdin in a thread that no cancellation reaches: Ctrl-C did nothing until stdin closed.
    async with stdio_server(subprocess_env(fake.url), tmp_path) as server:
        server.proc.send_signal(signal.SIGINT)
        code, stderr = await server.exit_code()
    assert code == 130
    assert "ai-gateway: interrupted" in stderr and "Traceback" not in stderr


async def test_ctrl_c_at_a_terminal_stops_the_server_and_leaves_the_terminal_as_it_was(
    fake: GatedFake, tmp_path: Path
) -> None:
    controller, terminal = pty.openpty()
    tty.setraw(terminal)  # one JSON line in, one out: no echo or line editing in the way
    try:
        assert os.get_blocking(terminal)
        async with stdio_server(subprocess_env(fake.url), tmp_path, (controller, terminal)) as server:
            server.proc.send_signal(signal.SIGINT)
            code, stderr = await server.exit_code()
        assert code == 130, stderr
        # The event loop made the shared terminal non-blocking while it served; the shell gets it back blocking.
        assert os.get_blocking(terminal)
    finally:
        os.close(controller)
        os.close(terminal)


async def test_ctrl_c_cancels_the_calls_in_flight(fake: GatedFake, tmp_path: Path) -> None:
    model_id = MODELS["openai"]
    fake.hold(vendor(model_id))
    async with stdio_server(subprocess_env(fake.url), tmp_path) as server:
        await server.send(tool_call(2, "query_models", {"prompt": "never answered", "models": [model_id]}))
        await fake.wait_for_calls(1, vendor(model_id))
        server.proc.send_signal(signal.SIGINT)
        code, stderr = await server.exit_code()
        # The provider request was dropped with the call, not left to run (and be billed) to its end.
        await fake.wait_for_disconnects(1)
    assert code == 130, stderr


async def test_sigterm_ends_a_stdio_server_cleanly(fake: GatedFake, tmp_path: Path) -> None:
    # What a client sends a server that has not exited after the client closed its stdin; the shutdown is an
    # ordinary one: exit code 0, the answered call's answer delivered, no traceback.
    model_id = MODELS["anthropic"]
    fake.set(vendor(model_id), Scenario(text="answered before SIGTERM"))
    env = subprocess_env(fake.url, AI_GATEWAY_LOG_LEVEL="info")
    async with stdio_server(env, tmp_path) as server:
        await server.send(tool_call(2, "query_models", {"prompt": "hi", "models": [model_id]}))
        answer = await server.receive()
        server.proc.send_signal(signal.SIGTERM)
        code, stderr = await server.exit_code()
    assert answer["result"]["structuredContent"]["answer"] == "answered before SIGTERM"
    assert code == 0, stderr
    assert "SIGTERM: shutting down" in stderr and "Traceback" not in stderr


async def test_stdin_from_a_file_is_read_and_its_end_ends_the_server(fake: GatedFake, tmp_path: Path) -> None:
    # A regular file cannot be watched by the event loop: the SDK's reader keeps it. Its end is a client leaving,
    # as a closed pipe is (requests still in flight then are dropped with it, so the file holds only one).
    requests = tmp_path / "requests.jsonl"
    requests.write_text(json.dumps(INITIALIZE) + "\n")
    with requests.open("rb") as stdin:
        code, stdout, stderr = await run_serve(subprocess_env(fake.url), tmp_path, stdin.fileno())
    (reply,) = [json.loads(line) for line in stdout.splitlines()]
    assert reply["id"] == 1 and reply["result"]["serverInfo"]["name"]
    assert code == 0, stderr


async def run_serve(env: Mapping[str, str], cwd: Path, stdin: int) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *CLI, "serve", stdin=stdin, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=dict(env),
        cwd=cwd,
    )  # fmt: skip
    try:
        async with asyncio.timeout(30):
            stdout, stderr = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, stdout.decode(), stderr.decode()
