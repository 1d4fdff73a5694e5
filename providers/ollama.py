"""Ollama's native chat API (https://github.com/ollama/ollama/blob/main/docs/api.md#generate-a-chat-completion).

Ollama also serves an OpenAI-compatible endpoint, but the native one reports
``done_reason`` and token counts reliably and takes sampling options by their own names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from ai_gateway.adapter import Adapter, HttpRequest, ProviderSpec, error_message_from_body, token_count
from ai_gateway.errors import BadRequest, NotFound, ProviderError, UpstreamError, error_for_status
from ai_gateway.types import ChatRequest, Completion, FinishReason, Usage

DEFAULT_HOST = "http://localhost:11434"
_DEFAULT_PORT = 11434

# https://github.com/ollama/ollama/blob/main/docs/api.md#response-10 (done_reason)
FINISH_REASONS: dict[str, FinishReason] = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "load": FinishReason.OTHER,  # an empty request that only loaded the model
    "unload": FinishReason.OTHER,  # keep_alive 0 unloaded the model
}

_STATUS_ERRORS: dict[int, type[ProviderError]] = {
    400: BadRequest,
    404: NotFound,  # {"error": "model \"x\" not found, try pulling it first"}
    500: UpstreamError,
}


def normalise_host(value: str) -> str:
    """An OLLAMA_HOST value as a base URL.

    OLLAMA_HOST is the server's bind address, so people set it the way the server
    reads it: "0.0.0.0:11434", "localhost" or a full URL. Like Ollama's own clients,
    a bare host gets http:// and, without a port, Ollama's default port.
    """
    value = value.strip().rstrip("/")
    if not value:
        return DEFAULT_HOST
    if "://" in value:
        return value
    if value.startswith(":"):  # ":11434", a bind address on every interface: Ollama's clients call 127.0.0.1
        value = f"127.0.0.1{value}"
    url = f"http://{value}"
    try:
        port = urlsplit(url).port
    except ValueError:  # a malformed port: leave it for the transport to report
        return url
    if port is None:
        parts = urlsplit(url)
        url = parts._replace(netloc=f"{parts.netloc}:{_DEFAULT_PORT}").geturl()
    return url


class OllamaAdapter(Adapter):
    dialect = "ollama"

    def build_request(self, request: ChatRequest, model: str) -> HttpRequest:
        headers = {"content-type": "application/json"}
        # Ollama needs no key, but one configured for a reverse proxy or ollama.com is sent as a bearer.
        if self.config.api_key is not None:
            headers["authorization"] = f"Bearer {self.config.api_key.reveal()}"
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": m.role, "content": m.content} for m in request.with_system_first()],
            "stream": False,  # the default is a stream of JSON lines
        }
        options: dict[str, Any] = {}
        if request.temperature is not None:
            options["temperature"] = request.temperature
        if request.max_tokens is not None:
            options["num_predict"] = request.max_tokens
        if options:
            body["options"] = options
        return HttpRequest("POST", self.config.url("/api/chat"), headers, body)

    def parse_response(self, body: Any, model: str) -> Completion:
        text = body["message"]["content"]
        if not isinstance(text, str):
            raise TypeError(f"message.content is {type(text).__name__}, not str")
        raw_reason = body.get("done_reason")
        reason = FINISH_REASONS.get(raw_reason, FinishReason.OTHER) if raw_reason else FinishReason.OTHER
        return Completion(
            text=text,
            finish_reason=reason,
            usage=_usage(body),
            model=body.get("model") or model,
            raw_finish_reason=raw_reason,
        )

    def classify_error(self, status: int, headers: Mapping[str, str], body: Any) -> ProviderError:
        message = error_message_from_body(body, status)
        cls = _STATUS_ERRORS.get(status)
        return cls(message, status=status) if cls is not None else error_for_status(status, message)


def _usage(body: Mapping[str, Any]) -> Usage | None:
    prompt, completion = token_count(body.get("prompt_eval_count")), token_count(body.get("eval_count"))
    if prompt is None and completion is None:
        return None
    # The server omits zero counts (Go omitempty), e.g. prompt_eval_count when the prompt was cached.
    return Usage(input_tokens=prompt or 0, output_tokens=completion or 0)


OLLAMA = ProviderSpec(
    name="ollama",
    adapter=OllamaAdapter,
    base_url=DEFAULT_HOST,
    # Optional: a local server needs no key; Ollama's cloud API and authenticating proxies do.
    api_key_env=("OLLAMA_API_KEY",),
    base_url_env=("OLLAMA_HOST",),
    normalise_base_url=normalise_host,
    key_required=False,
    description="An Ollama server (native /api/chat); OLLAMA_API_KEY only for ollama.com or a proxy.",
    example_models=("llama3.2", "qwen2.5", "gemma3"),
)
