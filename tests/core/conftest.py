"""Fixtures of the tests that drive strategies with the hand-released fake adapter (tests/core/gated.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from ai_gateway.dispatch import Dispatcher, Resilience
from ai_gateway.settings import Settings
from tests.core.fakes import FakeClock
from tests.core.gated import GatedAdapter


@pytest.fixture
async def dispatcher() -> AsyncIterator[Dispatcher]:
    # Retries back off on a fake clock, so a last candidate's retries cost no real time.
    resilience = Resilience.from_settings(Settings(_env_file=None), clock=FakeClock())
    async with httpx.AsyncClient() as client:
        yield Dispatcher(lambda: client, resilience)


@pytest.fixture
def gated() -> GatedAdapter:
    return GatedAdapter()
