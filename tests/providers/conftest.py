"""What every adapter's HTTP tests share: the production transport, with respx intercepting it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx_aiohttp
import pytest
import respx

FIXTURES = Path(__file__).parent.parent / "fixtures"


def fixture_loader(vendor: str) -> Callable[[str], Any]:
    """``load(name)`` for the vendor's recorded bodies under tests/fixtures/<vendor>/."""

    def load(name: str) -> Any:
        return json.loads((FIXTURES / vendor / name).read_text())

    return load


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx_aiohttp.AiohttpTransport()) as c:
        yield c


@pytest.fixture
def api() -> Iterator[respx.MockRouter]:
    with respx.mock(using="httpx", assert_all_called=True, assert_all_mocked=True) as router:
        yield router
