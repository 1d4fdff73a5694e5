"""The Anthropic Messages API dialect (https://docs.anthropic.com/en/api/messages)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ai_gateway.adapter import Adapter, HttpRequest, ProviderSpec, error_message_from_body, token_count
from ai_gateway.errors import (
    AuthError,
    BadRequest,
    ContentFiltered,
    ContextLengthExceeded,
    NotFound,
    Overloaded,
    ProviderError,
    ProviderTimeout,
    QuotaExhausted,
    RateLimited,
    UpstreamError,
    error_for_status,
)
from ai_gateway.types import ChatRequest, Completion, FinishReason, Usage

API_VERSION = "2023-06-01"

# https://docs.anthropic.com/en/api/handling-stop-reasons
FINISH_REASONS: dict[str, FinishReason] = {
    "end_turn": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
    "max_tokens": FinishReason.LENGTH,
    "model_context_window_exceeded": FinishReason.LENGTH,
    "tool_use": FinishReason.TOOL_CALLS,
    "refusal": FinishReason.CONTENT_FILTER,
    "pause_turn": FinishReason.OTHER,
}

# error.type -> class, from https://docs.anthropic.com/en/api/errors
_ERROR_TYPES: dict[str, type[ProviderError]] = {
    "invalid_request_error": BadRequest,
    "authentication_error": AuthError,
    "permission_error": AuthError,
    "billing_error": QuotaExhausted,
    "not_found_error": NotFound,
    "request_too_large": ContextLengthExceeded,
    "rate_limit_error": RateLimited,
    "api_error": UpstreamError,
    "timeout_error": ProviderTimeout,
    "overloaded_error": Overloaded,
}

# Out-of-credit and spend-limit errors come as 400 invalid_request_error (or a 429) with only
# the message to tell them apart; retrying them cannot succeed until someone pays.
_QUOTA_WORDS = ("credit balance is too low", "usage limit", "spend limit")
_CONTEXT_WORDS = ("prompt is too long", "exceed context limit")


class AnthropicAdapter(Adapter):
    dialect = "anthropic"
    max_temperature = 1.0  # "Ranges from 0.0 to 1.0" (Messages API reference)

    def build_request(self, request: ChatRequest, model: str) -> HttpRequest:
        headers = {"anthropic-version": API_VERSION, "content-type": "application/json"}
        if self.config.api_key is not None:
            headers["x-api-key"] = self.config.api_key.reveal()
        # Anthropic requires max_tokens, so a default stands in when the caller set none.
        max_tokens = request.max_tokens
        if max_tokens is None:
            max_tokens = int(self.config.options.get("default_max_tokens", 4096))
        turns = request.alternating_turns()
        if turns and turns[-1][0] == "assistant":
            # A conversation that ends with the assistant's words asks Claude to go on from them (a prefill), and
            # the API refuses such words ending in whitespace ("Sure, the colour is ") with a 400.
            turns[-1] = ("assistant", turns[-1][1].rstrip())
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": max_tokens,
            "messages": [{"role": role, "content": text} for role, text in turns],
        }
        system = request.system_prompt()
        if system is not None:
            body["system"] = system
        if request.temperature is not None:
            body["temperature"] = request.temperature
        return HttpRequest("POST", self.config.url("/v1/messages"), headers, body)

    def parse_response(self, body: Any, model: str) -> Completion:
        # Thinking and tool_use blocks are not part of the answer.
        text = "".join(block["text"] for block in body["content"] if block.get("type") == "text")
        raw_reason = body.get("stop_reason")
        reason = FINISH_REASONS.get(raw_reason, FinishReason.OTHER) if raw_reason else FinishReason.OTHER
        completion = Completion(
            text=text,
            finish_reason=reason,
            usage=_usage(body.get("usage")),
            model=body.get("model") or model,
            raw_finish_reason=raw_reason,
            response_id=body.get("id"),
        )
        if reason is FinishReason.CONTENT_FILTER and not text:  # billed: its usage goes with the error
            raise ContentFiltered("the model declined to answer (stop_reason refusal)", completion=completion)
        return completion

    def classify_error(self, status: int, headers: Mapping[str, str], body: Any) -> ProviderError:
        err = body.get("error") if isinstance(body, dict) else None
        err_type = err.get("type") if isinstance(err, dict) else None
        message = error_message_from_body(body, status)
        lowered = message.lower()

        if any(w in lowered for w in _QUOTA_WORDS):
            return QuotaExhausted(message, status=status)
        if any(w in lowered for w in _CONTEXT_WORDS):
            return ContextLengthExceeded(message, status=status)
        cls = _ERROR_TYPES.get(err_type) if isinstance(err_type, str) else None
        if cls is None:
            # Not Anthropic's shape (a proxy or Cloudflare page): trust the status.
            return error_for_status(status, message)
        return cls(message, status=status)


def _usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    uncached, output = token_count(raw.get("input_tokens")), token_count(raw.get("output_tokens"))
    if uncached is None or output is None:
        return None
    # Anthropic's input_tokens excludes cache reads and writes; our Usage counts all input.
    cache_read = token_count(raw.get("cache_read_input_tokens"))
    cache_write = token_count(raw.get("cache_creation_input_tokens")) or 0
    return Usage(
        input_tokens=uncached + (cache_read or 0) + cache_write,
        output_tokens=output,
        cached_input_tokens=cache_read,
    )


ANTHROPIC = ProviderSpec(
    name="anthropic",
    adapter=AnthropicAdapter,
    base_url="https://api.anthropic.com",
    api_key_env=("ANTHROPIC_API_KEY",),
    base_url_env=("ANTHROPIC_BASE_URL",),
    description="Anthropic's Claude models via the Messages API.",
    example_models=("claude-haiku-4-5", "claude-sonnet-4-5", "claude-opus-4-1"),
    price_source="anthropic",
)
