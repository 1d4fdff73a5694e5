"""The shared client: its transport reports connection failures as what they are, and it is built (with the
rest of the HTTP stack) by the warm-up's thread, off the loop."""

from __future__ import annotations

import asyncio
import socket
import threading

import httpx
import pytest

from ai_gateway import http as http_module
from ai_gateway import warmup as warmup_module
from ai_gateway.gateway import running_gateway
from ai_gateway.http import SharedClient, build_client
from ai_gateway.registry import Registry
from ai_gateway.settings import Settings
from ai_gateway.warmup import WarmUp


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_refused_connection_is_a_connect_error_not_a_timeout(transport: str) -> None:
    async with build_client(Settings(_env_file=None, http_transport=transport)) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{closed_port()}/")


async def test_server_hanging_up_is_a_protocol_error() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with build_client(Settings(_env_file=None)) as client:
            with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
                await client.get(f"http://127.0.0.1:{port}/")
    finally:
        server.close()
        await server.wait_closed()


# ---------------------------------------------------------------------------- the warm-up
async def test_the_first_query_hurries_a_delayed_warm_up_instead_of_importing_on_the_loop() -> None:
    warm = WarmUp()
    warm.start(delay_s=3600)  # as if the server had just started
    assert not warm.ready(http=False) and not warm.ready()
    await warm.wait()  # returns as soon as the imports are done in their thread, not after the delay
    assert warm.ready(http=False) and warm.ready()
    await warm.wait()  # and at once afterwards
    await warm.aclose()


async def test_a_replay_loads_the_price_table_without_the_http_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded: list[str] = []
    monkeypatch.setattr(warmup_module, "import_http_stack", lambda: loaded.append("http"))
    monkeypatch.setattr("ai_gateway.pricing.preload", lambda: loaded.append("prices"))
    warm = WarmUp()
    warm.skip_http()
    warm.start(delay_s=3600)
    await warm.wait(http=False)
    await warm.aclose()  # the run is over: nothing more is loaded
    assert loaded == ["prices"] and not warm.ready()

    later = WarmUp()  # a provider call after all: the HTTP stack is loaded then
    later.skip_http()
    await later.wait(http=False)
    await later.wait()
    assert loaded == ["prices", "prices", "http"]


async def test_a_failing_warm_up_is_logged_and_does_not_hold_queries(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> None:
        raise ImportError("no module named 'aiohttp'")

    monkeypatch.setattr(warmup_module, "import_http_stack", broken)
    warm = WarmUp()
    await warm.wait()
    assert warm.ready()
    assert "warm-up failed (ImportError)" in caplog.text
    await warm.aclose()


async def test_the_shared_client_is_built_in_the_warm_up_thread_not_on_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built_on = record_client_builds(monkeypatch)
    client = SharedClient(Settings(_env_file=None))
    warm = WarmUp(prepare_http=client.prepare)
    warm.start(delay_s=3600)
    await warm.wait()
    await warm.finished()  # the client is built after the HTTP stack is declared ready: no query waits for it
    assert len(built_on) == 1 and built_on[0] != threading.get_ident()
    assert client() is client() and len(built_on) == 1  # the warm-up's client, not another
    await warm.aclose()
    await client.aclose()


async def test_a_running_gateways_warm_up_builds_the_client_its_provider_calls_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built_on = record_client_builds(monkeypatch)
    settings = Settings(_env_file=None)
    async with running_gateway(settings, Registry.from_settings(settings, {})) as gateway:
        assert gateway.warm is not None
        await gateway.warm.wait()
        await gateway.warm.finished()
        result = await gateway.query(prompt="hi", models=["mock/echo"], cache="bypass")
    assert result.answer == "hi"
    assert len(built_on) == 1 and built_on[0] != threading.get_ident()


def record_client_builds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The threads that built a shared client, in order."""
    built_on: list[int] = []

    def build(settings: Settings) -> httpx.AsyncClient:
        built_on.append(threading.get_ident())
        return build_client(settings)

    monkeypatch.setattr(http_module, "build_client", build)
    return built_on


async def test_a_provider_call_during_the_build_waits_for_that_client_rather_than_build_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started, release, built_on = threading.Event(), threading.Event(), []

    def slow_build(settings: Settings) -> httpx.AsyncClient:
        built_on.append(threading.get_ident())
        started.set()
        release.wait(10)
        return build_client(settings)

    monkeypatch.setattr(http_module, "build_client", slow_build)
    client = SharedClient(Settings(_env_file=None))
    warm = WarmUp(prepare_http=client.prepare)
    await warm.wait()  # the HTTP stack is ready; the client is being built
    assert await asyncio.to_thread(started.wait, 10)
    threading.Timer(0.05, release.set).start()  # the build ends while the call below waits for it
    first = client()
    await warm.finished()
    assert client() is first and len(built_on) == 1 and built_on[0] != threading.get_ident()
    await client.aclose()
