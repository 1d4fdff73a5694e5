"""The fake provider itself, over real HTTP: wire shapes, failure modes, disconnect detection, CLI.

Other tests trust the fake to say whether the gateway really closed a connection, so the
disconnect and connection-count machinery is proven here with real clients (httpx and aiohttp).
Nothing sleeps to "wait and see": waits are on the fake's events, and order replaces wall-clock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from tests.fake_provider import _FIELD_TYPES, DIALECTS, ERROR_KINDS, FakeProvider, Scenario

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    async with FakeProvider() as server:
        yield server


@pytest.fixture
async def client(fake: FakeProvider) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=fake.url, timeout=10) as c:
        yield c


def request_for(dialect: str, model: str, text: str = "what is 2 plus 2") -> tuple[str, dict[str, Any]]:
    """The minimal valid request of each vendor."""
    if dialect == "openai":
        return "/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": text}]}
    if dialect == "anthropic":  # content as a list of blocks, the less trivial form
        blocks = [{"type": "text", "text": text}]
        return "/v1/messages", {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": blocks}]}
    if dialect == "gemini":
        return f"/v1beta/models/{model}:generateContent", {"contents": [{"role": "user", "parts": [{"text": text}]}]}
    return "/api/chat", {"model": model, "stream": False, "messages": [{"role": "user", "content": text}]}


async def post(client: httpx.AsyncClient, dialect: str, model: str, text: str = "what is 2 plus 2") -> httpx.Response:
    path, body = request_for(dialect, model, text)
    return await client.post(path, json=body)


# ---------------------------------------------------------------------------- success shapes
def expected_success(dialect: str, model: str, text: str, n_in: int, n_out: int, got: dict[str, Any]) -> dict[str, Any]:
    """The vendor's exact success body; ids and timestamps are taken from ``got``."""
    if dialect == "openai":
        return {"id": got["id"], "object": "chat.completion", "created": got["created"], "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}}
    if dialect == "anthropic":
        return {"id": got["id"], "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": n_in, "output_tokens": n_out}}
    if dialect == "gemini":
        return {"candidates": [{"content": {"parts": [{"text": text}], "role": "model"}, "finishReason": "STOP",
                                "index": 0}],
                "usageMetadata": {"promptTokenCount": n_in, "candidatesTokenCount": n_out,
                                  "totalTokenCount": n_in + n_out},
                "modelVersion": model, "responseId": got["responseId"]}
    return {"model": model, "created_at": got["created_at"], "message": {"role": "assistant", "content": text},
            "done": True, "done_reason": "stop", "total_duration": 1, "prompt_eval_count": n_in, "eval_count": n_out}


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_success_echoes_the_prompt_in_each_vendor_shape(client: httpx.AsyncClient, dialect: str) -> None:
    resp = await post(client, dialect, "echo-model", "what is two plus two")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/json")
    got = resp.json()
    assert got == expected_success(dialect, "echo-model", "what is two plus two", 5, 5, got)
    assert str(got.get("id", got.get("responseId", got.get("created_at")))) != ""


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_fixed_text_scenario_applies_by_model_on_every_dialect(
    fake: FakeProvider, client: httpx.AsyncClient, dialect: str
) -> None:
    fake.set("fixed", Scenario(text="4"))
    got = (await post(client, dialect, "fixed", "what is two plus two")).json()
    assert got == expected_success(dialect, "fixed", "4", 5, 1, got)


LIMIT_FIELD = {
    "openai": ("max_tokens",),
    "anthropic": ("max_tokens",),
    "gemini": ("generationConfig", "maxOutputTokens"),
    "ollama": ("options", "num_predict"),
}
LENGTH_REASON = {  # where the reason lies, then the vendor's word for "stopped at the limit"
    "openai": ("choices", 0, "finish_reason", "length"),
    "anthropic": ("stop_reason", "max_tokens"),
    "gemini": ("candidates", 0, "finishReason", "MAX_TOKENS"),
    "ollama": ("done_reason", "length"),
}


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize(
    ("limit", "text", "cut"),
    [(3, "what is", False), (3, "what is two", False), (3, "what is two plus", True), (1, "what is two plus", True)],
)
async def test_an_answer_longer_than_the_output_limit_is_cut_with_the_vendors_reason(
    client: httpx.AsyncClient, dialect: str, limit: int, text: str, cut: bool
) -> None:
    path, body = request_for(dialect, "echo-model", text)
    *parents, name = LIMIT_FIELD[dialect]
    holder = body
    for parent in parents:
        holder = holder.setdefault(parent, {})
    holder[name] = limit
    got = (await client.post(path, json=body)).json()
    *where, length_reason = LENGTH_REASON[dialect]
    reason = got
    for step in where:
        reason = reason[step]
    words = text.split()[:limit]
    expected = expected_success(dialect, "echo-model", " ".join(words), len(text.split()), len(words), got)
    if cut:  # the same body but for the reason: the vendor's own word for "stopped at the limit"
        target = expected
        for step in where[:-1]:
            target = target[step]
        target[where[-1]] = length_reason
    assert (reason == length_reason) is cut
    assert got == expected


@pytest.mark.parametrize(("limit", "text", "output_tokens"), [(None, "Paris is the capital", 9), (7, "Paris is", 7),
                                                              (5, "", 5), (3, "", 3)])  # fmt: skip
async def test_a_thinking_model_spends_the_limit_before_its_answer(
    fake: FakeProvider, client: httpx.AsyncClient, limit: int | None, text: str, output_tokens: int
) -> None:
    """Reasoning tokens count as output and come out of the limit: at or below them, no text at all."""
    fake.set("thinker", Scenario(text="Paris is the capital", thinking=5))
    path, body = request_for("openai", "thinker")
    got = (await client.post(path, json=body if limit is None else {**body, "max_tokens": limit})).json()
    choice = got["choices"][0]
    assert (choice["message"]["content"], got["usage"]["completion_tokens"]) == (text, output_tokens)
    assert choice["finish_reason"] == ("stop" if limit is None else "length")


async def test_openai_max_completion_tokens_limits_the_answer_too(client: httpx.AsyncClient) -> None:
    path, body = request_for("openai", "echo-model", "one two three four")
    got = (await client.post(path, json={**body, "max_completion_tokens": 2})).json()
    assert got["choices"][0]["message"]["content"] == "one two"
    assert got["choices"][0]["finish_reason"] == "length"


async def test_calls_are_recorded(fake: FakeProvider, client: httpx.AsyncClient) -> None:
    await post(client, "openai", "a")
    path, body = request_for("gemini", "b")
    await client.post(path, json=body, headers={"X-Goog-Api-Key": "k1"})
    assert [c.dialect for c in fake.calls] == ["openai", "gemini"]
    (call,) = fake.calls_for("b")
    assert call.headers["x-goog-api-key"] == "k1"
    assert call.json == request_for("gemini", "b")[1]
    assert (call.outcome, call.status, call.path) == ("ok", 200, "/v1beta/models/b:generateContent")
    assert (fake.count("a"), fake.count("b"), fake.count()) == (1, 1, 2)


@pytest.mark.parametrize(
    ("dialect", "path", "body"),
    [
        ("openai", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}),
        ("anthropic", "/v1/messages", {"model": "m", "messages": [{"role": "user", "content": "x"}]}),
        ("ollama", "/api/chat", {"model": "m", "messages": [{"role": "user", "content": "x"}]}),  # streams by default
    ],
)
async def test_invalid_requests_get_a_vendor_400(
    fake: FakeProvider, client: httpx.AsyncClient, dialect: str, path: str, body: dict[str, Any]
) -> None:
    resp = await client.post(path, json=body)
    assert resp.status_code == 400
    assert error_discriminator(dialect, resp.json()) == {
        "openai": "invalid_request_error", "anthropic": "invalid_request_error", "ollama": "str"}[dialect]
    assert fake.count() == 0


# ---------------------------------------------------------------------------- vendor errors
def error_discriminator(dialect: str, body: Any) -> str:
    """Check the dialect's error envelope exactly and return its type/status field."""
    if dialect == "openai":
        assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
        return body["error"]["type"]
    if dialect == "anthropic":
        assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
        return body["error"]["type"]
    if dialect == "gemini":
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "status"}
        return body["error"]["status"]
    assert set(body) == {"error"} and isinstance(body["error"], str)
    return "str"


@pytest.mark.parametrize(
    ("dialect", "kind", "status", "discriminator"),
    [
        ("openai", "rate_limited", 429, "requests"),
        ("anthropic", "rate_limited", 429, "rate_limit_error"),
        ("gemini", "rate_limited", 429, "RESOURCE_EXHAUSTED"),
        ("ollama", "rate_limited", 429, "str"),
        ("openai", "overloaded", 503, "server_error"),
        ("anthropic", "overloaded", 529, "overloaded_error"),
        ("gemini", "overloaded", 503, "UNAVAILABLE"),
        ("ollama", "overloaded", 503, "str"),
    ],
)
async def test_error_bodies_are_in_the_dialect_hit(
    fake: FakeProvider, client: httpx.AsyncClient, dialect: str, kind: str, status: int, discriminator: str
) -> None:
    fake.set("m", Scenario.error(kind, retry_after="2"))
    resp = await post(client, dialect, "m")
    assert resp.status_code == status
    assert resp.headers["retry-after"] == "2"
    body = resp.json()
    assert error_discriminator(dialect, body) == discriminator
    if dialect == "gemini":
        assert body["error"]["code"] == status
    assert fake.calls[0].outcome == "error"


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_every_error_kind_renders_in_every_dialect(
    fake: FakeProvider, client: httpx.AsyncClient, dialect: str
) -> None:
    for kind, status in ERROR_KINDS.items():
        fake.set(kind, Scenario.error(kind))
        resp = await post(client, dialect, kind)
        assert resp.status_code in (status, 400, 403, 529), kind  # the documented vendor quirks
        error_discriminator(dialect, resp.json())


async def test_explicit_status_body_and_headers_override(fake: FakeProvider, client: httpx.AsyncClient) -> None:
    fake.set("a", Scenario(fail_status=502, fail_headers={"x-request-id": "r1"}))
    resp = await post(client, "anthropic", "a")
    assert (resp.status_code, resp.headers["x-request-id"]) == (502, "r1")
    assert resp.json()["error"]["type"] == "api_error"
    fake.set("b", Scenario(fail_status=418, fail_body={"custom": True}))
    resp = await post(client, "openai", "b")
    assert (resp.status_code, resp.json()) == (418, {"custom": True})


async def test_fail_times_then_success(fake: FakeProvider, client: httpx.AsyncClient) -> None:
    fake.set("flaky", Scenario.error("server_error", times=2))
    statuses = [(await post(client, "gemini", "flaky")).status_code for _ in range(4)]
    assert statuses == [500, 500, 200, 200]
    fake.set("flaky", Scenario.error("server_error", times=1))  # set() restarts the count
    assert (await post(client, "gemini", "flaky")).status_code == 500


# ---------------------------------------------------------------------------- timing and transport failures
async def test_delay_orders_concurrent_completions(fake: FakeProvider, client: httpx.AsyncClient) -> None:
    fake.set("slow", Scenario(delay_ms=150))
    finished: list[str] = []

    async def ask(model: str) -> None:
        await post(client, "openai", model)
        finished.append(model)

    await asyncio.gather(ask("slow"), ask("fast"))  # slow is sent first
    assert finished == ["fast", "slow"]
    assert [c.model for c in sorted(fake.calls, key=lambda c: c.finished_at or 0)] == ["fast", "slow"]


async def test_hang_then_client_cancel_is_an_observed_disconnect(
    fake: FakeProvider, client: httpx.AsyncClient
) -> None:
    fake.set("stuck", Scenario(hang=True))
    task = asyncio.create_task(post(client, "anthropic", "stuck"))
    await fake.wait_for_calls(1, "stuck")
    assert (fake.active_requests, fake.calls[0].outcome) == (1, "hung")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await fake.wait_for_disconnects(1)
    await fake.wait_idle(connections=True)  # httpx dropped the connection, not just the request
    assert (fake.disconnects[0].model, fake.disconnects[0].outcome) == ("stuck", "disconnected")
    assert fake.open_connections == 0


async def test_delay_cancelled_with_aiohttp_client_is_a_disconnect(fake: FakeProvider) -> None:
    # The gateway's transport is aiohttp-based: prove its cancellation is visible too.
    fake.set("slow", Scenario(delay_ms=60_000))
    async with aiohttp.ClientSession(base_url=fake.url) as session:
        path, body = request_for("ollama", "quick", "hi")
        async with session.post(path, json=body) as resp:
            assert (resp.status, (await resp.json())["message"]["content"]) == (200, "hi")
        path, body = request_for("ollama", "slow")
        task = asyncio.create_task(session.post(path, json=body))
        await fake.wait_for_calls(1, "slow")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await fake.wait_for_disconnects(1)
        await fake.wait_idle()
    assert [c.model for c in fake.disconnects] == ["slow"]
    assert fake.calls_for("quick")[0].outcome == "ok"


async def test_open_connections_follow_the_client_pool(fake: FakeProvider) -> None:
    async with httpx.AsyncClient(base_url=fake.url) as c:
        await asyncio.gather(*(post(c, "openai", "m") for _ in range(3)))
        await fake.wait_idle()
        assert 1 <= fake.open_connections <= 3  # kept alive by the pool
    await fake.wait_idle(connections=True)
    assert fake.open_connections == 0 and fake.disconnects == []


async def test_trickle_sends_the_body_byte_by_byte(fake: FakeProvider, client: httpx.AsyncClient) -> None:
    fake.set("drip", Scenario(trickle_ms=0.2, text="ok"))
    path, body = request_for("ollama", "drip")
    async with client.stream("POST", path, json=body) as resp:
        assert resp.status_code == 200
        chunks = [chunk async for chunk in resp.aiter_raw()]
    assert len(chunks) > 10  # arrived in pieces, not in one write
    assert json.loads(b"".join(chunks))["message"]["content"] == "ok"
    assert fake.calls[0].outcome == "ok"


async def test_client_leaving_mid_trickle_is_a_disconnect(fake: FakeProvider, client: httpx.AsyncClient) -> None:
    fake.set("drip", Scenario(trickle_ms=50))
    path, body = request_for("openai", "drip")
    async with client.stream("POST", path, json=body) as resp:
        assert resp.status_code == 200  # headers come first; then the client gives up
    await fake.wait_for_disconnects(1)
    assert fake.disconnects[0].status == 200


async def test_malformed_body(fake: FakeProvider, client: httpx.AsyncClient) -> None:
    fake.set("bad", Scenario(malformed=True))
    resp = await post(client, "openai", "bad")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/json")
    with pytest.raises(json.JSONDecodeError):
        resp.json()


async def test_wrong_content_type(fake: FakeProvider, client: httpx.AsyncClient) -> None:
    fake.set("proxy", Scenario(wrong_content_type=True))
    resp = await post(client, "gemini", "proxy")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    assert fake.calls[0].outcome == "wrong_content_type"


async def test_close_connection_is_a_transport_error_then_success(
    fake: FakeProvider, client: httpx.AsyncClient
) -> None:
    fake.set("drop", Scenario(close_connection=True, fail_times=1))
    with pytest.raises(httpx.TransportError):
        await post(client, "openai", "drop")
    assert (await post(client, "openai", "drop")).status_code == 200
    await fake.wait_idle()
    assert [c.outcome for c in fake.calls] == ["closed", "ok"]
    assert fake.disconnects == []  # the fake hung up, not the client


async def test_stop_ends_hung_requests_as_shutdown_not_disconnect() -> None:
    fake = FakeProvider(Scenario(hang=True))
    await fake.start()
    async with httpx.AsyncClient(base_url=fake.url) as c:
        task = asyncio.create_task(post(c, "openai", "any"))
        await fake.wait_for_calls(1)
        await fake.stop()
        with pytest.raises(httpx.TransportError):
            await task
    assert fake.calls[0].outcome == "shutdown" and fake.disconnects == []


# ---------------------------------------------------------------------------- scenario validation and admin
def test_scenario_from_dict_validates() -> None:
    assert set(_FIELD_TYPES) == {f.name for f in dataclasses.fields(Scenario)}
    assert Scenario.from_dict({"error_kind": "rate_limited", "retry_after": "2"}).failure == "error"
    with pytest.raises(ValueError, match=r"unknown scenario field\(s\) \['delay'\]"):
        Scenario.from_dict({"delay": 5})
    with pytest.raises(ValueError, match="'hang' must be bool"):
        Scenario.from_dict({"hang": 1})
    with pytest.raises(ValueError, match="'delay_ms' must be"):
        Scenario.from_dict({"delay_ms": True})
    with pytest.raises(ValueError, match="at most one failure mode"):
        Scenario(hang=True, malformed=True)
    with pytest.raises(ValueError, match="error_kind must be one of"):
        Scenario.error("teapot")
    with pytest.raises(ValueError, match="fail_times needs a failure mode"):
        Scenario(fail_times=1)


async def test_admin_endpoints(fake: FakeProvider, client: httpx.AsyncClient) -> None:
    resp = await client.post("/_admin/scenario", json={"model": "m", "scenario": {"error_kind": "rate_limited"}})
    assert resp.status_code == 200
    assert (await post(client, "openai", "m")).status_code == 429
    await client.post("/_admin/scenario", json={"model": "*", "scenario": {"text": "default"}})
    assert (await post(client, "ollama", "other")).json()["message"]["content"] == "default"

    calls = (await client.get("/_admin/calls")).json()
    assert (calls["total"], calls["counts"], calls["disconnects"]) == (2, {"m": 1, "other": 1}, 0)

    assert (await client.post("/_admin/reset")).json() == {"ok": True}
    assert (await client.get("/_admin/calls")).json()["total"] == 0
    assert (await post(client, "openai", "m")).status_code == 200  # scenarios were reset too


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"model": "m", "scenario": {"delay": 5}}, "unknown scenario field(s) ['delay']"),
        ({"model": "m", "scenario": {"hang": True}, "extra": 1}, "unknown field(s) ['extra']"),
        ({"scenario": {}}, '"model" must be a non-empty string'),
        ({"model": "m"}, '"scenario" is required'),
        ({"model": "m", "scenario": {"trickle_ms": 0}}, "trickle_ms must be a number > 0"),
    ],
)
async def test_admin_rejects_bad_input(client: httpx.AsyncClient, payload: dict[str, Any], message: str) -> None:
    resp = await client.post("/_admin/scenario", json=payload)
    assert resp.status_code == 400
    assert message in resp.json()["error"]


async def test_admin_rejects_invalid_json(client: httpx.AsyncClient) -> None:
    resp = await client.post("/_admin/scenario", content=b"{nope")
    assert resp.status_code == 400 and "not valid JSON" in resp.json()["error"]


# ---------------------------------------------------------------------------- subprocess mode
@pytest.mark.parametrize("entry", [["-m", "tests.fake_provider"], [str(ROOT / "tests" / "fake_provider.py")]])
async def test_subprocess_prints_ready_and_serves(entry: list[str]) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *entry, "--port", "0", "--scenario", 'fixed={"text": "from afar"}',
        cwd=ROOT, stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(30):  # a guard against a hang, not a measurement
            line = (await proc.stdout.readline()).decode()
        assert line.startswith("READY http://127.0.0.1:"), line
        async with httpx.AsyncClient(base_url=line.split()[1], timeout=10) as c:
            resp = await post(c, "anthropic", "fixed")
            assert resp.json()["content"] == [{"type": "text", "text": "from afar"}]
            assert (await c.get("/_admin/calls")).json()["counts"] == {"fixed": 1}
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.communicate()
    assert proc.returncode == 0  # SIGTERM is a clean shutdown
