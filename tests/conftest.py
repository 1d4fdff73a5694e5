"""Test-wide set-up: no network for fastmcp, no banner, and a hermetic environment.

Settings are always built with ``_env_file=None`` and providers with an explicit
environment, so a developer's real keys or ``.env`` never leak into a test.
"""

from __future__ import annotations

import os
import tempfile

# Before fastmcp is imported anywhere: no update check, no banner, our logging.
os.environ["FASTMCP_CHECK_FOR_UPDATES"] = "off"
os.environ["FASTMCP_SHOW_SERVER_BANNER"] = "false"
os.environ["FASTMCP_LOG_ENABLED"] = "false"
for _name in [n for n in os.environ if n.startswith("AI_GATEWAY_")]:
    del os.environ[_name]
# The price memo (ai_gateway/price_memo.py) of this run, here and in the subprocesses tests start: never the
# developer's own ~/.cache, and a clean clone's first run finds none, as CI does.
_CACHE_HOME = tempfile.TemporaryDirectory(prefix="aigw-test-cache-")
os.environ["XDG_CACHE_HOME"] = _CACHE_HOME.name


# ---------------------------------------------------------------------------- a real Redis (tests/redis_harness.py)
from collections.abc import AsyncIterator, Iterator  # noqa: E402

import pytest  # noqa: E402

from tests.redis_harness import HungRedis, RedisProcess, RedisTarget, shared_redis  # noqa: E402


@pytest.fixture(scope="session")
def redis_server() -> Iterator[tuple[int, int]]:
    """(port, db): Redis on :6379 (DB 15) if it answers, else a redis-server started for the session; else FAIL."""
    with shared_redis() as where:
        yield where


@pytest.fixture
def redis_target(redis_server: tuple[int, int]) -> Iterator[RedisTarget]:
    """This test's own key namespace on the session's Redis; its keys are deleted after (SCAN+DEL)."""
    target = RedisTarget(*redis_server)
    yield target
    target.cleanup()


@pytest.fixture
def private_redis() -> Iterator[RedisProcess]:
    """A redis-server of this test's own, on a free port (to stop, restart or limit); FAIL if none is installed."""
    server = RedisProcess().start()
    yield server
    server.stop()


@pytest.fixture
async def hung_redis() -> AsyncIterator[HungRedis]:
    """A 'Redis' that accepts connections and never answers."""
    async with HungRedis() as server:
        yield server
