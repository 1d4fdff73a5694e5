"""Every built-in dialect sends ``system`` and a leading system message alike.

The cache keys the two as one request (see ``ai_gateway.cache.key.canonical``); this is what makes that true.
A dialect that came to send them differently must fail here before it serves one's answer for the other.
"""

from __future__ import annotations

import pytest

from ai_gateway.adapter import Adapter, ProviderConfig
from ai_gateway.secrets import Secret
from ai_gateway.types import ChatRequest, Message
from providers.anthropic import AnthropicAdapter
from providers.gemini import GeminiAdapter
from providers.ollama import OllamaAdapter
from providers.openai import OpenAIChatAdapter

DIALECTS: dict[str, tuple[type[Adapter], str]] = {
    "openai": (OpenAIChatAdapter, "http://127.0.0.1:1/v1"),
    "anthropic": (AnthropicAdapter, "http://127.0.0.1:1"),
    "gemini": (GeminiAdapter, "http://127.0.0.1:1/v1beta"),
    "ollama": (OllamaAdapter, "http://127.0.0.1:1"),
}
USER = Message("user", "What is the capital of France?")
SAME = {
    "system alone": (
        ChatRequest(messages=(USER,), system="Be brief."),
        ChatRequest(messages=(Message("system", "Be brief."), USER)),
    ),
    "system and system messages": (
        ChatRequest(messages=(Message("system", "And polite."), USER), system="Be brief."),
        ChatRequest(messages=(Message("system", "Be brief."), Message("system", "And polite."), USER)),
    ),
}


@pytest.mark.parametrize("case", list(SAME))
@pytest.mark.parametrize("dialect", list(DIALECTS))
def test_system_and_a_leading_system_message_are_one_request_on_the_wire(dialect: str, case: str) -> None:
    adapter_class, base_url = DIALECTS[dialect]
    adapter = adapter_class(ProviderConfig(name=dialect, base_url=base_url, api_key=Secret("k-system-test-0000")))
    given_system, listed = SAME[case]
    assert adapter.build_request(given_system, "some-model") == adapter.build_request(listed, "some-model")
