"""Cache fixtures: the fake provider, and gateways built on hermetic settings that point at it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
from fastmcp import Client

from ai_gateway.server import build_server
from ai_gateway.settings import Settings
from tests.cache.support import FAST, CacheFake, Running
from tests.integration.conftest import provider_env

OpenGateway = Callable[..., AbstractAsyncContextManager[Running]]


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shared client trusts proxy variables; traffic to the local fake must not use one."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def fake() -> AsyncIterator[CacheFake]:
    async with CacheFake() as server:
        yield server


@pytest.fixture
def environ(fake: CacheFake) -> dict[str, str]:
    return provider_env(fake.url)


@pytest.fixture
def open_gateway(environ: Mapping[str, str]) -> OpenGateway:
    """``async with open_gateway(**settings) as gw``: a fresh server (FAST settings) and its client.

    ``environ_=`` replaces the provider environment (e.g. another fake's URL).
    """

    @contextlib.asynccontextmanager
    async def open_(*, environ_: Mapping[str, str] | None = None, **settings: Any) -> AsyncIterator[Running]:
        server = build_server(Settings(_env_file=None, **{**FAST, **settings}), dict(environ_ or environ))
        async with Client(server) as client:
            yield Running(client, server)

    return open_
