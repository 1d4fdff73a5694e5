"""What the cache tests share: a fake that can also answer with any finish reason, and a gateway handle.

A :class:`Running` gateway is a real server built by ``build_server`` and driven through fastmcp's in-memory
client; ``gateway`` reaches the live :class:`~ai_gateway.gateway.Gateway` its lifespan built, so a test can
flush pending cache writes (``settle``) and look at the cache backend.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from fastmcp import Client, FastMCP
from fastmcp.client.client import CallToolResult

from ai_gateway.cache.memory import MemoryBackend
from ai_gateway.gateway import Gateway
from tests.fake_provider import _json_response
from tests.integration.conftest import GatedFake

PROMPT = "What is the capital of France?"
MODEL = "openai/gpt-4o-mini"
# Small backoffs so retries cost milliseconds; a small floor so tests may use short deadlines.
FAST: dict[str, Any] = {"backoff_base_s": 0.01, "backoff_max_s": 0.05, "min_timeout_s": 0.05}


class CacheFake(GatedFake):
    """The gated fake, plus OpenAI-dialect answers with any text and finish reason (content filter, unknown)."""

    def __init__(self) -> None:
        super().__init__()
        self._finishes: dict[str, tuple[str, str]] = {}

    def finish_with(self, model: str, text: str, finish_reason: str) -> None:
        self._finishes[model] = (text, finish_reason)

    async def _answer(self, request: Any, dialect: str, model: str, body: Any, call: Any) -> web.StreamResponse:
        custom = self._finishes.get(model)
        if custom is None:
            return await super()._answer(request, dialect, model, body, call)
        assert dialect == "openai", "finish_with answers in the OpenAI dialect only"
        if (gate := self._gates.get(model)) is not None:  # held like any other answer (``hold``)
            await gate.wait()
        text, reason = custom
        payload = {
            "id": "chatcmpl-custom",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
        }
        return self._done(call, "ok", _json_response(200, payload))


@dataclass
class Reply:
    """One query_models call's result."""

    raw: CallToolResult

    @property
    def is_error(self) -> bool:
        return bool(self.raw.is_error)

    @property
    def data(self) -> dict[str, Any]:
        assert self.raw.structured_content is not None, self.raw.content
        return self.raw.structured_content

    @property
    def results(self) -> list[dict[str, Any]]:
        return self.data["results"]

    @property
    def only(self) -> dict[str, Any]:
        (result,) = self.results
        return result

    @property
    def answer(self) -> str | None:
        return self.data.get("answer")

    def by_model(self, model: str) -> dict[str, Any]:
        (result,) = [r for r in self.results if r["model"] == model]
        return result


@dataclass
class Running:
    """A gateway server with an open in-memory client."""

    client: Client
    server: FastMCP

    @property
    def gateway(self) -> Gateway:
        result = self.server._lifespan_result
        assert isinstance(result, dict), "the server's lifespan is not running"
        return result["gateway"]

    async def call(self, arguments: dict[str, Any]) -> Reply:
        """Call query_models with exactly these arguments (dict order preserved)."""
        return Reply(await self.client.call_tool("query_models", arguments, raise_on_error=False))

    async def query(self, **arguments: Any) -> Reply:
        arguments.setdefault("prompt", PROMPT)
        arguments.setdefault("models", [MODEL])
        return await self.call(arguments)

    async def settle(self) -> None:
        """Wait for the cache writes under way (they run off the response path)."""
        await self.gateway.cache.flush()

    async def ask(self, **arguments: Any) -> Reply:
        """query() then settle(): the next call sees whatever this one stored."""
        reply = await self.query(**arguments)
        await self.settle()
        return reply

    def memory(self) -> MemoryBackend:
        """The embedded backend (the cache itself, or Redis's fallback)."""
        backend: Any = self.gateway.cache.backend
        return backend if isinstance(backend, MemoryBackend) else backend.fallback


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def until(condition: Callable[[], bool], what: str, timeout: float = 5.0, every: float = 0.01) -> None:  # noqa: ASYNC109
    """Poll ``condition`` until it holds (bounded); fail naming ``what``."""
    stop_at = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > stop_at:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(every)  # poll interval, not a "wait and see"


def cancel_after_write(
    monkeypatch: pytest.MonkeyPatch, marker: bytes, task: Callable[[], asyncio.Task[Any]]
) -> asyncio.Event:
    """Cancel ``task()`` in the loop turn right after the first Redis command holding ``marker`` is written.

    Every command's bytes go out through StreamWriter.writelines then drain (inline, or, with a socket timeout,
    in a task of Python 3.11's asyncio.wait_for, which drops a cancellation landing in exactly that turn).
    The returned event is set once the cancellation is scheduled.
    """
    real_writelines, real_drain = asyncio.StreamWriter.writelines, asyncio.StreamWriter.drain
    last_written: dict[int, bytes] = {}
    fired = asyncio.Event()

    def writelines(self: asyncio.StreamWriter, data: Any) -> None:
        chunks = [bytes(chunk) for chunk in data]
        last_written[id(self)] = b"".join(chunks)
        real_writelines(self, chunks)

    async def drain_then_cancel(self: asyncio.StreamWriter) -> None:
        await real_drain(self)
        if not fired.is_set() and marker in last_written.get(id(self), b""):
            fired.set()
            asyncio.get_running_loop().call_soon(task().cancel)  # the very next turn

    monkeypatch.setattr(asyncio.StreamWriter, "writelines", writelines)
    monkeypatch.setattr(asyncio.StreamWriter, "drain", drain_then_cancel)
    return fired
