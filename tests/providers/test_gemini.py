"""The Gemini generateContent dialect: pure translators, then the adapter over HTTP."""

from __future__ import annotations

import json

import httpx
import pytest
import respx

from ai_gateway.adapter import ProviderConfig
from ai_gateway.errors import (
    AuthError,
    BadRequest,
    ConnectFailed,
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
)
from ai_gateway.secrets import Secret
from ai_gateway.types import ChatRequest, FinishReason, Message, Usage
from providers.gemini import GEMINI, GeminiAdapter
from tests.providers.conftest import fixture_loader

KEY = "test-gemini-key-9b1f3d5e7a"  # deliberately not key-shaped, so only the adapter's own redaction can hide it
BASE = "https://generativelanguage.googleapis.com"
URL = f"{BASE}/v1beta/models/gemini-2.5-flash:generateContent"


load = fixture_loader("gemini")


def make(base_url: str = BASE, key: str | None = KEY) -> GeminiAdapter:
    return GeminiAdapter(ProviderConfig("gemini", base_url, Secret(key) if key else None))


REQUEST = ChatRequest(
    messages=(
        Message("user", "Hi"),
        Message("assistant", "Hello."),
        Message("assistant", "Anything else?"),
        Message("system", "Use plain text."),
        Message("user", "Tell me a joke."),
    ),
    system="Be brief.",
    temperature=0.7,
    max_tokens=128,
)


# -- build_request ------------------------------------------------------------------


def test_build_request_full() -> None:
    req = make().build_request(REQUEST, "gemini-2.5-flash")
    assert req.method == "POST"
    assert req.url == URL
    assert dict(req.headers) == {"content-type": "application/json", "x-goog-api-key": KEY}
    assert req.json == {
        "contents": [
            {"role": "user", "parts": [{"text": "Hi"}]},
            {"role": "model", "parts": [{"text": "Hello.\n\nAnything else?"}]},
            {"role": "user", "parts": [{"text": "Tell me a joke."}]},
        ],
        "systemInstruction": {"parts": [{"text": "Be brief.\n\nUse plain text."}]},
        "generationConfig": {"temperature": 0.7, "maxOutputTokens": 128},
    }


def test_key_is_never_in_the_url() -> None:
    req = make().build_request(REQUEST, "gemini-2.5-flash")
    url = httpx.URL(req.url)
    assert "key=" not in req.url
    assert KEY not in req.url
    assert url.query == b""


def test_build_request_strips_models_prefix_and_omits_unset() -> None:
    req = make(base_url=f"{BASE}/").build_request(
        ChatRequest(messages=(Message("user", "Hi"),)), "models/gemini-2.5-pro"
    )
    assert req.url == f"{BASE}/v1beta/models/gemini-2.5-pro:generateContent"
    assert req.json == {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}


def test_a_models_resource_name_and_its_bare_id_are_one_model() -> None:
    """The core refuses one model named twice and keys the cache by this spelling: the API takes both."""
    adapter = make()
    assert adapter.canonical_model("models/gemini-2.5-pro") == adapter.canonical_model("gemini-2.5-pro")
    assert adapter.canonical_model("gemini-2.5-pro") == "gemini-2.5-pro"


def test_build_request_only_max_tokens() -> None:
    req = make().build_request(ChatRequest(messages=(Message("user", "Hi"),), max_tokens=10), "gemini-2.5-flash")
    assert req.json["generationConfig"] == {"maxOutputTokens": 10}


# -- parse_response -----------------------------------------------------------------


def test_parse_success() -> None:
    c = make().parse_response(load("success.json"), "gemini-2.5-flash")
    assert c.text == "Hello! How can I help you today?"  # the thought part is skipped
    assert c.finish_reason is FinishReason.STOP
    assert c.raw_finish_reason == "STOP"
    assert c.model == "gemini-2.5-flash"
    assert c.response_id == "mWfsaLqPH8eLz7IPuL6UyQg"
    # thinking tokens are billed as output: 9 candidate + 45 thought
    assert c.usage == Usage(input_tokens=8, output_tokens=54, cached_input_tokens=4, reasoning_tokens=45)


def test_parse_usage_without_optional_counts() -> None:
    body = load("success.json")
    body["usageMetadata"] = {"promptTokenCount": 5, "totalTokenCount": 5}
    assert make().parse_response(body, "m").usage == Usage(5, 0)
    del body["usageMetadata"]
    assert make().parse_response(body, "m").usage is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("STOP", FinishReason.STOP),
        ("MAX_TOKENS", FinishReason.LENGTH),
        ("SAFETY", FinishReason.CONTENT_FILTER),
        ("RECITATION", FinishReason.CONTENT_FILTER),
        ("BLOCKLIST", FinishReason.CONTENT_FILTER),
        ("PROHIBITED_CONTENT", FinishReason.CONTENT_FILTER),
        ("SPII", FinishReason.CONTENT_FILTER),
        ("IMAGE_SAFETY", FinishReason.CONTENT_FILTER),
        ("MALFORMED_FUNCTION_CALL", FinishReason.OTHER),
        ("LANGUAGE", FinishReason.OTHER),
        ("OTHER", FinishReason.OTHER),
        ("FINISH_REASON_UNSPECIFIED", FinishReason.OTHER),
    ],
)
def test_finish_reasons(raw: str, expected: FinishReason) -> None:
    body = load("success.json")
    body["candidates"][0]["finishReason"] = raw
    c = make().parse_response(body, "m")
    assert c.finish_reason is expected
    assert c.raw_finish_reason == raw


def test_parse_prompt_blocked_names_the_reason() -> None:
    with pytest.raises(ContentFiltered, match="PROHIBITED_CONTENT") as info:
        make().parse_response(load("prompt_blocked.json"), "m")
    billed = info.value.completion  # the prompt's tokens, as Gemini counted them, travel with the error
    assert billed is not None and (billed.usage.input_tokens, billed.usage.output_tokens) == (12, 0)


def test_parse_candidate_blocked_without_text() -> None:
    with pytest.raises(ContentFiltered, match="SAFETY") as info:
        make().parse_response(load("candidate_safety.json"), "m")
    billed = info.value.completion
    assert billed is not None and (billed.usage.input_tokens, billed.usage.output_tokens) == (20, 0)


def test_parse_no_candidates_and_no_block_is_malformed() -> None:
    with pytest.raises(MalformedResponse):
        make().parse_response({"usageMetadata": {"promptTokenCount": 3}}, "m")


# -- classify_error -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "headers", "cls", "code", "retryable", "retry_after"),
    [
        ("error_rate_limit.json", {}, RateLimited, "rate_limited", True, 37.0),
        ("error_rate_limit.json", {"retry-after": "5"}, RateLimited, "rate_limited", True, 5.0),
        ("error_daily_quota.json", {}, QuotaExhausted, "quota_exhausted", False, None),
        # Out of prepaid credit: 402 since early 2026 (429 before), RESOURCE_EXHAUSTED either way; no retry helps.
        ("error_prepay_depleted.json", {}, QuotaExhausted, "quota_exhausted", False, None),
        ("error_prepay_depleted_429.json", {}, QuotaExhausted, "quota_exhausted", False, None),
        # Billing must be enabled first: every call fails until then, so the circuit may open (BadRequest never does).
        ("error_billing_required.json", {}, QuotaExhausted, "quota_exhausted", False, None),
        ("error_api_key_invalid.json", {}, AuthError, "auth", False, None),
        ("error_invalid_argument.json", {}, BadRequest, "bad_request", False, None),
        ("error_context_length.json", {}, ContextLengthExceeded, "context_length", False, None),
        ("error_permission_denied.json", {}, AuthError, "auth", False, None),
        ("error_not_found.json", {}, NotFound, "not_found", False, None),
        ("error_internal.json", {}, UpstreamError, "upstream_error", True, None),
        ("error_unavailable.json", {}, Overloaded, "overloaded", True, None),
        ("error_deadline.json", {}, ProviderTimeout, "timeout", True, None),
    ],
)
def test_classify_error(
    fixture: str,
    headers: dict[str, str],
    cls: type[ProviderError],
    code: str,
    retryable: bool,
    retry_after: float | None,
) -> None:
    body = load(fixture)
    status = body["error"]["code"]
    err = make().classify_error(status, httpx.Headers(headers), body)
    assert type(err) is cls
    assert err.code == code
    assert err.retryable is retryable
    assert err.status == status
    assert err.retry_after_s == retry_after
    assert err.message == body["error"]["message"]


def test_classify_other_failed_precondition_as_account_refused() -> None:
    """Not the request's fault (BadRequest) but this account's: said as auth, never retried."""
    body = {
        "error": {
            "code": 400,
            "message": "User location is not supported for the API use.",
            "status": "FAILED_PRECONDITION",
        }
    }
    err = make().classify_error(400, httpx.Headers(), body)
    assert type(err) is AuthError
    assert err.message == "User location is not supported for the API use."


def test_classify_fractional_retry_delay() -> None:
    body = load("error_rate_limit.json")
    body["error"]["details"][-1]["retryDelay"] = "1.5s"
    assert make().classify_error(429, httpx.Headers(), body).retry_after_s == 1.5


def test_classify_unauthenticated_and_list_wrapped_body() -> None:
    body = [
        {
            "error": {
                "code": 401,
                "message": "Request had invalid authentication credentials.",
                "status": "UNAUTHENTICATED",
            }
        }
    ]
    err = make().classify_error(401, httpx.Headers(), body)
    assert isinstance(err, AuthError)
    assert err.message == "Request had invalid authentication credentials."


# -- the row ------------------------------------------------------------------------


def test_row() -> None:
    assert GEMINI.name == "gemini"
    assert GEMINI.adapter is GeminiAdapter
    assert GEMINI.base_url == BASE
    assert GEMINI.api_key_env == ("GOOGLE_API_KEY", "GEMINI_API_KEY")  # Google's order: with both set, GOOGLE_API_KEY
    assert GEMINI.base_url_env == ("GEMINI_BASE_URL",)
    assert "gemini-2.5-flash" in GEMINI.example_models


# -- the adapter over HTTP (respx intercepting the production aiohttp transport) -----


async def test_complete_sends_vendor_request(api: respx.MockRouter, client: httpx.AsyncClient) -> None:
    route = api.post(URL).respond(200, json=load("success.json"))
    adapter = make()
    c = await adapter.complete(client, REQUEST, "gemini-2.5-flash")
    assert c.text == "Hello! How can I help you today?"
    sent = route.calls.last.request
    assert sent.headers["x-goog-api-key"] == KEY
    assert sent.url.query == b""
    assert "key=" not in str(sent.url)
    assert json.loads(sent.content) == adapter.build_request(REQUEST, "gemini-2.5-flash").json


@pytest.mark.parametrize(
    ("headers", "expected"),
    [({}, 37.0), ({"Retry-After": "9"}, 9.0), ({"retry-after-ms": "800"}, 0.8)],
)
async def test_complete_rate_limit_retry_after(
    api: respx.MockRouter, client: httpx.AsyncClient, headers: dict[str, str], expected: float
) -> None:
    api.post(URL).respond(429, json=load("error_rate_limit.json"), headers=headers)
    with pytest.raises(RateLimited) as info:
        await make().complete(client, REQUEST, "gemini-2.5-flash")
    assert info.value.retry_after_s == pytest.approx(expected)
    assert info.value.provider == "gemini"


async def test_complete_overloaded(api: respx.MockRouter, client: httpx.AsyncClient) -> None:
    api.post(URL).respond(503, json=load("error_unavailable.json"))
    with pytest.raises(Overloaded) as info:
        await make().complete(client, REQUEST, "gemini-2.5-flash")
    assert info.value.status == 503
    assert info.value.retryable


async def test_complete_timeout(api: respx.MockRouter, client: httpx.AsyncClient) -> None:
    api.post(URL).mock(side_effect=httpx.ReadTimeout)
    with pytest.raises(ProviderTimeout):
        await make().complete(client, REQUEST, "gemini-2.5-flash")


async def test_complete_connect_error(api: respx.MockRouter, client: httpx.AsyncClient) -> None:
    api.post(URL).mock(side_effect=httpx.ConnectError)
    with pytest.raises(ConnectFailed):
        await make().complete(client, REQUEST, "gemini-2.5-flash")


async def test_complete_non_json_200(api: respx.MockRouter, client: httpx.AsyncClient) -> None:
    api.post(URL).respond(200, text="<!DOCTYPE html><title>Error</title>", headers={"content-type": "text/html"})
    with pytest.raises(MalformedResponse):
        await make().complete(client, REQUEST, "gemini-2.5-flash")


async def test_key_echoed_by_vendor_never_leaks(api: respx.MockRouter, client: httpx.AsyncClient) -> None:
    body = load("error_api_key_invalid.json")
    body["error"]["message"] = f"API key not valid: {KEY}. Please pass a valid API key."
    api.post(URL).respond(400, json=body)
    with pytest.raises(AuthError) as info:
        await make().complete(client, REQUEST, "gemini-2.5-flash")
    err = info.value
    assert err.message == "API key not valid: [REDACTED]. Please pass a valid API key."
    for rendered in (str(err), repr(err), json.dumps(err.to_dict())):
        assert KEY not in rendered
