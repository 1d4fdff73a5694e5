"""Retry-After parsing: seconds, HTTP dates, retry-after-ms; nonsense is ignored, never trusted."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from ai_gateway.errors import parse_retry_after

NOW = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "3"}, 3.0),
        ({"Retry-After": "0.25"}, 0.25),
        ({"Retry-After": " 7 "}, 7.0),
        ({"Retry-After": "0"}, 0.0),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "250", "Retry-After": "9"}, 0.25),  # the finer header wins
        ({"Retry-After": "Sat, 21 Nov 2026 12:00:30 GMT"}, 30.0),
        ({"Retry-After": "Sat, 21 Nov 2026 11:59:00 GMT"}, 0.0),  # a date in the past: go now
        ({"Retry-After": "86400"}, 86400.0),  # huge but well formed: the policy's cap decides
        ({"Retry-After": "-5"}, None),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "nan"}, None),
        ({"Retry-After": "inf"}, None),
        ({"retry-after-ms": "-1", "Retry-After": "2"}, 2.0),  # a bad ms value falls back
        ({"retry-after-ms": "abc"}, None),
        ({}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(httpx.Headers(headers), now=NOW) == expected
