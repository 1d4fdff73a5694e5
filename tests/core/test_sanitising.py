"""What a provider says is scrubbed of every key the gateway knows before anyone sees it, whichever provider's key."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from ai_gateway.adapter import Adapter, HttpRequest, ProviderConfig
from ai_gateway.dispatch import Dispatcher, Resilience
from ai_gateway.errors import BadRequest, GatewayError
from ai_gateway.outcome import ModelTarget
from ai_gateway.resilience.clock import Deadline
from ai_gateway.settings import Settings
from ai_gateway.types import ChatRequest, Completion, FinishReason, Message, Usage

KEY = "key-of-ANOTHER-provider-0123456789"  # not key-shaped: only the gateway's knowledge of it can catch it
REQUEST = ChatRequest(messages=(Message("user", "hi"),))


class Scripted(Adapter):
    """Answers with a given completion, or raises a given error, as a plugin's adapter might."""

    dialect = "scripted"

    def __init__(self, outcome: Completion | GatewayError) -> None:
        super().__init__(ProviderConfig(name="scripted", base_url="scripted://"))
        self.outcome = outcome

    def build_request(self, request: ChatRequest, model: str) -> HttpRequest:
        raise TypeError("no HTTP")

    def parse_response(self, body: Any, model: str) -> Completion:
        raise TypeError("no HTTP")

    async def complete(self, client: httpx.AsyncClient, request: ChatRequest, model: str) -> Completion:
        if isinstance(self.outcome, GatewayError):
            raise self.outcome
        return self.outcome


async def call(outcome: Completion | GatewayError):
    resilience = Resilience.from_settings(Settings(_env_file=None, max_attempts=1))
    async with httpx.AsyncClient() as client:
        dispatcher = Dispatcher(lambda: client, resilience, secrets=lambda: (KEY,))
        target = ModelTarget("scripted/m", "scripted", "m", Scripted(outcome))
        return await dispatcher.bind(REQUEST, Deadline(5))(target)


async def test_an_answer_is_scrubbed_and_a_vendor_field_that_is_no_text_dropped() -> None:
    """A non-string "model" in the response failed the whole tool call after the entry was stored."""
    echoed: Any = {"echo": KEY}
    completion = Completion(f"sent {KEY}", FinishReason.STOP, Usage(1, 1), model=echoed, response_id=f"id-{KEY}")
    outcome = await call(completion)
    assert outcome.ok and outcome.completion is not None
    assert (outcome.completion.text, outcome.completion.model) == ("sent [REDACTED]", None)
    assert outcome.completion.response_id == "id-[REDACTED]"


async def test_an_empty_answer_names_its_finish_reason_without_the_key() -> None:
    completion = Completion("", FinishReason.OTHER, Usage(1, 0), raw_finish_reason=f"weird-{KEY}")
    outcome = await call(completion)
    assert outcome.error is not None and outcome.error.code == "empty_response"
    assert outcome.error.message == "the model returned no text (finish reason: weird-[REDACTED])"
    assert outcome.error.completion.raw_finish_reason == "weird-[REDACTED]"  # type: ignore[attr-defined]


@pytest.mark.parametrize("cut", [False, True])
async def test_an_error_echoing_another_providers_key_is_scrubbed_at_its_source(cut: bool) -> None:
    """The adapter scrubs only its own provider's key; this one went to other processes through Redis as it was."""
    message = "x" * 480 + KEY[:12] if cut else f"bad key: {KEY}"
    outcome = await call(BadRequest(message, status=400))
    assert outcome.error is not None
    assert outcome.error.message == ("x" * 480 + "[REDACTED]" if cut else "bad key: [REDACTED]")
