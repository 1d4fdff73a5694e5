"""Integration fixtures: the real gateway (in memory or as a subprocess) against the fake provider over HTTP.

Every environment is built here from scratch: the gateway only ever sees the fake's URL and
the distinctive fake keys below, never a developer's real credentials or ``.env``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastmcp import Client, FastMCP

from ai_gateway.server import build_server
from ai_gateway.settings import Settings
from tests.fake_provider import FakeProvider

# Distinctive values, so a test can prove none of them ever leaks into a result or a log.
KEYS: dict[str, str] = {
    "OPENAI_API_KEY": "sk-test-OPENAI-0123456789abcdef",
    "ANTHROPIC_API_KEY": "sk-ant-test-ANTHROPIC-0123456789abcdef",
    # These two are not shaped like real keys, so only the gateway's knowledge of them can redact them.
    "GEMINI_API_KEY": "test-GEMINI-key-0123456789abcdef",
    "GROQ_API_KEY": "test-GROQ-key-0123456789abcdef",
}

# One model per dialect (plus an OpenAI-compatible row); the fake keys scenarios by the part after "/".
MODELS: dict[str, str] = {
    "openai": "openai/gpt-4o-mini",
    "anthropic": "anthropic/claude-haiku-4-5",
    "gemini": "gemini/gemini-2.5-flash",
    "ollama": "ollama/llama3.2",
    "groq": "groq/llama-3.3-70b-versatile",
}

# The interpreter of the venv the package is installed in (editable), for subprocess runs.
PYTHON = sys.executable
CLI = [PYTHON, "-m", "ai_gateway.cli"]


def vendor(model_id: str) -> str:
    """The vendor's model name, as the fake sees it: everything after the first "/"."""
    return model_id.partition("/")[2]


def provider_env(fake_url: str) -> dict[str, str]:
    """The provider variables that point every dialect at the fake."""
    return {
        **KEYS,
        "OPENAI_BASE_URL": f"{fake_url}/v1",
        "ANTHROPIC_BASE_URL": fake_url,
        "GEMINI_BASE_URL": fake_url,
        "OLLAMA_HOST": fake_url,
        "GROQ_BASE_URL": f"{fake_url}/v1",
    }


def subprocess_env(fake_url: str, **extra: str) -> dict[str, str]:
    """A minimal environment for a gateway subprocess: nothing inherited but PATH, HOME, LANG and the test run's
    XDG_CACHE_HOME (tests/conftest.py)."""
    env = {name: os.environ[name] for name in ("PATH", "HOME", "LANG", "XDG_CACHE_HOME") if name in os.environ}
    env.update(
        FASTMCP_CHECK_FOR_UPDATES="off",
        FASTMCP_SHOW_SERVER_BANNER="false",
        FASTMCP_LOG_ENABLED="false",
        PYTHONUNBUFFERED="1",
    )
    env.update(provider_env(fake_url))
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shared client trusts proxy variables; in-process traffic to the local fake must not use one."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


class GatedFake(FakeProvider):
    """The fake, plus gates: a held model's request waits (connected) until the test releases it.

    Holding the fast models until the slow ones have arrived makes races deterministic without
    any timing: ``release = fake.hold("a", "b")``, wait for the calls that matter, ``release.set()``.
    """

    def __init__(self) -> None:
        super().__init__()
        self._gates: dict[str, asyncio.Event] = {}

    def hold(self, *models: str) -> asyncio.Event:
        gate = asyncio.Event()
        for model in models:
            self._gates[model] = gate
        return gate

    async def wait_until(self, pred: Callable[[], bool], what: str, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Resolve when ``pred()`` holds; re-checked on every request and connection event."""
        await self._wait(pred, timeout, lambda: what)

    async def _answer(self, request: Any, dialect: str, model: str, body: Any, call: Any) -> Any:
        gate = self._gates.get(model)
        if gate is not None:
            await gate.wait()
        return await super()._answer(request, dialect, model, body, call)


@pytest.fixture
async def fake() -> AsyncIterator[GatedFake]:
    async with GatedFake() as server:
        yield server


@pytest.fixture
def environ(fake: FakeProvider) -> dict[str, str]:
    return provider_env(fake.url)


@pytest.fixture
def make_server(environ: Mapping[str, str]) -> Callable[..., FastMCP]:
    """``make_server(**settings)``: a gateway server on hermetic settings and the fake's environment."""

    def make(**settings: Any) -> FastMCP:
        return build_server(Settings(_env_file=None, **settings), dict(environ))

    return make


@pytest.fixture
async def client(make_server: Callable[..., FastMCP]) -> AsyncIterator[Client]:
    async with Client(make_server()) as c:
        yield c


# ---------------------------------------------------------------------------- subprocesses
async def wait_healthy(base_url: str, proc: asyncio.subprocess.Process, timeout: float = 15.0) -> httpx.Response:  # noqa: ASYNC109
    """Poll ``GET /health`` until it answers 200 (bounded); fail early if the process died."""
    async with httpx.AsyncClient(timeout=1.0, trust_env=False) as http:
        async with asyncio.timeout(timeout):
            while True:
                if proc.returncode is not None:
                    raise RuntimeError(f"the server exited with {proc.returncode} before it was ready")
                with contextlib.suppress(httpx.TransportError):
                    resp = await http.get(f"{base_url}/health")
                    if resp.status_code == 200:
                        return resp
                await asyncio.sleep(0.05)  # readiness poll interval, not a "wait and see"


async def stop_process(proc: asyncio.subprocess.Process, timeout: float = 5.0) -> None:  # noqa: ASYNC109
    """Terminate, wait with a timeout, kill if needed; always reap the process."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            async with asyncio.timeout(timeout):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


@dataclass
class ServerProcess:
    """A gateway started with ``serve --transport http``."""

    proc: asyncio.subprocess.Process
    base_url: str
    health: httpx.Response | None = None  # the first /health answer, once ready

    async def stop(self) -> None:
        await stop_process(self.proc)


async def spawn_http_server(
    env: Mapping[str, str], cwd: Path, *, stdout: Any = None, stderr: Any = None, host: str = "127.0.0.1"
) -> ServerProcess:
    """Start (not yet ready) a gateway over HTTP; ``stdout``/``stderr`` (open files) capture its output.

    Bound to ``host``, reached at 127.0.0.1 (which an all-addresses bind covers too).
    """
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "serve",
        "--transport",
        "http",
        "--host",
        host,
        "--port",
        str(port),
        env=dict(env),
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
    )
    return ServerProcess(proc, f"http://127.0.0.1:{port}")


@contextlib.asynccontextmanager
async def http_servers(*specs: Mapping[str, Any]) -> AsyncIterator[list[ServerProcess]]:
    """Several gateways, started side by side (start-up dominates), each ready; all stopped after.

    Each spec holds :func:`spawn_http_server`'s arguments.
    """
    servers: list[ServerProcess] = []
    try:
        for spec in specs:
            servers.append(await spawn_http_server(**spec))
        for server in servers:
            server.health = await wait_healthy(server.base_url, server.proc)
        yield servers
    finally:
        await asyncio.gather(*(server.stop() for server in servers))


async def run_cli(*args: str, env: Mapping[str, str], cwd: Path, timeout: float = 30.0) -> tuple[int, str, str]:  # noqa: ASYNC109
    """Run ``python -m ai_gateway.cli ARGS`` without blocking the loop the fake runs in."""
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        env=dict(env),
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    finally:
        await stop_process(proc)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
