"""The Gemini API generateContent dialect (https://ai.google.dev/api/generate-content).

The key travels only in the ``x-goog-api-key`` header: a ``?key=`` query parameter
would end up in URLs that transports, proxies and exceptions print.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from ai_gateway.adapter import Adapter, HttpRequest, ProviderSpec, error_message_from_body, token_count
from ai_gateway.errors import (
    AuthError,
    BadRequest,
    ContentFiltered,
    ContextLengthExceeded,
    MalformedResponse,
    NotFound,
    Overloaded,
    ProviderError,
    ProviderTimeout,
    QuotaExhausted,
    RateLimited,
    UpstreamError,
    error_for_status,
    parse_retry_after,
)
from ai_gateway.types import ChatRequest, Completion, FinishReason, Usage

# https://ai.google.dev/api/generate-content#FinishReason
FINISH_REASONS: dict[str, FinishReason] = {
    "STOP": FinishReason.STOP,
    "MAX_TOKENS": FinishReason.LENGTH,
    "SAFETY": FinishReason.CONTENT_FILTER,
    "RECITATION": FinishReason.CONTENT_FILTER,
    "BLOCKLIST": FinishReason.CONTENT_FILTER,
    "PROHIBITED_CONTENT": FinishReason.CONTENT_FILTER,
    "SPII": FinishReason.CONTENT_FILTER,
    "IMAGE_SAFETY": FinishReason.CONTENT_FILTER,
    "IMAGE_PROHIBITED_CONTENT": FinishReason.CONTENT_FILTER,
    "IMAGE_RECITATION": FinishReason.CONTENT_FILTER,
    "MALFORMED_FUNCTION_CALL": FinishReason.OTHER,
    "LANGUAGE": FinishReason.OTHER,
    "OTHER": FinishReason.OTHER,
    "FINISH_REASON_UNSPECIFIED": FinishReason.OTHER,
}

# google.rpc canonical status -> class (https://ai.google.dev/gemini-api/docs/troubleshooting#error-codes).
# RESOURCE_EXHAUSTED and INVALID_ARGUMENT need the details, so they are decided in code.
_STATUS_ERRORS: dict[str, type[ProviderError]] = {
    "UNAUTHENTICATED": AuthError,
    "PERMISSION_DENIED": AuthError,
    "NOT_FOUND": NotFound,
    "INTERNAL": UpstreamError,
    "UNAVAILABLE": Overloaded,
    "DEADLINE_EXCEEDED": ProviderTimeout,
}

_QUOTA_FAILURE = "type.googleapis.com/google.rpc.QuotaFailure"
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
# Not "check your plan and billing details": every per-minute 429 says that.
_BILLING = re.compile(r"prepay(ment)? credits|enable billing", re.IGNORECASE)
_PER_DAY = re.compile(r"per\s*day", re.IGNORECASE)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")  # protobuf Duration in JSON: "37s", "1.5s"
_CONTEXT = re.compile(r"input token count.*exceeds the maximum", re.IGNORECASE | re.DOTALL)


class GeminiAdapter(Adapter):
    dialect = "gemini"

    def canonical_model(self, model: str) -> str:
        # The API takes a model's resource name ("models/gemini-2.5-flash") and its bare id alike.
        return model.removeprefix("models/")

    def build_request(self, request: ChatRequest, model: str) -> HttpRequest:
        name = self.canonical_model(model)
        url = self.config.url(f"/v1beta/models/{quote(name, safe='')}:generateContent")
        headers = {"content-type": "application/json"}
        if self.config.api_key is not None:
            headers["x-goog-api-key"] = self.config.api_key.reveal()

        body: dict[str, Any] = {
            "contents": [{"role": role, "parts": [{"text": text}]} for role, text in request.alternating_turns("model")]
        }
        system = request.system_prompt()
        if system is not None:
            body["systemInstruction"] = {"parts": [{"text": system}]}
        generation: dict[str, Any] = {}
        if request.temperature is not None:
            generation["temperature"] = request.temperature
        if request.max_tokens is not None:
            generation["maxOutputTokens"] = request.max_tokens
        if generation:
            body["generationConfig"] = generation
        return HttpRequest("POST", url, headers, body)

    def parse_response(self, body: Any, model: str) -> Completion:
        candidates = body.get("candidates")
        if not candidates:
            block = (body.get("promptFeedback") or {}).get("blockReason")
            if block:
                usage = _usage(body.get("usageMetadata"))  # the prompt's tokens, as Gemini counts them
                blocked = Completion("", FinishReason.CONTENT_FILTER, usage=usage, raw_finish_reason=str(block))
                raise ContentFiltered(f"the prompt was blocked (blockReason {block})", completion=blocked)
            raise MalformedResponse("response has no candidates")
        candidate = candidates[0]
        # A candidate stopped by a safety filter may have no content at all.
        parts = (candidate.get("content") or {}).get("parts") or []
        # Thought summaries are parts too; they are not the answer.
        text = "".join(p["text"] for p in parts if isinstance(p.get("text"), str) and not p.get("thought"))
        raw_reason = candidate.get("finishReason")
        reason = FINISH_REASONS.get(raw_reason, FinishReason.OTHER) if raw_reason else FinishReason.OTHER
        completion = Completion(
            text=text,
            finish_reason=reason,
            usage=_usage(body.get("usageMetadata")),
            model=body.get("modelVersion") or model,
            raw_finish_reason=raw_reason,
            response_id=body.get("responseId"),
        )
        if reason is FinishReason.CONTENT_FILTER and not text:  # billed: its usage goes with the error
            raise ContentFiltered(f"the answer was blocked (finishReason {raw_reason})", completion=completion)
        return completion

    def classify_error(self, status: int, headers: Mapping[str, str], body: Any) -> ProviderError:
        # Streaming endpoints wrap the error in a one-element list; accept both.
        if isinstance(body, list) and body and isinstance(body[0], dict):
            body = body[0]
        err = body.get("error") if isinstance(body, dict) else None
        err = err if isinstance(err, dict) else {}
        message = error_message_from_body(body, status)
        rpc_status = err.get("status")
        details = [d for d in err.get("details") or () if isinstance(d, dict)]

        # 402: out of prepaid credit (Gemini answered 429 for it before 2026; the message says which). Billing not
        # enabled is a FAILED_PRECONDITION: either way every call fails until someone pays, so the circuit may open.
        if status == 402 or _BILLING.search(message):
            return QuotaExhausted(message, status=status)
        if rpc_status == "FAILED_PRECONDITION":  # e.g. "User location is not supported": this account may not call
            return AuthError(message, status=status)
        if rpc_status == "RESOURCE_EXHAUSTED" or status == 429:
            if _daily_quota(details):
                return QuotaExhausted(message, status=status)
            retry_after = parse_retry_after(headers)
            if retry_after is None:
                retry_after = _retry_delay(details)
            return RateLimited(message, status=status, retry_after_s=retry_after)
        if rpc_status == "INVALID_ARGUMENT" or status == 400:
            if any(str(d.get("reason", "")).startswith("API_KEY_") for d in details if d.get("@type") == _ERROR_INFO):
                return AuthError(message, status=status)
            if _CONTEXT.search(message):
                return ContextLengthExceeded(message, status=status)
            return BadRequest(message, status=status)
        cls = _STATUS_ERRORS.get(rpc_status) if isinstance(rpc_status, str) else None
        if cls is None:
            return error_for_status(status, message)
        return cls(message, status=status)


def _daily_quota(details: list[dict[str, Any]]) -> bool:
    """True when a per-day quota ran out: it resets at midnight Pacific, so retrying now cannot help."""
    for detail in details:
        if detail.get("@type") == _QUOTA_FAILURE:
            for violation in detail.get("violations") or ():
                if isinstance(violation, dict) and any(
                    isinstance(v, str) and _PER_DAY.search(v) for v in violation.values()
                ):
                    return True
        if detail.get("@type") == _ERROR_INFO:
            metadata = detail.get("metadata") or {}
            if isinstance(metadata, dict) and _PER_DAY.search(str(metadata.get("quota_limit", ""))):
                return True
    return False


def _retry_delay(details: list[dict[str, Any]]) -> float | None:
    for detail in details:
        if detail.get("@type") == _RETRY_INFO:
            match = _DURATION.match(str(detail.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return None


def _usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    prompt = token_count(raw.get("promptTokenCount"))
    if prompt is None:
        return None
    # Proto3 JSON omits zero counts, so a missing candidatesTokenCount means no output tokens.
    candidates = token_count(raw.get("candidatesTokenCount")) or 0
    thoughts = token_count(raw.get("thoughtsTokenCount"))
    return Usage(
        input_tokens=prompt,
        # Thinking tokens are billed as output tokens but reported separately.
        output_tokens=candidates + (thoughts or 0),
        cached_input_tokens=token_count(raw.get("cachedContentTokenCount")),
        reasoning_tokens=thoughts,
    )


GEMINI = ProviderSpec(
    name="gemini",
    adapter=GeminiAdapter,
    base_url="https://generativelanguage.googleapis.com",
    api_key_env=("GOOGLE_API_KEY", "GEMINI_API_KEY"),  # Google's own order: with both set, GOOGLE_API_KEY wins
    base_url_env=("GEMINI_BASE_URL",),
    description="Google's Gemini models via the Gemini API (Google AI Studio keys).",
    example_models=("gemini-2.5-flash", "gemini-2.5-pro", "gemini-2.5-flash-lite"),
    price_source="google",  # genai-prices' id for the Gemini API
)
