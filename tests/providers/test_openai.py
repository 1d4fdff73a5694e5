"""The OpenAI Chat Completions dialect: pure translators, then the adapter over HTTP."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import respx

from ai_gateway.adapter import ProviderConfig, ProviderSpec
from ai_gateway.errors import (
    AuthError,
    BadRequest,
    ConnectFailed,
    ContentFiltered,
    ContextLengthExceeded,
    GatewayError,
    MalformedResponse,
    NotFound,
    Overloaded,
    ProviderError,
    ProviderTimeout,
    QuotaExhausted,
    RateLimited,
    UpstreamError,
)
from ai_gateway.secrets import Secret
from ai_gateway.types import ChatRequest, FinishReason, Message, Usage
from providers import openai as mod
from providers.openai import OpenAIChatAdapter
from tests.providers.conftest import fixture_loader

KEY = "test-openai-key-7f3a9c1e5b"  # deliberately not key-shaped, so only the adapter's own redaction can hide it
BASE = "https://api.openai.com/v1"
URL = f"{BASE}/chat/completions"


load = fixture_loader("openai")


def make(base_url: str = BASE, key: str | None = KEY, **options: Any) -> OpenAIChatAdapter:
    secret = Secret(key) if key is not None else None
    return OpenAIChatAdapter(ProviderConfig("openai", base_url, secret, options))


REQUEST = ChatRequest(
    messages=(Message("user", "Hi"), Message("assistant", "Hello"), Message("user", "How are you?")),
    system="Be brief.",
    temperature=0.2,
    max_tokens=64,
)


# -- build_request ------------------------------------------------------------------


def test_build_request_full() -> None:
    req = make(max_tokens_field="max_completion_tokens").build_request(REQUEST, "gpt-4.1")
    assert req.method == "POST"
    assert req.url == URL
    assert dict(req.headers) == {"content-type": "application/json", "authorization": f"Bearer {KEY}"}
    assert req.json == {
        "model": "gpt-4.1",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "How are you?"},
        ],
        "temperature": 0.2,
        "max_completion_tokens": 64,
    }


def test_build_request_omits_unset_fields_and_defaults_to_max_tokens() -> None:
    minimal = make(base_url="https://api.groq.com/openai/v1/").build_request(
        ChatRequest(messages=(Message("user", "Hi"),)), "llama-3.3-70b-versatile"
    )
    assert minimal.url == "https://api.groq.com/openai/v1/chat/completions"
    assert minimal.json == {"model": "llama-3.3-70b-versatile", "messages": [{"role": "user", "content": "Hi"}]}

    with_limit = make().build_request(ChatRequest(messages=(Message("user", "Hi"),), max_tokens=5), "m")
    assert with_limit.json["max_tokens"] == 5
    assert "max_completion_tokens" not in with_limit.json


def test_build_request_keeps_zero_temperature() -> None:
    req = make().build_request(ChatRequest(messages=(Message("user", "Hi"),), temperature=0.0), "m")
    assert req.json["temperature"] == 0.0


def test_build_request_without_key_sends_no_authorization() -> None:
    req = make(base_url="http://localhost:8000/v1", key=None).build_request(REQUEST, "m")
    assert "authorization" not in {k.lower() for k in req.headers}
    assert req.url == "http://localhost:8000/v1/chat/completions"


def test_build_request_passes_extra_headers() -> None:
    extra = {"HTTP-Referer": "https://example.com", "X-Title": "ai-gateway"}
    req = make(base_url="https://openrouter.ai/api/v1", extra_headers=extra).build_request(REQUEST, "m")
    assert req.headers["HTTP-Referer"] == "https://example.com"
    assert req.headers["X-Title"] == "ai-gateway"
    assert req.headers["authorization"] == f"Bearer {KEY}"


# -- parse_response -----------------------------------------------------------------


def test_parse_success() -> None:
    c = make().parse_response(load("success.json"), "gpt-4.1")
    assert c.text == "Hello! How can I assist you today?"
    assert c.finish_reason is FinishReason.STOP
    assert c.raw_finish_reason == "stop"
    assert c.model == "gpt-4.1-2025-04-14"
    assert c.response_id == "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT"
    assert c.usage == Usage(input_tokens=19, output_tokens=10, cached_input_tokens=4, reasoning_tokens=2)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("stop", FinishReason.STOP),
        ("length", FinishReason.LENGTH),
        ("tool_calls", FinishReason.TOOL_CALLS),
        ("function_call", FinishReason.TOOL_CALLS),
        ("something_new", FinishReason.OTHER),
    ],
)
def test_finish_reasons(raw: str, expected: FinishReason) -> None:
    body = load("success.json")
    body["choices"][0]["finish_reason"] = raw
    c = make().parse_response(body, "m")
    assert c.finish_reason is expected
    assert c.raw_finish_reason == raw


def test_parse_null_content_is_empty_text_and_missing_usage_is_none() -> None:
    body = {"choices": [{"message": {"role": "assistant", "content": None}, "finish_reason": "length"}]}
    c = make().parse_response(body, "asked-model")
    assert c.text == ""
    assert c.finish_reason is FinishReason.LENGTH
    assert c.usage is None
    assert c.model == "asked-model"


def test_parse_content_parts_keeps_only_text() -> None:
    body = load("success.json")
    body["choices"][0]["message"]["content"] = [
        {"type": "thinking", "thinking": [{"type": "text", "text": "hmm"}]},
        {"type": "text", "text": "Hello "},
        {"type": "text", "text": "world"},
    ]
    assert make().parse_response(body, "m").text == "Hello world"


def test_parse_deepseek_cache_hit_tokens() -> None:
    body = load("success.json")
    body["usage"] = {"prompt_tokens": 100, "completion_tokens": 7, "prompt_cache_hit_tokens": 64}
    assert make().parse_response(body, "m").usage == Usage(100, 7, cached_input_tokens=64)


def test_parse_no_choices_is_malformed() -> None:
    with pytest.raises(MalformedResponse):
        make().parse_response({"id": "x", "choices": []}, "m")


def test_parse_content_filter_with_no_text_raises() -> None:
    with pytest.raises(ContentFiltered) as info:
        make().parse_response(load("content_filter.json"), "m")
    billed = info.value.completion  # the refusal was billed: its usage travels with the error
    assert billed is not None and billed.usage == Usage(25, 0, None, None)


def test_parse_content_filter_with_partial_text_is_a_completion() -> None:
    body = load("content_filter.json")
    body["choices"][0]["message"]["content"] = "Partial answer"
    c = make().parse_response(body, "m")
    assert c.text == "Partial answer"
    assert c.finish_reason is FinishReason.CONTENT_FILTER


def test_parse_refusal_raises_content_filtered() -> None:
    with pytest.raises(ContentFiltered, match="cannot assist") as info:
        make().parse_response(load("refusal.json"), "m")
    billed = info.value.completion
    assert billed is not None and (billed.usage.input_tokens, billed.usage.output_tokens) == (81, 11)


def test_parse_openrouter_error_inside_200_is_classified() -> None:
    with pytest.raises(UpstreamError) as info:
        make().parse_response(load("openrouter_error_200.json"), "m")
    assert info.value.status == 502
    assert "Provider returned error" in info.value.message


@pytest.mark.parametrize("content", ["The answer is", ""])
def test_parse_openrouter_error_inside_a_choice_is_classified(content: str) -> None:
    """finish_reason "error" with choice.error: the upstream failed mid-answer; the partial text is not an answer."""
    body = load("openrouter_choice_error.json")
    body["choices"][0]["message"]["content"] = content
    with pytest.raises(UpstreamError) as info:
        make().parse_response(body, "m")
    assert info.value.status == 502
    assert info.value.message == "Upstream provider returned an error"


def test_parse_finish_reason_error_without_an_error_object() -> None:
    body = load("openrouter_choice_error.json")
    del body["choices"][0]["error"]
    with pytest.raises(UpstreamError, match="stopped with an error"):
        make().parse_response(body, "m")


# -- classify_error -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "status", "headers", "cls", "code", "retryable", "retry_after"),
    [
        ("error_rate_limit.json", 429, {}, RateLimited, "rate_limited", True, 20.0),
        ("error_rate_limit.json", 429, {"retry-after": "3"}, RateLimited, "rate_limited", True, 3.0),
        ("groq_rate_limit.json", 429, {}, RateLimited, "rate_limited", True, 111.2),
        ("openrouter_rate_limit.json", 429, {}, RateLimited, "rate_limited", True, None),
        ("error_insufficient_quota.json", 429, {}, QuotaExhausted, "quota_exhausted", False, None),
        # Bigger than the tokens-per-minute limit itself: no wait makes it fit, so not a rate limit.
        ("error_request_too_large.json", 429, {}, BadRequest, "bad_request", False, None),
        ("openrouter_insufficient_credits.json", 402, {}, QuotaExhausted, "quota_exhausted", False, None),
        ("deepseek_insufficient_balance.json", 402, {}, QuotaExhausted, "quota_exhausted", False, None),
        ("error_invalid_api_key.json", 401, {}, AuthError, "auth", False, None),
        ("together_invalid_key.json", 401, {}, AuthError, "auth", False, None),
        ("error_context_length.json", 400, {}, ContextLengthExceeded, "context_length", False, None),
        ("mistral_error.json", 400, {}, ContextLengthExceeded, "context_length", False, None),
        ("error_content_policy.json", 400, {}, ContentFiltered, "content_filtered", False, None),
        ("error_model_not_found.json", 404, {}, NotFound, "not_found", False, None),
        ("error_server.json", 500, {}, UpstreamError, "upstream_error", True, None),
        ("error_server.json", 502, {}, UpstreamError, "upstream_error", True, None),
        ("error_overloaded.json", 503, {"retry-after": "2"}, Overloaded, "overloaded", True, 2.0),
    ],
)
def test_classify_error(
    fixture: str,
    status: int,
    headers: dict[str, str],
    cls: type[ProviderError],
    code: str,
    retryable: bool,
    retry_after: float | None,
) -> None:
    body = load(fixture)
    err = make().classify_error(status, httpx.Headers(headers), body)
    assert type(err) is cls
    assert err.code == code
    assert err.status == status
    assert err.retryable is retryable
    if retry_after is None:
        assert err.retry_after_s is None
    else:
        assert err.retry_after_s == pytest.approx(retry_after)
    inner = body.get("error", body)
    assert err.message == inner["message"]


@pytest.mark.parametrize(
    "code",
    [
        "credit_balance_exhausted",
        "organization_spend_limit_exceeded",
        "project_spend_limit_exceeded",
        "organization_usage_limit_exceeded",
    ],
)
def test_billing_stops_are_quota_exhausted_whatever_the_error_type(code: str) -> None:
    """OpenAI's spend-limit 429s: retried as rate limits, each model was asked three times for nothing."""
    body = {"error": {"message": "You have reached your spend limit.", "type": "requests", "code": code}}
    err = make().classify_error(429, httpx.Headers(), body)
    assert (type(err), err.retryable) == (QuotaExhausted, False)


OPENROUTER_FLAGGED = {
    "error": {
        "code": 403,
        "message": 'openai/gpt-4o requires moderation on OpenRouter. Your input was flagged for "violence".',
        "metadata": {"reasons": ["violence"], "flagged_input": "how do I ...", "provider_name": "OpenAI"},
    }
}


def test_an_openrouter_moderation_refusal_is_content_filtered_not_a_bad_key() -> None:
    err = make().classify_error(403, httpx.Headers(), OPENROUTER_FLAGGED)
    assert (type(err), err.status, err.message) == (ContentFiltered, 403, OPENROUTER_FLAGGED["error"]["message"])
    assert "how do I" not in err.message  # the flagged input stays out of the error
    with pytest.raises(ContentFiltered):
        make().parse_response(OPENROUTER_FLAGGED, "openai/gpt-4o")  # the same refusal inside a 200
    plain = make().classify_error(403, httpx.Headers(), {"error": {"message": "Forbidden"}})
    assert type(plain) is AuthError


def test_a_request_over_the_tokens_per_minute_limit_by_itself_is_a_bad_request_on_a_413_too() -> None:
    """Groq says so with a 413, which read as a context window too small for the prompt."""
    body = {
        "error": {
            "message": "Request too large for model `llama-3.3-70b-versatile` on tokens per minute (TPM): Limit "
            "12000, Requested 23000, please reduce your message size and try again.",
            "type": "tokens",
            "code": "rate_limit_exceeded",
        }
    }
    err = make().classify_error(413, httpx.Headers(), body)
    assert (type(err), err.retryable) == (BadRequest, False)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(
            {
                "object": "error",
                "message": {
                    "detail": [
                        {"type": "extra_forbidden", "loc": ["body", "max_completion_tokens"],
                         "msg": "Extra inputs are not permitted", "input": 8192},
                        {"type": "float_type", "loc": ["body", "top_p"], "msg": "Input should be a valid number",
                         "input": "x"},
                    ]
                },
                "type": "invalid_request_error",
            },
            "max_completion_tokens: Extra inputs are not permitted; top_p: Input should be a valid number",
            id="mistral",
        ),
        pytest.param(
            {"detail": [{"type": "less_than_equal", "loc": ["body", "temperature"],
                         "msg": "Input should be less than or equal to 1.5", "input": 1.8}]},
            "temperature: Input should be less than or equal to 1.5",
            id="bare fastapi",
        ),
        pytest.param({"detail": "Not Found"}, "Not Found", id="fastapi string"),
    ],
)
def test_a_validation_error_names_each_field_and_why(body: dict[str, Any], message: str) -> None:
    """Its detail is a list, not a string: the caller was told only "HTTP 422"."""
    err = make().classify_error(422, httpx.Headers(), body)
    assert (type(err), err.message) == (BadRequest, message)


def test_classify_error_non_json_body_falls_back_to_status() -> None:
    err = make().classify_error(502, httpx.Headers(), "<html>Bad Gateway</html>")
    assert isinstance(err, UpstreamError)
    assert "Bad Gateway" in err.message


def test_classify_error_context_words_need_a_client_error() -> None:
    body = {"error": {"message": "worker crashed while checking maximum context length"}}
    assert isinstance(make().classify_error(500, httpx.Headers(), body), UpstreamError)


# -- rows ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "base"),
    [
        (mod.OPENAI, "https://api.openai.com/v1"),
        (mod.TOGETHER, "https://api.together.xyz/v1"),
        (mod.GROQ, "https://api.groq.com/openai/v1"),
        (mod.OPENROUTER, "https://openrouter.ai/api/v1"),
        (mod.DEEPSEEK, "https://api.deepseek.com/v1"),
        (mod.MISTRAL, "https://api.mistral.ai/v1"),
        (mod.FIREWORKS, "https://api.fireworks.ai/inference/v1"),
        (mod.VLLM, "http://localhost:8000/v1"),
        (mod.LMSTUDIO, "http://localhost:1234/v1"),
    ],
)
def test_provider_rows(row: ProviderSpec, base: str) -> None:
    env = row.name.upper()
    assert row.adapter is OpenAIChatAdapter
    assert row.base_url == base
    assert row.api_key_env == (f"{env}_API_KEY",)
    assert row.base_url_env == (f"{env}_BASE_URL",)
    assert row.key_required is (row.name not in {"vllm", "lmstudio"})
    assert row.description
    assert 2 <= len(row.example_models) <= 3


def test_openai_row_uses_max_completion_tokens() -> None:
    assert mod.OPENAI.options["max_tokens_field"] == "max_completion_tokens"
    assert "max_tokens_field" not in mod.GROQ.options


# -- the adapter over HTTP (respx intercepting the production aiohttp transport) -----


async def test_complete_sends_vendor_request(api: respx.MockRouter, client: httpx.AsyncClient) -> None:
    route = api.post(URL).respond(200, json=load("success.json"))
    adapter = make(max_tokens_field="max_completion_tokens")
    c = await adapter.complete(client, REQUEST, "gpt-4.1")
    assert c.text == "Hello! How can I assist you today?"
    sent = route.calls.last.request
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.headers["content-type"] == "application/json"
    assert json.loads(sent.content) == adapter.build_request(REQUEST, "gpt-4.1").json


@pytest.mark.parametrize(
    ("headers", "expected"),
    [({"Retry-After": "7"}, 7.0), ({"retry-after-ms": "1500"}, 1.5), ({}, 20.0)],
)
async def test_complete_rate_limit_retry_after(
    api: respx.MockRouter, client: httpx.AsyncClient, headers: dict[str, str], expected: float
) -> None:
    api.post(URL).respond(429, json=load("error_rate_limit.json"), headers=headers)
    with pytest.raises(RateLimited) as info:
        await make().complete(client, REQUEST, "m")
    assert info.value.retry_after_s == pytest.approx(expected)
    assert info.value.provider == "openai"
    assert info.value.status == 429


async def test_complete_timeout(api: respx.MockRouter, client: httpx.AsyncClient) -> None:
    api.post(URL).mock(side_effect=httpx.ReadTimeout)
    with pytest.raises(ProviderTimeout) as info:
        await make().complete(client, REQUEST, "m")
    assert info.value.retryable


async def test_complete_connect_error(api: respx.MockRouter, client: httpx.AsyncClient) -> None:
    api.post(URL).mock(side_effect=httpx.ConnectError(f"cannot reach host for {KEY}"))
    with pytest.raises(ConnectFailed) as info:
        await make().complete(client, REQUEST, "m")
    assert KEY not in str(info.value)


async def test_a_request_the_transport_refuses_to_send_is_a_bad_request(
    api: respx.MockRouter, client: httpx.AsyncClient
) -> None:
    """aiohttp refuses a header with a control character (an extra_headers option, say) with a ValueError, which
    surfaced as an internal error; it is the configuration's, and no retry sends it."""
    api.post(URL).mock(side_effect=ValueError(f"Forbidden control character detected in headers: {KEY}"))
    with pytest.raises(BadRequest, match="check its key and base URL") as info:
        await make().complete(client, REQUEST, "m")
    assert KEY not in str(info.value) and not info.value.retryable


async def test_complete_non_json_200(api: respx.MockRouter, client: httpx.AsyncClient) -> None:
    api.post(URL).respond(200, text="<html>gateway</html>", headers={"content-type": "text/html"})
    with pytest.raises(MalformedResponse, match="text/html"):
        await make().complete(client, REQUEST, "m")


async def test_complete_wrong_shape_200(api: respx.MockRouter, client: httpx.AsyncClient) -> None:
    api.post(URL).respond(200, json={"choices": [{"message": "not a dict"}]})
    with pytest.raises(MalformedResponse):
        await make().complete(client, REQUEST, "m")


async def test_every_credential_of_the_provider_is_redacted_from_its_errors(
    api: respx.MockRouter, client: httpx.AsyncClient
) -> None:
    """Azure's key travels in an ``api-key`` header (extra_headers) or the base URL's query; a vendor that echoes
    any of them, or the key percent-encoded, must not carry it into an error (or the breaker's last_error)."""
    base = "https://llm.corp/openai/deployments/d?api-version=2024-06-01&api-key=QueryKey0123"
    adapter = make(base_url=base, key="Zq+7/Ab=c%d@e:fQQ", extra_headers={"api-key": "HeaderKey0123"})
    echo = "key Zq%2B7%2FAb%3Dc%25d%40e%3AfQQ, header HeaderKey0123, url /d?api-key=QueryKey0123"
    api.post("https://llm.corp/openai/deployments/d/chat/completions").respond(401, json={"error": {"message": echo}})
    with pytest.raises(AuthError) as info:
        await adapter.complete(client, REQUEST, "m")
    assert info.value.message == "key [REDACTED], header [REDACTED], url /d?api-key=[REDACTED]"


async def test_key_echoed_by_vendor_never_leaks(api: respx.MockRouter, client: httpx.AsyncClient) -> None:
    body = {
        "error": {
            "message": f"Incorrect API key provided: {KEY}.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    api.post(URL).respond(401, json=body)
    with pytest.raises(AuthError) as info:
        await make().complete(client, REQUEST, "m")
    err: GatewayError = info.value
    assert "Incorrect API key provided: [REDACTED]" in err.message
    for rendered in (str(err), repr(err), json.dumps(err.to_dict())):
        assert KEY not in rendered
