"""A fake adapter whose answers the test releases by hand: strategy tests need no clock.

Each model name gets a future; the test resolves it (with a text or an error)
in whatever order it wants, and can see which calls started and which were
cancelled.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from ai_gateway.adapter import Adapter, HttpRequest, ProviderConfig
from ai_gateway.errors import GatewayError
from ai_gateway.outcome import ModelTarget
from ai_gateway.types import ChatRequest, Completion, FinishReason, Message, Usage

REQUEST = ChatRequest(messages=(Message("user", "What is 2+2?"),))


class GatedAdapter(Adapter):
    dialect = "gated"

    def __init__(self) -> None:
        super().__init__(ProviderConfig(name="gated", base_url="gated://"))
        self.gates: dict[str, asyncio.Future[str | GatewayError]] = {}
        self.scripts: dict[str, list[str | GatewayError]] = {}  # per attempt, before the gate
        self.started: list[str] = []
        self.cancelled: list[str] = []
        self.any_started = asyncio.Event()

    def target(self, model: str) -> ModelTarget:
        self.gates[model] = asyncio.get_running_loop().create_future()
        return ModelTarget(f"gated/{model}", "gated", model, self)

    def answer(self, model: str, text: str) -> None:
        self.gates[model].set_result(text)

    def fail(self, model: str, error: GatewayError) -> None:
        self.gates[model].set_result(error)

    def script(self, model: str, *outcomes: str | GatewayError) -> None:
        """What the model's next attempts give, one each, in order; the gate answers the attempts after them."""
        self.scripts[model] = list(outcomes)

    async def wait_started(self, *models: str) -> None:
        while not all(m in self.started for m in models):
            self.any_started.clear()
            await self.any_started.wait()

    def build_request(self, request: ChatRequest, model: str) -> HttpRequest:
        raise TypeError("gated adapter makes no HTTP request")

    def parse_response(self, body: Any, model: str) -> Completion:
        raise TypeError("gated adapter parses no HTTP response")

    async def complete(self, client: httpx.AsyncClient, request: ChatRequest, model: str) -> Completion:
        self.started.append(model)
        self.any_started.set()
        try:
            if self.scripts.get(model):
                outcome = self.scripts[model].pop(0)
                await asyncio.sleep(0)  # still answered in a later turn of the loop, like a real response
            else:
                outcome = await asyncio.shield(self.gates[model])
        except asyncio.CancelledError:
            self.cancelled.append(model)
            raise
        if isinstance(outcome, GatewayError):
            raise outcome
        return Completion(text=outcome, finish_reason=FinishReason.STOP, usage=Usage(3, 1))
