"""A third-party-style plugin used by the registry tests (imported only when loaded)."""

from __future__ import annotations

from typing import Any

from ai_gateway.adapter import Adapter, HttpRequest, ProviderSpec
from ai_gateway.types import ChatRequest, Completion, FinishReason


class EchoHttpAdapter(Adapter):
    dialect = "echo-http"

    def build_request(self, request: ChatRequest, model: str) -> HttpRequest:
        body = {"model": model, "text": request.messages[-1].content}
        return HttpRequest("POST", f"{self.config.base_url}/echo", {}, body)

    def parse_response(self, body: Any, model: str) -> Completion:
        return Completion(text=body["text"], finish_reason=FinishReason.STOP)


ACME = ProviderSpec(
    name="acme",
    adapter=EchoHttpAdapter,
    base_url="https://acme.example/api",
    api_key_env=("ACME_API_KEY",),
    base_url_env=("ACME_BASE_URL",),
    description="Acme's echo service",
    example_models=("echo-1",),
)
WRONG_NAME = ProviderSpec(name="not-what-the-entry-point-says", adapter=EchoHttpAdapter, base_url="https://x")
NOT_A_SPEC = object()


class CheckRaisesAdapter(EchoHttpAdapter):
    def validate_model(self, model: str) -> str | None:
        raise RuntimeError("bug while checking, near the key k-plugin-secret-77")


class InitRaisesAdapter(EchoHttpAdapter):
    def __init__(self, config: Any) -> None:
        raise RuntimeError("bug while starting")


CHECK_RAISES = ProviderSpec(name="checkraises", adapter=CheckRaisesAdapter, base_url="https://x", key_required=False)
INIT_RAISES = ProviderSpec(name="initraises", adapter=InitRaisesAdapter, base_url="https://x", key_required=False)

