"""The shared cache in Redis, which must never become a dependency.

Every operation has a short timeout. After a failure Redis is skipped for
``cooldown_s`` (a breaker in all but name) and the embedded cache answers
instead; the outage is logged once, with the password redacted, and so is the
recovery. Redis that is down at start-up does not stop the gateway: the client
connects lazily.

Two things keep a short outage (or a hiccup that only looked like one) from
costing money later:

- A timeout is a suspicion, not a verdict. The operation itself is served by
  the embedded cache at once, but Redis is skipped only if a direct ``PING``,
  given more patience, fails too: a process whose loop was held up (imports on
  a warm-up thread, a burst of CPU work) sees a timeout although Redis is well.
  A refused connection or an error Redis itself returned needs no such check.
- Answers stored while Redis was skipped or failing are kept in the embedded
  cache *and remembered*; once Redis answers again (or at shutdown, if it
  answers then) they are copied to it, so other processes, and the replay of a
  batch run, find them instead of paying for them again. Once copied, the local
  copy goes: in a later outage it would undo what replaced it in Redis since.
- A replay (``cache: only``), where a miss fails the model, does not take the
  cooldown's word that Redis is down: it asks Redis (one shared PING) before
  reporting a miss, and an answer ends the cooldown early.

A value of another Redis type under a key (another program's list) is a miss,
never an outage.

The lookups of a call with several models, and the stores, go to Redis in one
pipeline per turn of the event loop (with the other calls of that turn, such
as the rows an evaluation runs at once): one round trip and one connection
instead of one each. A lone model's lookup is sent at once.

An answer found in Redis is also kept in this process's near cache
(``near.py``), which Redis keeps in step by its invalidation messages: the same
question asked again is answered without a round trip.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from ai_gateway.cache import key as key_layout
from ai_gateway.cache.memory import MemoryBackend
from ai_gateway.cache.near import NearCache, error_code
from ai_gateway.secrets import redact, redact_url, url_password

log = logging.getLogger(__name__)
T = TypeVar("T")

PROBE_TIMEOUT_FACTOR = 10  # the PING that checks a timed-out Redis waits this many operation timeouts (≥ 1 s)
RESYNC_BATCH = 128  # most entries per pipelined round trip when copying local answers to Redis
RESYNC_BATCH_BYTES = 1 << 20  # and most bytes, so one round trip fits in an operation timeout
RESYNC_AT_CLOSE_S = 2.0  # the most shutdown waits for that copy

# One round trip for a lookup: the answer if there is one, else try to take the lease.
# A value of another Redis type under the key (a list, a hash) is no answer: a miss, like foreign bytes, and the
# next answer's plain SET replaces it. (redis.call's WRONGTYPE error failed the whole script, which looked like an
# outage: Redis was then skipped for every key for a cooldown, and the foreign value was never replaced.)
_LOOKUP = """
local value = redis.pcall('GET', KEYS[1])
if type(value) == 'string' then return {1, value, redis.call('PTTL', KEYS[1])} end
if ARGV[1] == '' then return {0, 0} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('DEL', KEYS[3])  -- a new call: an earlier caller's error marker is not about it
  return {0, 1}
end
return {0, 0}
"""
# Claim a call without reading (a refresh's, or one a peer gave up): as the lookup's claim, it clears an earlier
# caller's error marker, which the new holder's waiters would otherwise take for its outcome at their first poll.
_CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
"""
# One round trip to settle a call: store the answer or the error, then release the lease if still ours.
_SETTLE = """
if ARGV[1] ~= '' then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
if ARGV[3] ~= '' then redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4]) end
if redis.pcall('GET', KEYS[2]) == ARGV[5] then redis.call('DEL', KEYS[2]) end
return 1
"""


# Extend the lease only while it is still this holder's (it may have lapsed and been taken by another).
_RENEW = """
if redis.pcall('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
# Copy an answer of a use call kept during an outage, unless Redis holds an answer (a string) by now: one another
# process stored meanwhile is as good, and newer. A value of another type is no answer (SET NX kept it for good).
_COPY = """
if redis.call('TYPE', KEYS[1])['ok'] == 'string' then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
# Errors about one key's value (another process's data of another type), not about Redis: never an outage.
_KEY_ERRORS = frozenset({"WRONGTYPE"})


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
        max_unsynced: int = 10_000,
        near_prefix: str | None = None,
        near_entries: int = 0,
        near_bytes: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        import redis
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.driver_info import DriverInfo
        from redis.maint_notifications import MaintNotificationsConfig

        self.url = redact_url(url)
        password = url_password(url)  # in this closure only, never in an attribute
        self._why: Callable[[BaseException], str] = lambda exc: failure_reason(exc, password)
        self.fallback = fallback
        self.op_timeout_s = op_timeout_s
        self.cooldown_s = cooldown_s
        self._clock = clock
        # No retries inside redis-py: one failure trips our cooldown instead of piling up waits.
        # No socket_timeout either: every operation is bounded by our own asyncio.timeout (_guard, _send,
        # _release), and with one redis-py writes each command under Python 3.11's asyncio.wait_for, which
        # drops a cancellation that lands in the turn the write completes: the cancelled query then went on
        # polling a peer's lease, or called the provider, until its deadline (seen ~1 in 100 cancels).
        # Unless given, redis-py reads its own version from the installed package's metadata (a scan of sys.path,
        # ~0.5 ms, ~7 ms cold, on the loop) for every connection it opens, to name itself to Redis: given once here.
        driver = DriverInfo(lib_version=redis.__version__)
        pool = _waiting_pool_class().from_url(
            url,
            driver_info=driver,
            max_connections=max_connections,
            socket_timeout=None,
            socket_connect_timeout=op_timeout_s,
            health_check_interval=0,
            retry=Retry(NoBackoff(), 0),
            # redis-py 8 skips its check for connections the server closed while "maintenance notifications"
            # are on ("auto", the default, counts): after a Redis restart while idle, each pooled connection
            # then failed its next command, and each failure skipped Redis for a whole cooldown.
            maint_notifications_config=MaintNotificationsConfig(enabled=False),
        )
        self.client: Any = aioredis.Redis.from_pool(pool)  # the client owns the pool and closes it
        self.probe_timeout_s = max(1.0, PROBE_TIMEOUT_FACTOR * op_timeout_s)
        # Its own connection, with the probe's patience; built on first use (the URL may hold a password:
        # it lives in this closure only, never in an attribute a repr or a log could show).
        self._probe_client = lambda: aioredis.Redis.from_url(
            url,
            driver_info=driver,
            socket_timeout=None,  # bounded by _verify's own timeout (see the pool above)
            socket_connect_timeout=self.probe_timeout_s,
            health_check_interval=0,
            retry=Retry(NoBackoff(), 0),
        )
        self._probe: asyncio.Task[None] | None = None
        self._revive: asyncio.Task[None] | None = None  # a PING to end a cooldown early (see _answers_again)
        self.near: NearCache | None = None
        if near_prefix and near_entries > 0 and near_bytes > 0:
            # Only a factory of connections (RESP2: invalidations arrive as messages of a plain subscription).
            tracking = aioredis.ConnectionPool.from_url(
                url,
                driver_info=driver,
                protocol=2,
                socket_timeout=None,  # near.py bounds every read itself; see the pool above for why not here
                socket_connect_timeout=self.probe_timeout_s,
                health_check_interval=0,
                retry=Retry(NoBackoff(), 0),
            )

            async def connect() -> Any:
                conn = tracking.make_connection()
                await conn.connect()
                return conn

            self.near = NearCache(
                connect,
                near_prefix,
                near_entries,
                near_bytes,
                timeout_s=self.probe_timeout_s,
                retry_s=cooldown_s,
            )
        self._lookup = self.client.register_script(_LOOKUP)
        self._settle = self.client.register_script(_SETTLE)
        self._claim = self.client.register_script(_CLAIM)
        self._renew = self.client.register_script(_RENEW)
        self._queued: list[_Queued] = []  # calls waiting for this turn's pipeline
        self._sending: set[asyncio.Task[None]] = set()
        self.round_trips = 0  # lookups and settles sent (each pipeline counts once)
        self._down_until = 0.0
        self.failures = 0
        self.slow = 0  # timeouts after which Redis answered the probe: not an outage
        # Keys changed only in the embedded cache while Redis was skipped or failing (oldest first), and how
        # to copy each: "keep" (SET NX: an answer another process stored meanwhile is as good, and newer),
        # "replace" (a refresh: its answer supersedes the one it replaced) or "delete" (a refresh that could
        # not be stored: the old entry must not outlive it).
        self._unsynced: OrderedDict[str, Literal["keep", "replace", "delete"]] = OrderedDict()
        self._held: set[str] = set()  # tokens of the leases this process took in Redis and has not settled
        self.max_unsynced = max_unsynced
        self._resync_task: asyncio.Task[None] | None = None

    @property
    def unsynced(self) -> int:
        """Answers held only in this process, waiting for Redis to come back."""
        return len(self._unsynced)

    @property
    def healthy(self) -> bool:
        return self._clock() >= self._down_until

    async def get(self, key: str) -> bytes | None:
        if not self.healthy or (self._unsynced and key in self._unsynced):  # see _lookup_unsynced
            return await self.fallback.get(key)
        if self.near is not None and (near := await self.near.get(key)) is not None:
            return near
        value = await self._guard(self.client.get(key))
        return await self.fallback.get(key) if value is _FAILED else value  # type: ignore[return-value]

    async def set(self, key: str, value: bytes, ttl_s: float, *, replace: bool = False) -> None:
        if self.near is not None:
            await self.near.forget(key)
        if not self.healthy:
            await self._keep_local(key, value, ttl_s, replace)
            return
        stored = await self._guard(self.client.set(key, value, px=_px(ttl_s)))
        if stored is _FAILED:
            await self._keep_local(key, value, ttl_s, replace)
        else:
            await self._stored(key)

    async def delete(self, key: str) -> None:
        if self.near is not None:
            await self.near.forget(key)
        await self.fallback.delete(key)
        self._unsynced.pop(key, None)
        if not self.healthy or await self._guard(self.client.delete(key)) is _FAILED:
            self._unsynced[key] = "delete"  # done when Redis answers again (an old entry must not outlive this)
            self._bound_unsynced()

    async def lookup(
        self,
        key: str,
        lease_key: str,
        token: str | None,
        ttl_s: float,
        *,
        patient: bool = False,
        together: bool = True,
    ) -> tuple[bytes | None, bool | None]:
        """The stored value, or (when ``token`` is given) an attempt to take the lease: in one round trip.

        Returns (value, lease taken). ``lease taken`` is None when Redis could not say.

        ``patient`` (a read that must not miss for want of waiting: a replay, where a miss fails the
        model): after a timeout, wait for the probe's verdict and, if Redis is well, read once more
        with the probe's patience. Only without ``token``: a retry must not race its own lease.

        ``together`` (one of several models of a call): batched with this turn's other calls. A lone
        model's lookup is sent at once from the caller's task, saving the batch's two loop turns.

        The near cache answers first; an answer found in Redis is kept there.
        """
        try:
            return await self._read_or_claim(key, lease_key, token, ttl_s, patient, together)
        except asyncio.CancelledError:
            if token is not None:
                self._release_abandoned(lease_key, token)
            raise

    async def _read_or_claim(
        self, key: str, lease_key: str, token: str | None, ttl_s: float, patient: bool, together: bool
    ) -> tuple[bytes | None, bool | None]:
        if not self.healthy:
            local = await self.fallback.get(key)
            # A replay fails the model on a miss, and the cooldown is a guess at how long an outage lasts: Redis
            # may hold the answer and answer again already. Ask it before reporting a miss (what this process
            # changed during the outage is newer than Redis's entry, and needs no asking).
            if local is not None or not patient or token is not None or key in self._unsynced:
                return local, None
            if not await self._answers_again():
                return None, None
        if self._unsynced and key in self._unsynced:
            return await self._lookup_unsynced(key, lease_key, token, ttl_s)
        if self.near is None:
            return (await self._lookup_remote(key, lease_key, token, ttl_s, patient, together))[:2]
        if (near := await self.near.get(key)) is not None:
            return near, False
        read = self.near.begin_read(key)
        value, taken, ttl_left_s = None, None, None
        try:
            value, taken, ttl_left_s = await self._lookup_remote(key, lease_key, token, ttl_s, patient, together)
            return value, taken
        finally:
            await self.near.end_read(read, value, ttl_left_s)

    async def _lookup_unsynced(
        self, key: str, lease_key: str, token: str | None, ttl_s: float
    ) -> tuple[bytes | None, bool | None]:
        """A key changed here during an outage and not copied yet: what this process holds is newer than
        what Redis has (a refresh's answer, or the removal of the entry it replaced) until the copy is made."""
        self._start_resync()  # Redis is deemed well again: make the copy now, whatever else is asked
        if self._unsynced.get(key) != "delete" and (local := await self.fallback.get(key)) is not None:
            return local, False
        if token is None:
            return None, None
        return None, await self.lease(key, lease_key, token, ttl_s)

    async def _lookup_remote(
        self, key: str, lease_key: str, token: str | None, ttl_s: float, patient: bool, together: bool
    ) -> tuple[bytes | None, bool | None, float | None]:
        """:meth:`lookup` in Redis: (value, lease taken, the value's seconds left in Redis if known)."""
        if token is None:  # a plain read: batched into one MGET with the other reads of this turn
            value = await self._guard(self._queue(None, [key], [], together))
            if value is _FAILED and patient and await self._verdict():
                value = await self._guard(self._queue(None, [key], [], together), timeout_s=self.probe_timeout_s)
            if value is _FAILED:
                return await self.fallback.get(key), None, None
            return (value, False, None) if value is not None else (None, None, None)  # type: ignore[return-value]
        lease_ms = _px(ttl_s)
        script_keys = [key, lease_key, key_layout.error_key(key)]
        reply = await self._guard(self._queue(self._lookup, script_keys, [token, lease_ms], together))
        if reply is _FAILED:
            return await self.fallback.get(key), None, None
        if reply[0]:  # type: ignore[index]
            _, payload, ttl_ms = reply  # type: ignore[misc]
            return payload, False, ttl_ms / 1000 if ttl_ms > 0 else None
        if reply[1]:  # type: ignore[index]
            self._held.add(token)
        return None, bool(reply[1]), None  # type: ignore[index]

    async def peer_state(self, key: str) -> tuple[bytes | None, bytes | None, bool]:
        """The answer, the error marker and whether the lease is still held, read at one instant (MGET).

        The holder settles atomically (result stored, lease dropped), so a lease seen gone here means
        its result, if it had one, is seen too. Redis failing: whatever the fallback has, lease gone.
        """
        if not self.healthy:
            return await self.fallback.get(key), None, False
        reply = await self._guard(self.client.mget(key, key_layout.error_key(key), key_layout.lease_key(key)))
        if reply is _FAILED:
            return await self.fallback.get(key), None, False
        value, error, lease = reply  # type: ignore[misc]
        return value, error, lease is not None

    async def settle(
        self,
        key: str,
        value: bytes | None,
        ttl_s: float,
        lease_key: str,
        token: str,
        error_key: str,
        error: bytes | None,
        *,
        replace: bool = False,
    ) -> None:
        """Store the answer (or publish the error briefly) and release the lease if it is still ours."""
        if self.near is not None and value is not None:
            await self.near.forget(key)
        held = token in self._held
        self._held.discard(token)
        if self.healthy:
            args = [value or b"", _px(ttl_s), error or b"", 5000, token]
            if await self._guard(self._queue(self._settle, [key, lease_key, error_key], args)) is not _FAILED:
                if value is not None:
                    await self._stored(key)
                return
        if value is not None:
            await self._keep_local(key, value, ttl_s, replace)
        if held:  # Redis may still take a DEL: a lease left behind would stall other gateways until it expired
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

    def _release_abandoned(self, lease_key: str, token: str) -> None:
        """Its caller was cancelled while the claim was on the wire (or its reply unread): Redis may have
        given it the lease all the same, and nobody would settle it. Left, it would keep every gateway
        asking the same question waiting for an answer nobody makes, until its own deadline."""
        # After the pipelines now in flight: one of them may carry the claim (a lease taken after its
        # release would stay). A claim sent from the caller's task was written before it was cancelled.
        earlier = set(self._sending)
        task = asyncio.get_running_loop().create_task(
            self._release_after(earlier, lease_key, token), name="cache-release"
        )
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _release_after(self, earlier: set[asyncio.Task[None]], lease_key: str, token: str) -> None:
        if earlier:
            await asyncio.wait(earlier)
        self._held.discard(token)
        await self._release(lease_key, token)

    async def lease(self, key: str, lease_key: str, token: str, ttl_s: float) -> bool | None:
        """Take a short lease on the call for ``key`` (cross-process single-flight); None when Redis cannot say."""
        if not self.healthy:
            return None
        try:
            taken = await self._guard(
                self._claim(keys=[lease_key, key_layout.error_key(key)], args=[token, _px(ttl_s)])
            )
        except asyncio.CancelledError:
            self._release_abandoned(lease_key, token)
            raise
        if taken is _FAILED:
            return None
        if taken:
            self._held.add(token)
        return bool(taken)

    async def renew(self, lease_key: str, token: str, ttl_s: float) -> None:
        """Keep a lease this process holds from lapsing while its call runs (see ``ResponseCache.keep_lease``)."""
        if token in self._held and self.healthy:
            await self._guard(self._renew(keys=[lease_key], args=[token, _px(ttl_s)]))

    async def _answers_again(self) -> bool:
        """While Redis is skipped after a failure: whether it answers a PING now, given the probe's patience.

        One PING at a time, shared by every caller asking. An answer ends the cooldown early, for every
        operation; no answer starts it again.
        """
        if self._revive is None:
            self._revive = asyncio.create_task(self._ping_to_revive(), name="cache-revive")
        await asyncio.shield(self._revive)
        return self.healthy

    async def _ping_to_revive(self) -> None:
        from redis.exceptions import RedisError

        client = self._probe_client()
        try:
            async with asyncio.timeout(self.probe_timeout_s):
                await client.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            self._trip(exc)
        else:
            self._down_until = 0.0  # the next operation that succeeds logs the recovery and copies what is held
        finally:
            self._revive = None
            await _close_quietly(client)

    async def _verdict(self) -> bool:
        """Whether Redis is well, once the probe started by a timeout (if any) has decided."""
        if self._probe is not None:
            await asyncio.shield(self._probe)
        return self.healthy

    async def _guard(self, operation: Awaitable[T], timeout_s: float | None = None) -> T | object:
        from redis.exceptions import RedisError, ResponseError

        try:
            async with asyncio.timeout(timeout_s or self.op_timeout_s):
                result = await operation
        except TimeoutError as exc:
            if self._probe is None and self.healthy:
                self._probe = asyncio.create_task(self._verify(exc), name="cache-probe")
            return _FAILED
        except (RedisError, OSError) as exc:
            if not (isinstance(exc, ResponseError) and error_code(exc) in _KEY_ERRORS):
                self._trip(exc)
            return _FAILED
        # An operation sent before a failure may be answered after it (a read, while writes fail for memory): Redis
        # is still left alone until the cooldown ends. Taken for a recovery, it logged one, and the next failure
        # the outage again, every cooldown.
        if self.failures and self.healthy:
            log.warning("redis cache at %s is answering again; using it", self.url)
            self.failures = 0
        self._start_resync()
        return result

    def _start_resync(self) -> None:
        if self._unsynced and self._resync_task is None:
            self._resync_task = asyncio.create_task(self._resync(), name="cache-resync")

    def _queue(self, script: Any | None, keys: list[str], args: list[Any], batch: bool = True) -> Awaitable[Any]:
        """One script call (or, with ``script`` None, a GET of ``keys[0]``), for the pipeline sent at the
        end of this turn of the loop; without ``batch``, sent at once unless calls are already queued
        (which go first: one of them may be the store of the answer this call looks for)."""
        if not batch and not self._queued:
            self.round_trips += 1
            return script(keys=keys, args=args) if script is not None else self.client.get(keys[0])
        loop = asyncio.get_running_loop()
        call = _Queued(script, keys, args, loop.create_future())
        self._queued.append(call)
        if len(self._queued) == 1:
            loop.call_soon(self._send_queued)
        return call.future

    def _send_queued(self) -> None:
        batch, self._queued = self._queued, []
        # Stores first: Redis runs a pipeline in order, so a lookup of the answer just made (the same
        # question asked again at once) finds it rather than the lease, which would make it wait a poll.
        batch.sort(key=lambda call: call.script is not self._settle)
        task = asyncio.get_running_loop().create_task(self._send(batch), name="cache-pipeline")
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_Queued]) -> None:
        """One round trip for the batch; each caller gets its own reply or error.

        Scripts go first (stores before lookups), then every plain read of the batch as one MGET.
        A call whose caller gave up before it was sent (timed out, cancelled) is not sent
        at all: a lease taken for nobody would stall other gateways until it expired.
        """
        batch = [call for call in batch if not call.future.done()]
        if not batch:
            return
        self.round_trips += 1
        scripts = [call for call in batch if call.script is not None]
        reads = [call for call in batch if call.script is None]
        try:
            # Bounded even while waiting for a connection; by the longest patience a caller may have
            # (a replay's re-read): each caller's own timeout applies to it as well.
            async with asyncio.timeout(self.probe_timeout_s):
                replies = await self._round_trip(scripts, reads)
        except Exception as exc:
            for call in batch:
                if not call.future.done():
                    call.future.set_exception(exc)
            return
        except BaseException:  # this task was cancelled (shutdown): so are the calls it carried
            for call in batch:
                call.future.cancel()
            raise
        for call, reply in zip(scripts + reads, replies, strict=True):
            if not call.future.done():
                if isinstance(reply, Exception):
                    call.future.set_exception(reply)
                else:
                    call.future.set_result(reply)

    async def _round_trip(self, scripts: list[_Queued], reads: list[_Queued]) -> list[Any]:
        """The batch's replies in order: scripts (EVALSHA, one pipeline) then each read's value (one MGET)."""
        from redis.exceptions import NoScriptError

        if not scripts:
            replies: list[Any] = await self.client.mget([call.keys[0] for call in reads])
        elif len(scripts) == 1 and not reads:
            call = scripts[0]
            replies = [await call.script(keys=call.keys, args=call.args)]
        else:
            pipe = self.client.pipeline(transaction=False)
            for call in scripts:  # EVALSHA itself: a pipeline given Script objects asks SCRIPT EXISTS first
                pipe.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)
            if reads:
                pipe.mget([call.keys[0] for call in reads])
            out = await pipe.execute(raise_on_error=False)
            replies = out[: len(scripts)]
            for i, (call, reply) in enumerate(zip(scripts, replies, strict=True)):
                if isinstance(reply, NoScriptError):  # Redis restarted or flushed its scripts: load, once each
                    self.round_trips += 1
                    replies[i] = await call.script(keys=call.keys, args=call.args)
            if reads:
                values = out[-1]
                replies += [values] * len(reads) if isinstance(values, Exception) else values
        return replies

    async def _verify(self, cause: TimeoutError) -> None:
        """After a timeout: skip Redis only if it does not answer a PING either."""
        from redis.exceptions import RedisError

        client = self._probe_client()
        try:
            async with asyncio.timeout(self.probe_timeout_s):
                await client.ping()
        except (RedisError, OSError, TimeoutError):
            self._trip(cause)
        else:
            self.slow += 1
            log.debug("a redis operation timed out but redis answers; not treated as an outage")
        finally:
            self._probe = None
            await _close_quietly(client)

    async def _keep_local(self, key: str, value: bytes, ttl_s: float, replace: bool) -> None:
        """Store in the embedded cache, and remember to copy the answer to Redis when it answers."""
        await self.fallback.set(key, value, ttl_s)
        earlier = self._unsynced.pop(key, "keep")
        self._unsynced[key] = "replace" if replace or earlier != "keep" else "keep"
        self._bound_unsynced()

    def _bound_unsynced(self) -> None:
        while len(self._unsynced) > self.max_unsynced:  # bounded: the oldest stay local only
            self._unsynced.popitem(last=False)

    async def _stored(self, key: str) -> None:
        """An answer is in Redis now: a copy this process kept during an outage is superseded, and must be
        neither copied over it later nor served in the next outage."""
        self._unsynced.pop(key, None)
        await self.fallback.delete(key)

    async def _resync(self, patience_s: float | None = None) -> None:
        """Copy what changed locally to Redis, in pipelined batches, until done or Redis fails again; each batch
        waits ``patience_s`` for Redis's reply (the operation timeout if None).

        An answer of a ``use`` call is copied with ``NX``: one another process stored meanwhile is as good, and
        newer; keep it. A refresh's answer overwrites (it was made to replace the entry), and a refresh that
        could not be stored deletes the entry it was made to replace.
        """
        try:
            while self._unsynced and self.healthy:
                batch: list[tuple[str, Literal["keep", "replace", "delete"], bytes, float]] = []
                size = 0
                while self._unsynced and len(batch) < RESYNC_BATCH and size < RESYNC_BATCH_BYTES:
                    key, how = self._unsynced.popitem(last=False)
                    if how == "delete":
                        batch.append((key, how, b"", 0.0))
                    elif (entry := self.fallback.entry(key)) is not None:  # evicted or expired: nothing to copy
                        batch.append((key, how, *entry))
                        size += len(entry[0])
                if not batch:
                    continue
                pipe = self.client.pipeline(transaction=False)
                for key, how, value, left_s in batch:
                    if how == "delete":
                        pipe.delete(key)
                    elif how == "keep":  # EVAL, not EVALSHA: Redis may have restarted without its scripts
                        pipe.eval(_COPY, 1, key, value, _px(left_s))
                    else:
                        pipe.set(key, value, px=_px(left_s))
                copied = False
                try:
                    copied = await self._guard(pipe.execute(), patience_s) is not _FAILED
                finally:  # also when cancelled (shutdown's wait ended): the batch is still not copied
                    if not copied:
                        for key, how, _, _ in batch:  # try again after the next recovery
                            self._unsynced.setdefault(key, how)
                if not copied:
                    return
                log.debug("copied %d answers kept locally to redis", len(batch))
                for key, _, value, _ in batch:
                    # Redis holds this answer now, or a newer one another process stored: the local copy would
                    # come back in the next outage and undo whatever replaced it in Redis meanwhile (a refresh).
                    # Unless this process changed the key again while the copy was on the wire.
                    entry = self.fallback.entry(key)
                    if entry is not None and entry[0] is value and key not in self._unsynced:
                        await self.fallback.delete(key)
        finally:
            self._resync_task = None

    def _trip(self, exc: BaseException) -> None:
        if self.failures == 0:  # once per outage, not once per call
            log.warning(
                "redis cache at %s failed (%s); serving from the embedded cache for %gs at a time until it answers",
                self.url,
                self._why(exc),
                self.cooldown_s,
            )
        self.failures += 1
        self._down_until = self._clock() + self.cooldown_s
        if self.near is not None:  # not consulted until Redis answers again; start afresh then
            self.near.clear()

    async def aclose(self) -> None:
        """Copy what is still held locally (one try, even in a cooldown: a batch that ended during a
        brief outage should still leave its answers in the shared cache), then close.

        The try waits for Redis's reply as long as shutdown may wait, not one operation timeout: a Redis that
        is busy or paused for a moment (a restart loading its data, CLIENT PAUSE, a failover) kept every
        answer of a run that ended then, and a replay missed them all. One that refuses connections fails at once.
        """
        try:
            async with asyncio.timeout(RESYNC_AT_CLOSE_S):
                if self._resync_task is not None:
                    await self._resync_task
                if self._unsynced:
                    self._down_until = 0.0
                    await self._resync(patience_s=RESYNC_AT_CLOSE_S)  # the window above bounds the whole copy
        except TimeoutError:
            pass
        if self._unsynced:  # the outage was logged when it began; this is what it cost, shown by default too
            log.warning(
                "redis cache at %s did not take %d answer(s) at shutdown; they were kept in this process only (other "
                "processes, and a later --cache only replay, will not find them)",
                self.url,
                self.unsynced,
            )
        if self._sending:
            await asyncio.wait(set(self._sending), timeout=self.op_timeout_s)
        for task in (self._probe, self._revive):
            if task is not None:
                task.cancel()
                await asyncio.wait([task])
        if self.near is not None:
            await self.near.aclose()
        await _close_quietly(self.client)


def failure_reason(exc: BaseException, password: str | None) -> str:
    """An error's type and, if it has them, Redis's words: a wrong password or database number says which
    ("AuthenticationError" alone read like an outage). Never the password, should a message echo it."""
    text = redact(str(exc), (password,) if password else ())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


async def _close_quietly(client: Any) -> None:
    try:
        await client.aclose()
    except Exception:  # closing a dead connection must not fail shutdown
        log.debug("redis close failed", exc_info=False)


_FAILED = object()


def _px(seconds: float) -> int:
    """A TTL in whole milliseconds for PX: at least 1, since Redis refuses 0 ("invalid expire time")."""
    return max(1, int(seconds * 1000))


@functools.cache
def _waiting_pool_class() -> type[Any]:
    """redis-py's pool, except that past ``max_connections`` a command waits for a free connection.

    redis-py's default pool raises at once there, which looked like an outage under load. Its
    ``BlockingConnectionPool`` waits, but under an ``asyncio.Condition`` taken on every get and
    release: ~9 µs per command, measured, of a ~78 µs GET. A semaphore's free path costs ~1 µs.
    A wait is bounded by the caller's operation timeout (``_guard``); one that outlasts it is a
    plain ``TimeoutError`` there (load, checked by the probe), not a Redis error (an outage).
    """
    import redis.asyncio as aioredis

    class WaitingConnectionPool(aioredis.ConnectionPool):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._slots = asyncio.Semaphore(self.max_connections)
            # The connections handed out, each holding a slot. redis-py releases a connection it took but could
            # not set up (refused, timed out) itself, through release() below: freeing the slot there and again
            # in get_connection gave one slot too many per failed connect, until, past max_connections in
            # flight, redis-py raised "Too many connections" and a healthy Redis was left alone as if down.
            self._holding: set[Any] = set()

        async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
            await self._slots.acquire()
            try:
                connection = await super().get_connection(*args, **kwargs)
            except BaseException:
                self._slots.release()
                raise
            self._holding.add(connection)
            return connection

        async def release(self, connection: Any) -> None:
            try:
                await super().release(connection)
            finally:
                if connection in self._holding:
                    self._holding.discard(connection)
                    self._slots.release()

    return WaitingConnectionPool


@dataclass(frozen=True, slots=True)
class _Queued:
    script: Any | None  # redis-py's AsyncScript, or None for a plain read (GET keys[0])
    keys: list[str]
    args: list[Any]
    future: asyncio.Future[Any]
