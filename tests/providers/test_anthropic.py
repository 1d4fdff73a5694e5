"""The Anthropic Messages dialect: pure translators, then the adapter over HTTP."""

from __future__ import annotations

import json
from typing import Any

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
from providers.anthropic import ANTHROPIC, AnthropicAdapter
from tests.providers.conftest import fixture_loader

KEY = "test-anthropic-key-4d2e8b6a0c"  # deliberately not key-shaped, so only the adapter's own redaction can hide it
BASE = "https://api.anthropic.com"
URL = f"{BASE}/v1/messages"


load = fixture_loader("anthropic")


def make(base_url: str = BASE, key: str | None = KEY, **options: Any) -> AnthropicAdapter:
    return AnthropicAdapter(ProviderConfig("anthropic", base_url, Secret(key) if key else None, options))


REQUEST = ChatRequest(
    messages=(
        Message("system", "Answer in English."),
        Message("user", "Hi"),
        Message("user", "Are you there?"),
        Message("assistant", "Yes."),
        Message("user", "Good."),
    ),
    system="Be brief.",
    temperature=0.5,
    max_tokens=256,
)


# -- build_request ------------------------------------------------------------------


def test_build_request_full() -> None:
    req = make().build_request(REQUEST, "claude-sonnet-4-5")
    assert req.method == "POST"
    assert req.url == URL
    assert dict(req.headers) == {
        "x-api-key": KEY,
        "anthropic-version": "2023-06-01",
        "content-type": "application/json",
    }
    assert req.json == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 256,
        "system": "Be brief.\n\nAnswer in English.",
        "messages": [
            {"role": "user", "content": "Hi\n\nAre you there?"},
            {"role": "assistant", "content": "Yes."},
            {"role": "user", "content": "Good."},
        ],
        "temperature": 0.5,
    }


def test_build_request_defaults_max_tokens_and_omits_unset() -> None:
    plain = ChatRequest(messages=(Message("user", "Hi"),))
    req = make(base_url="https://proxy.example/").build_request(plain, "claude-haiku-4-5")
    assert req.url == "https://proxy.example/v1/messages"
    assert req.json == {
        "model": "claude-haiku-4-5",
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    assert make(default_max_tokens=1000).build_request(plain, "m").json["max_tokens"] == 1000


def test_build_request_keeps_zero_temperature() -> None:
    req = make().build_request(ChatRequest(messages=(Message("user", "Hi"),), temperature=0.0), "m")
    assert req.json["temperature"] == 0.0


def test_a_closing_assistant_turn_is_sent_without_trailing_whitespace() -> None:
    """Claude continues a closing assistant turn (a prefill); the API answers 400 "final assistant content cannot
    end with trailing whitespace" to one that ends in a space or a newline. Earlier assistant turns keep theirs."""
    messages = (Message("user", "Colour?"), Message("assistant", "Red. \n"), Message("user", "And the sky?"))
    prefill = ChatRequest(messages=(*messages, Message("assistant", "The sky is \n")))
    sent = make().build_request(prefill, "m").json["messages"]
    assert [m["content"] for m in sent] == ["Colour?", "Red. \n", "And the sky?", "The sky is"]
    assert make().build_request(ChatRequest(messages=messages), "m").json["messages"][-1]["content"] == "And the sky?"


# -- parse_response -----------------------------------------------------------------


def test_parse_success() -> None:
    c = make().parse_response(load("success.json"), "claude-sonnet-4-5")
    assert c.text == "Hi! My name is Claude. How can I help?"  # thinking block skipped
    assert c.finish_reason is FinishReason.STOP
    assert c.raw_finish_reason == "end_turn"
    assert c.model == "claude-sonnet-4-5-20250929"
    assert c.response_id == "msg_013Zva2CMHLNnXjNJJKqJ2EF"
    # input counts every input token: 2095 uncached + 1800 cache reads + 100 cache writes
    assert c.usage == Usage(input_tokens=3995, output_tokens=503, cached_input_tokens=1800)


def test_parse_usage_without_cache_fields() -> None:
    body = load("success.json")
    body["usage"] = {"input_tokens": 10, "output_tokens": 3}
    assert make().parse_response(body, "m").usage == Usage(10, 3)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("end_turn", FinishReason.STOP),
        ("stop_sequence", FinishReason.STOP),
        ("max_tokens", FinishReason.LENGTH),
        ("tool_use", FinishReason.TOOL_CALLS),
        ("refusal", FinishReason.CONTENT_FILTER),
        ("pause_turn", FinishReason.OTHER),
        ("brand_new_reason", FinishReason.OTHER),
    ],
)
def test_finish_reasons(raw: str, expected: FinishReason) -> None:
    body = load("success.json")
    body["stop_reason"] = raw
    c = make().parse_response(body, "m")
    assert c.finish_reason is expected
    assert c.raw_finish_reason == raw


def test_parse_refusal_without_text_raises() -> None:
    with pytest.raises(ContentFiltered, match="refusal") as info:
        make().parse_response(load("refusal.json"), "m")
    billed = info.value.completion  # the refusal was billed: its usage travels with the error
    assert billed is not None and (billed.usage.input_tokens, billed.usage.output_tokens) == (40, 0)


def test_parse_tool_use_only_is_empty_text() -> None:
    body = load("success.json")
    body["content"] = [{"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {}}]
    body["stop_reason"] = "tool_use"
    c = make().parse_response(body, "m")
    assert c.text == ""
    assert c.finish_reason is FinishReason.TOOL_CALLS


# -- classify_error -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "status", "cls", "code", "retryable"),
    [
        ("error_overloaded.json", 529, Overloaded, "overloaded", True),
        ("error_rate_limit.json", 429, RateLimited, "rate_limited", True),
        ("error_authentication.json", 401, AuthError, "auth", False),
        ("error_permission.json", 403, AuthError, "auth", False),
        ("error_not_found.json", 404, NotFound, "not_found", False),
        ("error_prompt_too_long.json", 400, ContextLengthExceeded, "context_length", False),
        ("error_request_too_large.json", 413, ContextLengthExceeded, "context_length", False),
        ("error_invalid_request.json", 400, BadRequest, "bad_request", False),
        ("error_credit_balance.json", 400, QuotaExhausted, "quota_exhausted", False),
        ("error_usage_limit.json", 400, QuotaExhausted, "quota_exhausted", False),
        ("error_billing.json", 402, QuotaExhausted, "quota_exhausted", False),
        ("error_api.json", 500, UpstreamError, "upstream_error", True),
    ],
)
def test_classify_error(fixture: str, status: int, cls: type[ProviderError], code: str, retryable: bool) -> None:
    body = load(fixture)
    err = make().classify_error(status, httpx.Headers(), body)
    assert type(err) is cls
    assert err.code == code
    assert err.retryable is retryable
    assert err.status == status
    assert err.retry_after_s is None
    assert err.message == body["error"]["message"]


def test_classify_rate_limit_mentioning_spend_limit_is_quota() -> None:
    body = {"type": "error", "error": {"type": "rate_limit_error", "message": "You have hit your spend limit."}}
    err = make().classify_error(429, httpx.Headers({"retry-after": "30"}), body)
    assert isinstance(err, QuotaExhausted)
    assert err.trips_breaker and not err.retryable


def test_classify_non_anthropic_body_uses_status() -> None:
    err = make().classify_error(502, httpx.Headers(), "<html>cloudflare</html>")
    assert isinstance(err, UpstreamError)
    assert "cloudflare" in err.message


# -- the row ------------------------------------------------------------------------


def test_row() -> None:
    assert ANTHROPIC.name == "anthropic"
    assert ANTHROPIC.adapter is AnthropicAdapter
    assert ANTHROPIC.base_url == BASE
    assert ANTHROPIC.api_key_env == ("ANTHROPIC_API_KEY",)
    assert ANTHROPIC.base_url_env == ("ANTHROPIC_BASE_URL",)
    assert ANTHROPIC.key_required
    assert "claude-haiku-4-5" in ANTHROPIC.example_models


# -- the adapter over HTTP (respx intercepting the production aiohttp transport) -----


async def test_complete_sends_vendor_request(api: respx.MockRouter, client: httpx.AsyncClient) -> None:
    route = api.post(URL).respond(200, json=load("success.json"))
    adapter = make()
    c = await adapter.complete(client, REQUEST, "claude-sonnet-4-5")
    assert c.text.startswith("Hi! My name is Claude.")
    sent = route.calls.last.request
    assert sent.headers["x-api-key"] == KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in sent.headers
    assert json.loads(sent.content) == adapter.build_request(REQUEST, "claude-sonnet-4-5").json


@pytest.mark.parametrize(
    ("status", "fixture", "cls", "headers", "expected"),
    [
        (429, "error_rate_limit.json", RateLimited, {"retry-after": "12"}, 12.0),
        (529, "error_overloaded.json", Overloaded, {"retry-after-ms": "250"}, 0.25),
        (429, "error_rate_limit.json", RateLimited, {}, None),
    ],
)
async def test_complete_retry_after(
    api: respx.MockRouter,
    client: httpx.AsyncClient,
    status: int,
    fixture: str,
    cls: type[ProviderError],
    headers: dict[str, str],
    expected: float | None,
) -> None:
    api.post(URL).respond(status, json=load(fixture), headers=headers)
    with pytest.raises(cls) as info:
        await make().complete(client, REQUEST, "m")
    assert info.value.provider == "anthropic"
    assert info.value.status == status
    assert info.value.retry_after_s == expected


async def test_complete_refusal_raises(api: respx.MockRouter, client: httpx.AsyncClient) -> None:
    api.post(URL).respond(200, json=load("refusal.json"))
    with pytest.raises(ContentFiltered) as info:
        await make().complete(client, REQUEST, "m")
    assert info.value.provider == "anthropic"


async def test_complete_timeout(api: respx.MockRouter, client: httpx.AsyncClient) -> None:
    api.post(URL).mock(side_effect=httpx.ReadTimeout)
    with pytest.raises(ProviderTimeout):
        await make().complete(client, REQUEST, "m")


async def test_complete_connect_error(api: respx.MockRouter, client: httpx.AsyncClient) -> None:
    api.post(URL).mock(side_effect=httpx.ConnectError)
    with pytest.raises(ConnectFailed) as info:
        await make().complete(client, REQUEST, "m")
    assert info.value.retryable


async def test_complete_non_json_200(api: respx.MockRouter, client: httpx.AsyncClient) -> None:
    api.post(URL).respond(200, content=b"upstream said hi", headers={"content-type": "text/plain"})
    with pytest.raises(MalformedResponse):
        await make().complete(client, REQUEST, "m")


async def test_key_echoed_by_vendor_never_leaks(api: respx.MockRouter, client: httpx.AsyncClient) -> None:
    body = {"type": "error", "error": {"type": "authentication_error", "message": f"invalid x-api-key: {KEY}"}}
    api.post(URL).respond(401, json=body)
    with pytest.raises(AuthError) as info:
        await make().complete(client, REQUEST, "m")
    err = info.value
    assert err.message == "invalid x-api-key: [REDACTED]"
    for rendered in (str(err), repr(err), json.dumps(err.to_dict())):
        assert KEY not in rendered
