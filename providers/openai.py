"""The OpenAI Chat Completions dialect, spoken by OpenAI and most "OpenAI-compatible" hosts.

Each compatible host is a :class:`ProviderSpec` row below, not code. Hosts differ
in small ways (the max-tokens field name, error body shapes), so the adapter reads
dialect knobs from ``config.options`` and is lenient when parsing errors.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from ai_gateway.adapter import Adapter, HttpRequest, ProviderSpec, error_message_from_body, token_count
from ai_gateway.errors import (
    AuthError,
    BadRequest,
    ContentFiltered,
    ContextLengthExceeded,
    MalformedResponse,
    NotFound,
    ProviderError,
    QuotaExhausted,
    RateLimited,
    error_for_status,
    parse_retry_after,
)
from ai_gateway.types import ChatRequest, Completion, FinishReason, Usage

# https://platform.openai.com/docs/api-reference/chat/object (choices[].finish_reason)
FINISH_REASONS: dict[str, FinishReason] = {
    "stop": FinishReason.STOP,
    "eos": FinishReason.STOP,  # Together's older models report end-of-sequence this way
    "length": FinishReason.LENGTH,
    "content_filter": FinishReason.CONTENT_FILTER,
    "tool_calls": FinishReason.TOOL_CALLS,
    "function_call": FinishReason.TOOL_CALLS,  # the deprecated functions API
}

# Error ``code``/``type`` values (https://platform.openai.com/docs/guides/error-codes)
# plus the spellings compatible hosts use for the same situations.
# OpenAI's billing stops (help.openai.com/6614457): error.type may still say insufficient_quota, or may not.
_QUOTA_TAGS = frozenset({
    "insufficient_quota", "billing_hard_limit_reached", "insufficient_balance", "credit_balance_exhausted",
    "organization_spend_limit_exceeded", "project_spend_limit_exceeded", "organization_usage_limit_exceeded",
})  # fmt: skip
_CONTEXT_TAGS = frozenset({"context_length_exceeded"})
_FILTER_TAGS = frozenset({"content_filter", "content_policy_violation"})
_AUTH_TAGS = frozenset({"invalid_api_key", "authentication_error"})
_NOT_FOUND_TAGS = frozenset({"model_not_found"})

# vLLM, Together and others say it in words and leave ``code`` empty.
_CONTEXT_WORDS = ("maximum context length", "context length exceeded", "context window")

# "Request too large for gpt-4o ... on tokens per min (TPM): Limit 30000, Requested 30601."
_TOO_LARGE = re.compile(r"request too large", re.IGNORECASE)

# OpenAI and Groq put the wait in the message ("Please try again in 1.5s" / "in 7m12.5s")
# and often send no Retry-After header on 429s.
_TRY_AGAIN = re.compile(r"try again in ((?:\d+(?:\.\d+)?(?:ms|h|m|s))+)", re.IGNORECASE)
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class OpenAIChatAdapter(Adapter):
    dialect = "openai"
    # Headers name the caller (X-Title) or authenticate it (Azure's api-key): never key material.
    options_outside_cache_key = frozenset({"extra_headers"})

    def build_request(self, request: ChatRequest, model: str) -> HttpRequest:
        headers: dict[str, str] = {"content-type": "application/json"}
        # Local servers (vLLM, LM Studio) run keyless; an empty bearer would be rejected by some proxies.
        if self.config.api_key is not None:
            headers["authorization"] = f"Bearer {self.config.api_key.reveal()}"
        extra: Mapping[str, str] = self.config.options.get("extra_headers", {})
        headers.update({str(k): str(v) for k, v in extra.items()})

        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": m.role, "content": m.content} for m in request.with_system_first()],
        }
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.max_tokens is not None:
            # OpenAI's reasoning models reject "max_tokens"; most compatible hosts only know it.
            body[self.config.options.get("max_tokens_field", "max_tokens")] = request.max_tokens
        return HttpRequest("POST", self.config.url("/chat/completions"), headers, body)

    def parse_response(self, body: Any, model: str) -> Completion:
        choices = body.get("choices")
        if not choices:
            # OpenRouter can answer 200 with an error object when the upstream model failed.
            if isinstance(body.get("error"), dict | str):
                raise self.classify_error(_status_in_body(body), {}, body)
            raise MalformedResponse("response has no choices")
        choice = choices[0]
        if choice.get("finish_reason") == "error" or isinstance(choice.get("error"), dict):
            # OpenRouter: the upstream failed mid-answer. Any text is cut off, not an answer.
            error = choice.get("error") if isinstance(choice.get("error"), dict) else {}
            body = {"error": {"message": "the model stopped with an error", **error}}
            raise self.classify_error(_status_in_body(body), {}, body)
        message = choice.get("message") or {}
        text = _content_text(message.get("content"))
        raw_reason = choice.get("finish_reason")
        reason = FINISH_REASONS.get(raw_reason, FinishReason.OTHER) if raw_reason else FinishReason.OTHER

        completion = Completion(
            text=text,
            finish_reason=reason,
            usage=_usage(body.get("usage")),
            model=body.get("model") or model,
            raw_finish_reason=raw_reason,
            response_id=body.get("id"),
        )
        # Refusals are billed: the completion goes with the error, so its tokens and cost are still reported.
        if not text and reason is FinishReason.CONTENT_FILTER:
            raise ContentFiltered("the provider's content filter removed the answer", completion=completion)
        refusal = message.get("refusal")
        if not text and isinstance(refusal, str) and refusal:
            # A structured-output refusal arrives with finish_reason "stop" but no content.
            raise ContentFiltered(f"the model refused: {refusal[:300]}", completion=completion)
        return completion

    def classify_error(self, status: int, headers: Mapping[str, str], body: Any) -> ProviderError:
        err = _error_object(body)
        message = error_message_from_body(body, status)
        tags = {str(err[k]).lower() for k in ("code", "type") if err.get(k) is not None}
        retry_after = parse_retry_after(headers)

        # 402 is how OpenRouter and DeepSeek say "out of credits".
        if tags & _QUOTA_TAGS or status == 402:
            return QuotaExhausted(message, status=status)
        if status in (413, 429) and _TOO_LARGE.search(message):
            # Over the per-minute limit by itself (Groq says so with a 413): no wait helps, and it is not the
            # model's context window that is too small.
            return BadRequest(message, status=status)
        if _moderation_flagged(err):
            return ContentFiltered(message, status=status)  # OpenRouter's 403: not a key it refuses
        if status == 429:
            if retry_after is None:
                retry_after = _retry_hint(message)
            return RateLimited(message, status=status, retry_after_s=retry_after)
        worded_context = 400 <= status < 500 and any(w in message.lower() for w in _CONTEXT_WORDS)
        if tags & _CONTEXT_TAGS or worded_context:
            return ContextLengthExceeded(message, status=status)
        if tags & _FILTER_TAGS:
            return ContentFiltered(message, status=status)
        if tags & _AUTH_TAGS:
            return AuthError(message, status=status)
        if tags & _NOT_FOUND_TAGS:
            return NotFound(message, status=status)
        return error_for_status(status, message, retry_after_s=retry_after)


def _error_object(body: Any) -> dict[str, Any]:
    """The dict holding message/type/code: nested under "error" (OpenAI) or top level (Mistral, old vLLM)."""
    if not isinstance(body, dict):
        return {}
    err = body.get("error")
    if isinstance(err, dict):
        return err
    return body


def _moderation_flagged(err: dict[str, Any]) -> bool:
    """OpenRouter's moderation refusal (a 403, or inside a 200): the input was flagged, with the reasons why."""
    metadata = err.get("metadata")
    return isinstance(metadata, dict) and ("reasons" in metadata or "flagged_input" in metadata)


def _status_in_body(body: dict[str, Any]) -> int:
    code = _error_object(body).get("code")
    # OpenRouter's integer code is an HTTP status; anything else means "the upstream broke".
    return code if isinstance(code, int) and 400 <= code <= 599 else 502


def _retry_hint(message: str) -> float | None:
    match = _TRY_AGAIN.search(message)
    if match is None:
        return None
    return sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(match.group(1)))


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    # Some hosts (Mistral's reasoning models) send a list of typed parts; only "text" parts are the answer.
    return "".join(
        part["text"]
        for part in content
        if isinstance(part, dict) and part.get("type", "text") == "text" and isinstance(part.get("text"), str)
    )


def _usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    prompt, completion = token_count(raw.get("prompt_tokens")), token_count(raw.get("completion_tokens"))
    if prompt is None or completion is None:
        return None
    prompt_details = raw.get("prompt_tokens_details") or {}
    completion_details = raw.get("completion_tokens_details") or {}
    cached = token_count(prompt_details.get("cached_tokens"))
    if cached is None:
        cached = token_count(raw.get("prompt_cache_hit_tokens"))  # DeepSeek's name for the same count
    return Usage(
        input_tokens=prompt,
        output_tokens=completion,
        cached_input_tokens=cached,
        reasoning_tokens=token_count(completion_details.get("reasoning_tokens")),
    )


def _row(
    name: str,
    base_url: str,
    description: str,
    example_models: tuple[str, ...],
    *,
    key_required: bool = True,
    options: Mapping[str, Any] | None = None,
    breaker_scope: Literal["provider", "model"] = "provider",
    price_source: str | None = None,
) -> ProviderSpec:
    env = name.upper()
    return ProviderSpec(
        name=name,
        adapter=OpenAIChatAdapter,
        base_url=base_url,
        api_key_env=(f"{env}_API_KEY",),
        base_url_env=(f"{env}_BASE_URL",),
        key_required=key_required,
        description=description,
        example_models=example_models,
        options=dict(options or {}),
        breaker_scope=breaker_scope,
        price_source=price_source,
    )


OPENAI = _row(
    "openai",
    "https://api.openai.com/v1",
    "OpenAI's GPT models via the Chat Completions API.",
    ("gpt-4o-mini", "gpt-4.1", "gpt-5-mini"),
    options={"max_tokens_field": "max_completion_tokens"},
    price_source="openai",
)
TOGETHER = _row(
    "together",
    "https://api.together.xyz/v1",
    "Together AI: hosted open-weight models.",
    ("meta-llama/Llama-3.3-70B-Instruct-Turbo", "deepseek-ai/DeepSeek-V3", "Qwen/Qwen2.5-72B-Instruct-Turbo"),
    breaker_scope="model",  # an aggregator: each model is served by a different backend
    price_source="together",
)
GROQ = _row(
    "groq",
    "https://api.groq.com/openai/v1",
    "Groq: very fast inference of open-weight models on LPUs.",
    ("llama-3.3-70b-versatile", "llama-3.1-8b-instant", "openai/gpt-oss-120b"),
    price_source="groq",
)
OPENROUTER = _row(
    "openrouter",
    "https://openrouter.ai/api/v1",
    "OpenRouter: one key for hundreds of models from many vendors.",
    ("meta-llama/llama-3.3-70b-instruct", "anthropic/claude-sonnet-4.5", "google/gemini-2.5-flash"),
    breaker_scope="model",  # an aggregator: each model is served by a different backend
    price_source="openrouter",
)
DEEPSEEK = _row(
    "deepseek",
    "https://api.deepseek.com/v1",
    "DeepSeek's own API for its chat and reasoning models.",
    ("deepseek-chat", "deepseek-reasoner"),
    price_source="deepseek",
)
MISTRAL = _row(
    "mistral",
    "https://api.mistral.ai/v1",
    "Mistral AI's hosted models (La Plateforme).",
    ("mistral-large-latest", "mistral-small-latest", "codestral-latest"),
    price_source="mistral",
)
FIREWORKS = _row(
    "fireworks",
    "https://api.fireworks.ai/inference/v1",
    "Fireworks AI: hosted open-weight models.",
    ("accounts/fireworks/models/llama-v3p3-70b-instruct", "accounts/fireworks/models/deepseek-v3"),
    breaker_scope="model",  # an aggregator: each model is served by a different backend
    price_source="fireworks",
)
VLLM = _row(
    "vllm",
    "http://localhost:8000/v1",
    "A self-hosted vLLM server's OpenAI-compatible endpoint.",
    ("meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen2.5-7B-Instruct"),
    key_required=False,
)
LMSTUDIO = _row(
    "lmstudio",
    "http://localhost:1234/v1",
    "LM Studio's local OpenAI-compatible server.",
    ("qwen2.5-7b-instruct", "llama-3.2-3b-instruct"),
    key_required=False,
)
