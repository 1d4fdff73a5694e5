"""Ollama's native chat dialect: pure translators, then the adapter over HTTP."""

from __future__ import annotations

import json
from importlib.metadata import EntryPoint

import httpx
import pytest
import respx

from ai_gateway.adapter import ProviderConfig
from ai_gateway.errors import (
    BadRequest,
    ConnectFailed,
    MalformedResponse,
    NotFound,
    Overloaded,
    ProviderError,
    ProviderTimeout,
    UpstreamError,
)
from ai_gateway.registry import ENTRY_POINT_GROUP, Registry
from ai_gateway.secrets import Secret
from ai_gateway.types import ChatRequest, FinishReason, Message, Usage
from providers.ollama import OLLAMA, OllamaAdapter, normalise_host
from tests.providers.conftest import fixture_loader

BASE = "http://localhost:11434"
URL = f"{BASE}/api/chat"


load = fixture_loader("ollama")


def make(base_url: str = BASE, key: str | None = None) -> OllamaAdapter:
    return OllamaAdapter(ProviderConfig("ollama", base_url, Secret(key) if key else None))


REQUEST = ChatRequest(
    messages=(Message("user", "Hi"), Message("assistant", "Hello"), Message("user", "Why is the sky blue?")),
    system="Be brief.",
    temperature=0.3,
    max_tokens=100,
)


# -- normalise_host -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0.0.0.0:11434", "http://0.0.0.0:11434"),
        ("localhost:11434", "http://localhost:11434"),
        ("localhost", "http://localhost:11434"),
        (":11500", "http://127.0.0.1:11500"),
        ("gpu-box:8080/", "http://gpu-box:8080"),
        ("http://localhost:11434/", "http://localhost:11434"),
        ("https://ollama.example.com", "https://ollama.example.com"),
        ("  ", "http://localhost:11434"),
    ],
)
def test_normalise_host(value: str, expected: str) -> None:
    assert normalise_host(value) == expected


def test_the_registry_reads_ollama_host_as_ollama_does() -> None:
    """OLLAMA_HOST is a bind address, written without a scheme: the spec says how to read it, so the registry's
    check that a base URL starts with http:// or https:// holds for it too."""
    registry = Registry([EntryPoint("ollama", "providers.ollama:OLLAMA", ENTRY_POINT_GROUP)], environ={})
    assert registry.config("ollama").base_url == BASE
    bound = Registry([EntryPoint("ollama", "providers.ollama:OLLAMA", ENTRY_POINT_GROUP)],
                     environ={"OLLAMA_HOST": "0.0.0.0:11434"})  # fmt: skip
    assert bound.status("ollama").configured and bound.config("ollama").base_url == "http://0.0.0.0:11434"


# -- build_request ------------------------------------------------------------------


def test_build_request_full() -> None:
    req = make(base_url="http://0.0.0.0:11434").build_request(REQUEST, "llama3.2")
    assert req.method == "POST"
    assert req.url == "http://0.0.0.0:11434/api/chat"
    assert dict(req.headers) == {"content-type": "application/json"}
    assert req.json == {
        "model": "llama3.2",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Why is the sky blue?"},
        ],
        "stream": False,
        "options": {"temperature": 0.3, "num_predict": 100},
    }


def test_build_request_omits_empty_options() -> None:
    req = make().build_request(ChatRequest(messages=(Message("user", "Hi"),)), "qwen2.5")
    assert req.url == URL
    assert req.json == {"model": "qwen2.5", "messages": [{"role": "user", "content": "Hi"}], "stream": False}


def test_a_query_in_the_base_url_stays_after_the_path() -> None:
    """A proxy in front of Ollama reached as http://proxy/ollama?tenant=a got POST .../ollama?tenant=a/api/chat."""
    req = make(base_url="http://proxy:8080/ollama/?tenant=a").build_request(REQUEST, "m")
    assert req.url == "http://proxy:8080/ollama/api/chat?tenant=a"


def test_build_request_with_key_sends_bearer() -> None:
    req = make(key="proxy-token-123456").build_request(REQUEST, "m")
    assert req.headers["authorization"] == "Bearer proxy-token-123456"


# -- parse_response -----------------------------------------------------------------


def test_parse_success() -> None:
    c = make().parse_response(load("success.json"), "llama3.2")
    assert c.text == "Hello! How are you today?"
    assert c.finish_reason is FinishReason.STOP
    assert c.raw_finish_reason == "stop"
    assert c.model == "llama3.2"
    assert c.response_id is None
    assert c.usage == Usage(input_tokens=26, output_tokens=298)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("stop", FinishReason.STOP),
        ("length", FinishReason.LENGTH),
        ("load", FinishReason.OTHER),
        ("unload", FinishReason.OTHER),
        ("novel", FinishReason.OTHER),
    ],
)
def test_finish_reasons(raw: str, expected: FinishReason) -> None:
    body = load("success.json")
    body["done_reason"] = raw
    c = make().parse_response(body, "m")
    assert c.finish_reason is expected
    assert c.raw_finish_reason == raw


def test_parse_without_counts_has_no_usage() -> None:
    c = make().parse_response(load("load.json"), "llama3.2")
    assert c.usage is None
    assert c.text == ""
    assert c.finish_reason is FinishReason.OTHER


def test_parse_cached_prompt_omits_prompt_count() -> None:
    body = load("success.json")
    del body["prompt_eval_count"]
    assert make().parse_response(body, "m").usage == Usage(input_tokens=0, output_tokens=298)


# -- classify_error -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "status", "cls", "code", "retryable"),
    [
        ("error_model_not_found.json", 404, NotFound, "not_found", False),
        ("error_bad_request.json", 400, BadRequest, "bad_request", False),
        ("error_server.json", 500, UpstreamError, "upstream_error", True),
        ("error_busy.json", 503, Overloaded, "overloaded", True),
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
    assert err.message == body["error"]


# -- the row ------------------------------------------------------------------------


def test_row() -> None:
    assert OLLAMA.name == "ollama"
    assert OLLAMA.adapter is OllamaAdapter
    assert OLLAMA.base_url == BASE
    assert OLLAMA.api_key_env == ("OLLAMA_API_KEY",)  # optional: ollama.com or an authenticating proxy
    assert OLLAMA.base_url_env == ("OLLAMA_HOST",)
    assert OLLAMA.key_required is False


# -- the adapter over HTTP (respx intercepting the production aiohttp transport) -----


async def test_complete_sends_vendor_request(api: respx.MockRouter, client: httpx.AsyncClient) -> None:
    route = api.post("http://0.0.0.0:11434/api/chat").respond(200, json=load("success.json"))
    adapter = make(base_url="http://0.0.0.0:11434")
    c = await adapter.complete(client, REQUEST, "llama3.2")
    assert c.text == "Hello! How are you today?"
    sent = route.calls.last.request
    assert "authorization" not in sent.headers
    assert json.loads(sent.content) == adapter.build_request(REQUEST, "llama3.2").json


async def test_complete_model_not_found(api: respx.MockRouter, client: httpx.AsyncClient) -> None:
    api.post(URL).respond(404, json=load("error_model_not_found.json"))
    with pytest.raises(NotFound, match="try pulling it first") as info:
        await make().complete(client, REQUEST, "llama9")
    assert info.value.provider == "ollama"
    assert info.value.status == 404


async def test_complete_busy_retry_after(api: respx.MockRouter, client: httpx.AsyncClient) -> None:
    api.post(URL).respond(503, json=load("error_busy.json"), headers={"Retry-After": "4"})
    with pytest.raises(Overloaded) as info:
        await make().complete(client, REQUEST, "m")
    assert info.value.retry_after_s == 4.0


async def test_complete_timeout(api: respx.MockRouter, client: httpx.AsyncClient) -> None:
    api.post(URL).mock(side_effect=httpx.ReadTimeout)
    with pytest.raises(ProviderTimeout):
        await make().complete(client, REQUEST, "m")


async def test_complete_connect_error(api: respx.MockRouter, client: httpx.AsyncClient) -> None:
    api.post(URL).mock(side_effect=httpx.ConnectError)
    with pytest.raises(ConnectFailed, match="ollama"):
        await make().complete(client, REQUEST, "m")


async def test_complete_non_json_200(api: respx.MockRouter, client: httpx.AsyncClient) -> None:
    api.post(URL).respond(200, text="Ollama is running", headers={"content-type": "text/plain"})
    with pytest.raises(MalformedResponse, match="text/plain"):
        await make().complete(client, REQUEST, "m")


async def test_key_echoed_by_server_never_leaks(api: respx.MockRouter, client: httpx.AsyncClient) -> None:
    key = "proxy-token-e5c7a9b1d3"
    api.post(URL).respond(401, json={"error": f"unauthorized: bad token {key}"})
    with pytest.raises(ProviderError) as info:
        await make(key=key).complete(client, REQUEST, "m")
    err = info.value
    assert err.code == "auth"
    assert err.message == "unauthorized: bad token [REDACTED]"
    for rendered in (str(err), repr(err), json.dumps(err.to_dict())):
        assert key not in rendered
