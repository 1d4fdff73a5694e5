"""mock: an offline, deterministic provider for trying the gateway and testing pipelines.

It makes no network call and needs no key. The model name chooses the behaviour::

    mock/echo                      the last user message, verbatim
    mock/fixed:<text>              always <text>            (mock/fixed:4)
    mock/fail:<code>               always fails with <code> (mock/fail:rate_limited)
    ...@<n>ms or ...@<n>s          answer (or fail) after a delay (mock/fixed:4@80ms)

A word counts as a token: an answer longer than the request's ``max_tokens`` is cut
there and finishes with ``length``, as a real model's would.

It exists for users (agents, evaluation pipelines, demos). The real adapters are
never tested through it.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ai_gateway.adapter import Adapter, HttpRequest, ProviderSpec
from ai_gateway.errors import PROVIDER_ERRORS, BadRequest
from ai_gateway.types import ChatRequest, Completion, FinishReason, Usage

if TYPE_CHECKING:
    import httpx

_GRAMMAR = re.compile(
    r"^(?P<kind>echo|fixed|fail)(?::(?P<arg>.*?))?(?:@(?P<delay>\d+(?:\.\d+)?)(?P<unit>ms|s))?$", re.S
)
_HELP = "use echo, fixed:<text>, or fail:<code>, optionally followed by @<n>ms (e.g. mock/fixed:4@80ms)"


@dataclass(frozen=True, slots=True)
class Behaviour:
    kind: str
    arg: str
    delay_s: float


def parse_model(model: str) -> Behaviour | str:
    """The behaviour a mock model name asks for, or an explanation of what is wrong."""
    match = _GRAMMAR.match(model)
    if match is None:
        return f"unknown mock model; {_HELP}"
    kind, arg = match["kind"], match["arg"] or ""
    if kind == "echo" and match["arg"] is not None:
        return "echo takes no argument: mock/echo, or mock/echo@<n>ms"
    if kind == "fixed" and not arg:
        return "fixed needs a text: mock/fixed:<text>"
    if kind == "fail" and arg not in PROVIDER_ERRORS:
        return f"fail needs one of: {', '.join(sorted(PROVIDER_ERRORS))}"
    delay = float(match["delay"] or 0) / (1000 if match["unit"] == "ms" else 1)
    return Behaviour(kind, arg, delay)


class MockAdapter(Adapter):
    dialect = "mock"

    def validate_model(self, model: str) -> str | None:
        parsed = parse_model(model)
        return parsed if isinstance(parsed, str) else None

    def build_request(self, request: ChatRequest, model: str) -> HttpRequest:
        raise TypeError("the mock provider makes no HTTP request; complete() answers directly")

    def parse_response(self, body: Any, model: str) -> Completion:
        raise TypeError("the mock provider receives no HTTP response")

    async def complete(self, client: httpx.AsyncClient, request: ChatRequest, model: str) -> Completion:
        behaviour = parse_model(model)
        if isinstance(behaviour, str):
            raise BadRequest(behaviour, provider=self.config.name)
        if behaviour.delay_s:
            await asyncio.sleep(behaviour.delay_s)
        if behaviour.kind == "fail":
            error = PROVIDER_ERRORS[behaviour.arg](f"mock failure: {behaviour.arg}", provider=self.config.name)
            raise error
        prompt = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
        text = prompt if behaviour.kind == "echo" else behaviour.arg
        words, finish = text.split(), FinishReason.STOP
        if request.max_tokens is not None and len(words) > request.max_tokens:
            words, finish = words[: request.max_tokens], FinishReason.LENGTH
            text = " ".join(words)
        usage = Usage(input_tokens=sum(len(m.content.split()) for m in request.messages), output_tokens=len(words))
        return Completion(text=text, finish_reason=finish, usage=usage, model=model, raw_finish_reason=str(finish))


MOCK = ProviderSpec(
    name="mock",
    adapter=MockAdapter,
    base_url="mock://local",
    key_required=False,
    description="Offline deterministic answers for demos and pipeline tests (no network, no cost)",
    example_models=("echo", "fixed:4@80ms", "fail:rate_limited"),
)
