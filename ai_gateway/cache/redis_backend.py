"""The shared cache in Redis, which must never become a dependency.

Every operation has a short timeout. After a failure Redis is skipped for
``cooldown_s`` (a breaker in all but name) and the embedded cache answers
instead; the outage is logged once, with the password redacted, and so is the
recovery. Redis that is down at start-up does not stop the gateway: the client
connects lazily.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from ai_gateway.cache.memory import MemoryBackend

log = logging.getLogger(__name__)
T = TypeVar("T")

# One round trip for a lookup: the answer if there is one, else try to take the lease.
_LOOKUP = """
local value = redis.call('GET', KEYS[1])
if value then return {1, value} end
if ARGV[1] == '' then return {0, 0} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('DEL', KEYS[3])  -- a new call: an earlier caller's error marker is not about it
  return {0, 1}
end
return {0, 0}
"""
# One round trip to settle a call: store the answer or the error, then release the lease if still ours.
_SETTLE = """
if ARGV[1] ~= '' then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
if ARGV[3] ~= '' then redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4]) end
if redis.call('GET', KEYS[2]) == ARGV[5] then redis.call('DEL', KEYS[2]) end
return 1
"""


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:****@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class RedisBackend:
    name = "redis"

    def __init__(
        self,
        url: str,
        fallback: MemoryBackend,
        *,
        op_timeout_s: float = 0.1,
        cooldown_s: float = 5.0,
        max_connections: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.url = redact_url(url)
        self.fallback = fallback
        self.op_timeout_s = op_timeout_s
        self.cooldown_s = cooldown_s
        self._clock = clock
        # No retries inside redis-py: one failure trips our cooldown instead of piling up waits.
        # A blocking pool: past max_connections a call waits (within its op timeout) for a free
        # connection; redis-py's default pool raises at once, which looked like an outage.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=op_timeout_s,
            socket_timeout=op_timeout_s,
            socket_connect_timeout=op_timeout_s,
            health_check_interval=0,
            retry=Retry(NoBackoff(), 0),
        )
        self.client: Any = aioredis.Redis.from_pool(pool)  # the client owns the pool and closes it
        self._lookup = self.client.register_script(_LOOKUP)
        self._settle = self.client.register_script(_SETTLE)
        self._down_until = 0.0
        self.failures = 0

    @property
    def healthy(self) -> bool:
        return self._clock() >= self._down_until

    async def get(self, key: str) -> bytes | None:
        if not self.healthy:
            return await self.fallback.get(key)
        value = await self._guard(self.client.get(key))
        return await self.fallback.get(key) if value is _FAILED else value  # type: ignore[return-value]

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        if not self.healthy:
            await self.fallback.set(key, value, ttl_s)
            return
        stored = await self._guard(self.client.set(key, value, px=max(1, int(ttl_s * 1000))))
        if stored is _FAILED:
            await self.fallback.set(key, value, ttl_s)

    async def delete(self, key: str) -> None:
        await self.fallback.delete(key)
        if self.healthy:
            await self._guard(self.client.delete(key))

    async def lookup(
        self, key: str, lease_key: str, token: str | None, ttl_s: float
    ) -> tuple[bytes | None, bool | None]:
        """The stored value, or (when ``token`` is given) an attempt to take the lease: in one round trip.

        Returns (value, lease taken). ``lease taken`` is None when Redis could not say.
        """
        if not self.healthy:
            return await self.fallback.get(key), None
        lease_ms = max(1, int(ttl_s * 1000))
        error_key = lease_key.removesuffix(":lease") + ":error"
        reply = await self._guard(self._lookup(keys=[key, lease_key, error_key], args=[token or "", lease_ms]))
        if reply is _FAILED:
            return await self.fallback.get(key), None
        found, payload = reply  # type: ignore[misc]
        return (payload, False) if found else (None, bool(payload) if token else None)

    async def settle(
        self,
        key: str,
        value: bytes | None,
        ttl_s: float,
        lease_key: str,
        token: str,
        error_key: str,
        error: bytes | None,
    ) -> None:
        """Store the answer (or publish the error briefly) and release the lease if it is still ours."""
        if not self.healthy:
            if value is not None:
                await self.fallback.set(key, value, ttl_s)
            return
        args = [value or b"", max(1, int(ttl_s * 1000)), error or b"", 5000, token]
        if await self._guard(self._settle(keys=[key, lease_key, error_key], args=args)) is _FAILED:
            if value:
                await self.fallback.set(key, value, ttl_s)
            await self._release(lease_key, token)

    async def _release(self, lease_key: str, token: str) -> None:
        """Best effort, past the cooldown: a lease left behind would stall other gateways until it expires.
        (DEL is allowed even when Redis refuses writes for lack of memory.)"""
        from redis.exceptions import RedisError

        try:
            async with asyncio.timeout(self.op_timeout_s):
                if await self.client.get(lease_key) == token.encode():
                    await self.client.delete(lease_key)
        except (RedisError, OSError, TimeoutError):
            pass

    async def lease(self, key: str, token: str, ttl_s: float) -> bool | None:
        """Take a short lease on ``key`` (cross-process single-flight); None when Redis cannot say."""
        if not self.healthy:
            return None
        taken = await self._guard(self.client.set(key, token, nx=True, px=max(1, int(ttl_s * 1000))))
        return None if taken is _FAILED else bool(taken)

    async def _guard(self, operation: Awaitable[T]) -> T | object:
        from redis.exceptions import RedisError

        try:
            async with asyncio.timeout(self.op_timeout_s):
                result = await operation
        except (RedisError, OSError, TimeoutError) as exc:
            self._trip(exc)
            return _FAILED
        if self.failures:
            log.warning("redis cache at %s is answering again; using it", self.url)
            self.failures = 0
        return result

    def _trip(self, exc: BaseException) -> None:
        if self.failures == 0:  # once per outage, not once per call
            log.warning(
                "redis cache at %s failed (%s); serving from the embedded cache for %gs at a time until it answers",
                self.url,
                type(exc).__name__,
                self.cooldown_s,
            )
        self.failures += 1
        self._down_until = self._clock() + self.cooldown_s

    async def aclose(self) -> None:
        try:
            await self.client.aclose()
        except Exception:  # closing a dead connection must not fail shutdown
            log.debug("redis close failed", exc_info=False)


_FAILED = object()
