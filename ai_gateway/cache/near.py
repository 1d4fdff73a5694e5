"""The near cache: answers lately read from Redis, kept in this process until Redis says they changed.

A question asked again is then answered without a round trip (on a 2-core machine a
Redis round trip costs more than the rest of a cache hit). Staying correct is Redis's
job, not a guess at a TTL: one connection of our own asks Redis to broadcast a message
whenever a key under the namespace changes (server-assisted client-side caching:
``CLIENT TRACKING ON BCAST PREFIX``, on RESP2, with the messages redirected to that
same connection's ``__redis__:invalidate`` subscription). Each message drops the
entries it names; a flush drops them all.

- It answers only while that connection is subscribed. Losing it (Redis restarted,
  network, a silence longer than a PING's patience) empties it, and so does Redis
  failing for the backend.
- A value read from Redis is kept only if no message about its key arrived while it
  was being read: the reply and the message travel on different connections, in
  either order.
- A write by this process drops the entry at once; Redis's message for it comes later.
- Redis that refuses tracking (older than 6, a proxy, an ACL) turns the near cache
  off for the process, logged once; the shared cache works as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ai_gateway.cache.memory import MemoryBackend

log = logging.getLogger(__name__)

INVALIDATE = "__redis__:invalidate"
# Errors Redis gives while it cannot serve anyone for a while (a long script, loading its data, a failover):
# not a refusal of tracking, which would turn the near cache off for the rest of the process.
_TRANSIENT = frozenset({"BUSY", "LOADING", "TRYAGAIN", "MASTERDOWN", "CLUSTERDOWN"})


def error_code(exc: Exception) -> str:
    """Redis's error code: redis-py keeps it apart for the errors it has a class for, else it leads the message."""
    return getattr(exc, "status_code", None) or str(exc).partition(" ")[0]


@dataclass(eq=False, slots=True)
class _Read:
    """A read of ``key`` from Redis under way; ``current`` turns False if the key changes meanwhile."""

    key: str
    current: bool = True


class NearCache:
    def __init__(
        self,
        connect: Callable[[], Awaitable[Any]],
        prefix: str,
        max_entries: int,
        max_bytes: int,
        *,
        timeout_s: float,
        retry_s: float,
        ping_every_s: float = 5.0,
    ) -> None:
        self.entries = MemoryBackend(max_entries, max_bytes)
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.ping_every_s = ping_every_s
        self.live = False  # subscribed: the entries are kept in step with Redis
        self.refused = False  # Redis said no to tracking: off for good
        self.messages = 0  # invalidation messages applied
        self.client_id: int | None = None  # the tracking connection's, as Redis numbers it
        self._connect = connect  # holds the URL (and any password) in its closure, never in an attribute
        self._conn: Any = None
        self._reads: dict[str, list[_Read]] = {}
        self._pongs: deque[tuple[float, asyncio.Future[None]]] = deque()  # PINGs sent: (answer by, waiter)
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._live_changed: asyncio.Event | None = None

    async def get(self, key: str) -> bytes | None:
        # Tracking starts with the first lookup: it needs the running loop, which the constructor may not have.
        if self._task is None and not self.refused and not self._closing:
            self._task = asyncio.get_running_loop().create_task(self._track(), name="cache-near-tracking")
        return await self.entries.get(key) if self.live else None

    def begin_read(self, key: str) -> _Read | None:
        """Say a read of ``key`` from Redis starts; hand the token to :meth:`end_read`."""
        if not self.live or not key.startswith(self.prefix):  # Redis tells us only about keys under the prefix
            return None
        read = _Read(key)
        self._reads.setdefault(key, []).append(read)
        return read

    async def end_read(self, read: _Read | None, value: bytes | None, ttl_s: float | None) -> None:
        """Keep what Redis answered, unless the key changed (or tracking was lost) while it was read."""
        if read is None:
            return
        reads = self._reads.get(read.key)
        if reads is not None:
            reads.remove(read)
            if not reads:
                del self._reads[read.key]
        if read.current and self.live and value is not None and ttl_s is not None and ttl_s > 0:
            await self.entries.set(read.key, value, ttl_s)

    async def forget(self, key: str) -> None:
        """This process is changing ``key``: drop it now, and do not keep a read of the old value."""
        await self.entries.delete(key)
        for read in self._reads.get(key, ()):
            read.current = False

    def clear(self) -> None:
        self.entries.clear()
        for reads in self._reads.values():
            for read in reads:
                read.current = False

    async def barrier(self) -> None:
        """Return once every message about writes Redis finished before this call has been applied.

        Redis answers a PING on the tracking connection after the messages it queued there
        before it, so the answer marks the point. (Tests use it instead of waiting to see.)
        """
        if not self.live or self._conn is None:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._pongs.append((asyncio.get_running_loop().time() + self.timeout_s, waiter))
        await self._conn.send_command("PING")
        await waiter

    async def wait_live(self, live: bool = True) -> None:
        """Return once tracking is (or is no longer) established; waiting for it, also once Redis refused it."""
        while self.live is not live and not (live and self.refused):
            if self._live_changed is None:
                self._live_changed = asyncio.Event()
            await self._live_changed.wait()

    async def _track(self) -> None:
        """Keep one subscribed tracking connection, reconnecting after ``retry_s`` when it is lost."""
        from redis.exceptions import RedisError, ResponseError

        while not self._closing:
            connected = False
            try:
                self._conn = await self._connect()
                connected = True
                await self._conn.send_command("CLIENT", "ID")
                self.client_id = await self._reply()
                await self._conn.send_command(
                    "CLIENT", "TRACKING", "ON", "REDIRECT", self.client_id, "BCAST", "PREFIX", self.prefix
                )
                await self._reply()
                await self._conn.send_command("SUBSCRIBE", INVALIDATE)
                await self._reply()
                self._set_live(True)
                await self._listen()
            except ResponseError as exc:
                # Only a refusal of tracking itself turns the near cache off. One of the connection's own set-up (a
                # wrong database number or password) is the shared cache's too, and its outage warning says so.
                if connected and not self.live and error_code(exc) not in _TRANSIENT:
                    log.warning(
                        "redis refused client-side tracking (%s); the near cache is off, the shared cache works as "
                        "before (AI_GATEWAY_CACHE_NEAR_ENTRIES=0 turns the near cache off without this warning)",
                        exc,
                    )
                    self.refused = True
                    return
                # Tracking was granted before, Redis is only busy for now, or the set-up failed: lost, not refused.
                log.debug("near cache tracking interrupted (%s); retrying in %gs", exc, self.retry_s)
            except (RedisError, OSError, TimeoutError) as exc:
                log.debug("near cache tracking lost (%s); retrying in %gs", type(exc).__name__, self.retry_s)
            except Exception as exc:  # a message of a shape not foreseen must not end tracking for good
                log.warning("near cache tracking failed (%s); retrying in %gs", type(exc).__name__, self.retry_s)
            finally:
                await self._lose()
            if not self._closing:
                await asyncio.sleep(self.retry_s)

    async def _reply(self) -> Any:
        reply = await self._conn.read_response(timeout=self.timeout_s)
        if reply is None:
            raise TimeoutError("no answer on the tracking connection")
        return reply

    async def _listen(self) -> None:
        """Apply messages as they come; when idle, PING, and give up on a connection that does not answer."""
        loop = asyncio.get_running_loop()
        while True:
            wait = self.ping_every_s if not self._pongs else self._pongs[0][0] - loop.time()
            message = await self._conn.read_response(timeout=max(wait, 0.0)) if wait > 0 else None
            if message is None:
                if self._pongs:
                    raise TimeoutError("no answer to PING on the tracking connection")
                self._pongs.append((loop.time() + self.timeout_s, loop.create_future()))
                await self._conn.send_command("PING")
                continue
            kind = message[0]
            if kind == b"pong" and self._pongs:
                _, waiter = self._pongs.popleft()
                if not waiter.done():
                    waiter.set_result(None)
            elif kind == b"message":
                self.messages += 1
                await self._invalidate(message[2])

    async def _invalidate(self, keys: list[bytes] | bytes | None) -> None:
        # None: FLUSHDB / FLUSHALL. Not a list: anyone may publish on this channel; unsure means empty.
        if not isinstance(keys, list):
            self.clear()
            return
        for raw in keys:
            await self.forget(raw.decode(errors="replace"))  # a key not in UTF-8 is none of ours anyway

    def _set_live(self, live: bool) -> None:
        self.live = live
        if self._live_changed is not None:
            self._live_changed.set()
            self._live_changed = None

    async def _lose(self) -> None:
        was_live = self.live
        self._set_live(False)
        self.clear()
        while self._pongs:
            _, waiter = self._pongs.popleft()
            if not waiter.done():
                waiter.set_result(None)
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # a dead connection may fail to close; it is gone either way
                await conn.disconnect()
        if was_live:
            log.debug("near cache emptied: tracking connection lost")

    async def aclose(self) -> None:
        self._closing = True
        if self._task is not None:
            # Cancelled again until it ends: a cancellation that lands as a read's own timeout fires can be
            # lost inside redis-py (seen: the task went on to its retry sleep, and shutdown waited on it).
            while not self._task.done():
                self._task.cancel()
                await asyncio.wait([self._task], timeout=self.timeout_s)
            self._task = None
        await self._lose()
