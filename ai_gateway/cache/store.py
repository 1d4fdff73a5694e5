"""When a model call may read or write the cache, and how identical concurrent calls share one.

- ``use`` reads then writes, ``refresh`` only writes, ``bypass`` does neither,
  ``only`` reads and never calls a provider (a miss is the ``cache_miss`` error).
- A request with a temperature above 0 is sampled: it is cached only when the
  caller gives a ``sample`` index, so samples 0..k-1 are k distinct entries.
- Only complete answers are stored: non-empty, not refused by a content
  filter, not an unknown finish; never errors, timeouts or cancellations.
  An answer larger than ``max_entry_bytes`` is served but not stored.
- Writes happen off the response path, as tasks flushed at shutdown. Until
  its write is done, an answer being stored is served from here, so the same
  question asked again at once does not miss (and call the provider again).
- Identical concurrent calls in this process make one provider call: the
  first caller makes it, in its own task, and the others wait for its result.
  If the first caller is cancelled, one of the others takes over and calls the
  provider itself, so they still get an answer and nothing runs detached.
- Across processes sharing Redis, the caller that makes the call first takes
  a short lease on the key; the others poll for its answer (or for its error,
  published briefly under a separate key, so they fail alike and nothing is
  cached) and call the provider themselves only if the lease lapses. An answer
  that may not be stored (too large, a content filter's text, an unknown
  finish) is handed over the same way, under the error's key, briefly.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, TypeVar, get_args, runtime_checkable

from ai_gateway.cache.envelope import decode, encode
from ai_gateway.cache.key import cache_key, error_key, lease_key
from ai_gateway.errors import ErrorCode
from ai_gateway.types import ChatRequest, Completion, FinishReason

log = logging.getLogger(__name__)

CacheMode = Literal["use", "refresh", "bypass", "only"]
CACHE_MODES: tuple[CacheMode, ...] = get_args(CacheMode)
STORABLE = frozenset({FinishReason.STOP, FinishReason.LENGTH, FinishReason.TOOL_CALLS})
T = TypeVar("T")
_FINISH_REASONS = frozenset(str(reason) for reason in FinishReason)
_LEADER_GONE = object()  # the first caller was cancelled: someone else must make the call
# What a lease holder tells its waiters when its answer may not be stored and is too large to hand over:
# each of them calls the provider itself, all at once, where taking the lease in turn made them call one by one.
UNSHARED = "unshared"
_UNSHARED_MARKER = json.dumps({UNSHARED: True}).encode()
# The largest unstored answer handed over to waiting processes (or max_entry_bytes, if larger): a marker lives
# 5 s, and one SET of this size stays well inside a cache operation's timeout.
HANDOFF_MAX_BYTES = 1 << 20


class Backend(Protocol):
    name: str

    async def get(self, key: str) -> bytes | None: ...
    async def set(self, key: str, value: bytes, ttl_s: float, *, replace: bool = False) -> None: ...
    async def delete(self, key: str) -> None: ...
    async def aclose(self) -> None: ...


@runtime_checkable
class SharedBackend(Backend, Protocol):
    """A backend other gateway processes share (Redis): a lease and a hand-over coordinate their calls.

    The embedded cache is not one: nobody outside this process waits on it.
    """

    async def lookup(
        self, key: str, lease_key: str, token: str | None, ttl_s: float, *, patient: bool = False, together: bool = True
    ) -> tuple[bytes | None, bool | None]: ...
    async def lease(self, key: str, lease_key: str, token: str, ttl_s: float) -> bool | None: ...
    async def renew(self, lease_key: str, token: str, ttl_s: float) -> None: ...
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
    ) -> None: ...
    async def peer_state(self, key: str) -> tuple[bytes | None, bytes | None, bool]: ...


LEASE_POLL_S = 0.025
# A lease lives this long unless its holder renews it (every third of it, while its call runs): a holder that
# died or froze holds the others up this long at most, where a lease as long as its call's deadline held them
# up to that whole deadline.
LEASE_TTL_S = 6.0
LEASE_RENEW_S = LEASE_TTL_S / 3


@dataclass(frozen=True, slots=True)
class PeerFailure:
    """The error another process got for the same call (published so its waiters fail alike)."""

    code: str
    message: str
    status: int | None = None  # the HTTP status the provider answered, if any
    retry_after_s: float | None = None  # how long the provider asked to wait, as it said it
    # An empty answer's finish reason ("length": a reasoning model spent the limit thinking): its waiters report
    # why, as the caller that made the call does. Its usage is not published: the provider billed it once.
    finish_reason: str | None = None


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """What one tool call asked of the cache."""

    mode: CacheMode = "use"
    sample: int | None = None
    # Several models: their lookups share one round trip and their answers arrive together, so a
    # replayed consensus decides on the same answers every time. A lone model's lookup goes at once.
    together: bool = False

    @property
    def reads(self) -> bool:
        return self.mode in ("use", "only")

    @property
    def writes(self) -> bool:
        return self.mode in ("use", "refresh")


@dataclass(slots=True)
class CacheStats:
    hits: int = 0
    misses: int = 0
    writes: int = 0
    not_stored: int = 0
    coalesced: int = 0
    peer_waits: int = 0  # calls that waited on another process's lease (await_peer), since start
    peer_waits_in_flight: int = 0  # ... and those waiting now


@dataclass
class ResponseCache:
    backend: Backend
    namespace: str = "aigw"
    ttl_s: float = 86400.0
    max_entry_bytes: int = 262144
    stats: CacheStats = field(default_factory=CacheStats)
    _flights: dict[tuple[CacheMode, str], asyncio.Future[object]] = field(default_factory=dict)
    _writes: set[asyncio.Task[None]] = field(default_factory=set)
    _settling: dict[str, Completion] = field(default_factory=dict)  # answers whose write is under way
    _shared: SharedBackend | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self._shared = self.backend if isinstance(self.backend, SharedBackend) else None

    def key_for(
        self,
        provider: str,
        base_url: str,
        model: str,
        request: ChatRequest,
        policy: CachePolicy,
        options: Mapping[str, Any],
    ) -> str | None:
        """The entry for this call, or None when it must not touch the cache.

        ``options`` are the provider's options that can change an answer (``Adapter.cache_options``).
        """
        if policy.mode == "bypass":
            return None
        if request.temperature is not None and request.temperature > 0 and policy.sample is None:
            return None  # independent samples must stay independent
        return cache_key(self.namespace, provider, base_url, model, request, policy.sample, options)

    async def lookup(
        self, key: str, *, read: bool, claim: bool, lease_ttl_s: float, patient: bool = False, together: bool = True
    ) -> tuple[Completion | None, str | None]:
        """Read the entry and/or claim the call, in one round trip where the backend allows.

        Returns (answer, lease). A lease of None after a miss means another caller holds
        the call (in this process or another); when not claiming, it is always None.
        """
        if read and (settling := self._settling.get(key)) is not None:
            self.stats.hits += 1
            return settling, None
        shared = self._shared
        if shared is None:  # the embedded cache: nobody outside this process to coordinate with
            hit = await self.read(key) if read else None
            return hit, (uuid.uuid4().hex if hit is None and claim else None)  # a token only for a call to make
        token = uuid.uuid4().hex if claim else None  # sent with the read: Redis takes the lease on a miss
        raw, taken = (
            await shared.lookup(key, lease_key(key), token, lease_ttl_s, patient=patient, together=together)
            if read
            else (None, None)
        )
        if not read and token is not None:
            taken = await shared.lease(key, lease_key(key), token, lease_ttl_s)
        completion = decode(raw) if raw is not None else None
        if read:
            if completion is not None:
                self.stats.hits += 1
                return completion, None
            self.stats.misses += 1
            if raw is not None and token is not None:  # corrupt or foreign bytes, which Redis took for an answer
                taken = await shared.lease(key, lease_key(key), token, lease_ttl_s)
        # taken None: Redis could not say (it is failing): make the call ourselves rather than wait.
        return None, (token if taken is None or taken else None)

    async def peek(self, key: str) -> Completion | None:
        """The entry, claiming nothing; read in this turn's pipeline with the other models' reads.

        Counts a hit only: a miss is counted by the lookup of the call that follows it.
        """
        if (settling := self._settling.get(key)) is not None:
            self.stats.hits += 1
            return settling
        if self._shared is None:
            raw = await self.backend.get(key)
        else:
            raw, _ = await self._shared.lookup(key, lease_key(key), None, 0.0, together=True)
        completion = decode(raw) if raw is not None else None
        if completion is not None:
            self.stats.hits += 1
        return completion

    async def read(self, key: str) -> Completion | None:
        raw = await self.backend.get(key)
        completion = decode(raw) if raw is not None else None
        if completion is None:
            self.stats.misses += 1  # absent, or corrupt / foreign bytes: replaced on the next write
            return None
        self.stats.hits += 1
        return completion

    def store_later(
        self,
        key: str,
        completion: Completion | None,
        lease: str | None = None,
        failure: PeerFailure | None = None,
        *,
        replace: bool = False,
    ) -> None:
        """Off the response path: store the answer (if it may be stored), then settle the lease.

        With ``replace`` (a refresh), an answer that cannot be stored removes the old entry,
        so the next read does not serve what the caller asked to refresh. With a lease, an answer that
        cannot be stored is handed over to the processes waiting on it (``await_peer``), or if too large,
        they are told to call themselves: left to find the lease gone, they took it one after another.
        """
        value = None
        marker = None if failure is None else json.dumps(asdict(failure)).encode()
        if completion is not None:
            storable = completion.finish_reason in STORABLE and bool(completion.text.strip())
            encoded = encode(completion) if storable or lease is not None else None
            if storable and encoded is not None and len(encoded) <= self.max_entry_bytes:
                value = encoded
            else:
                self.stats.not_stored += 1
                if encoded is not None and completion.text.strip():
                    fits = len(encoded) <= max(HANDOFF_MAX_BYTES, self.max_entry_bytes)
                    marker = encoded if fits else _UNSHARED_MARKER
        if value is None and replace:
            self._settling.pop(key, None)
            task = asyncio.create_task(self.backend.delete(key), name="cache-drop")
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)
        if value is None and lease is None:
            return
        task = asyncio.create_task(self._store(key, value, lease, marker, replace), name="cache-write")
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        if value is not None and completion is not None:
            # Readable at once: the task runs only once the loop turns, and a caller asking the same
            # question right after this answer (awaiting nothing that suspends) would miss it.
            self._settling[key] = completion
            task.add_done_callback(lambda _: self._settled(key, completion))

    def keep_lease(self, key: str, lease: str) -> Callable[[], None]:
        """Renew the lease on ``key`` while its call runs; returns what stops the renewals.

        A timer, not a task: most calls end before the first renewal is due, and pay nothing for it.
        """
        if self._shared is None:  # the embedded cache: no other process waits on it
            return _nothing
        renew = self._shared.renew
        loop = asyncio.get_running_loop()

        def tick() -> None:
            nonlocal handle
            task = loop.create_task(renew(lease_key(key), lease, LEASE_TTL_S), name="cache-lease-renew")
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)
            handle = loop.call_later(LEASE_RENEW_S, tick)

        handle = loop.call_later(LEASE_RENEW_S, tick)
        return lambda: handle.cancel()

    def _settled(self, key: str, completion: Completion) -> None:
        if self._settling.get(key) is completion:  # not a newer answer stored since
            del self._settling[key]

    async def _store(
        self, key: str, value: bytes | None, lease: str | None, marker: bytes | None, replace: bool
    ) -> None:
        try:
            if lease is not None and self._shared is not None:
                await self._shared.settle(
                    key, value, self.ttl_s, lease_key(key), lease, error_key(key), marker, replace=replace
                )
                self.stats.writes += value is not None
                return
            if value is not None:
                await self.backend.set(key, value, self.ttl_s, replace=replace)
                self.stats.writes += 1
        except Exception as exc:  # a cache write must never fail a call, even after it answered
            log.warning("cache write failed (%s)", type(exc).__name__)

    async def shared(
        self, key: str, mode: CacheMode, call: Callable[[], Awaitable[T]], gone: Callable[[T], bool]
    ) -> tuple[T, bool]:
        """Run ``call`` once for all concurrent callers of ``key`` with the same cache ``mode`` in this process.

        Returns the result and whether this caller made the call. ``gone(result)``
        says the first caller's result does not count for the others (its own
        cancellation or deadline): one of them then makes the call again.
        Callers with other modes never share: an ``only`` call's cache miss is no answer for a
        ``use`` call, which may ask the provider, and a ``refresh`` must not get the entry it replaces.
        """
        slot = (mode, key)
        while (flight := self._flights.get(slot)) is not None:
            self.stats.coalesced += 1
            result = await asyncio.shield(flight)
            if result is not _LEADER_GONE:
                return result, False  # type: ignore[return-value]
        flight = self._flights[slot] = asyncio.get_running_loop().create_future()
        outcome: object = _LEADER_GONE
        try:
            outcome = await call()
            return outcome, True  # type: ignore[return-value]
        finally:
            self._flights.pop(slot, None)
            usable = outcome is not _LEADER_GONE and not gone(outcome)  # type: ignore[arg-type]
            flight.set_result(outcome if usable else _LEADER_GONE)

    # -- across processes (Redis only) ---------------------------------------------------

    async def await_peer(
        self, key: str, give_up_s: float, *, replacing: bool = False
    ) -> Completion | PeerFailure | Literal["unshared"] | None:
        """Wait for the process holding the lease: its answer, its error, or None when the lease lapsed.

        ``UNSHARED``: its answer may not be stored and was too large to hand over; call the provider, claiming nothing.

        ``replacing`` (a refresh): the entry there before the wait is what the caller asked to replace, never
        its answer; only one stored after it is (or the holder's error).
        """
        loop = asyncio.get_running_loop()
        stop_at = loop.time() + max(give_up_s, 0.0)
        self.stats.peer_waits += 1
        self.stats.peer_waits_in_flight += 1
        try:
            shared = self._shared
            old = (await shared.peer_state(key))[0] if replacing and shared is not None else None
            while shared is not None and loop.time() < stop_at:
                await asyncio.sleep(LEASE_POLL_S)
                # One snapshot of all three keys: read one by one, the holder's settle (answer stored and
                # lease dropped at once) could land between the reads and look like a holder that gave up.
                raw, failure, leased = await shared.peer_state(key)
                if raw is not None and raw != old and (completion := decode(raw)) is not None:
                    self.stats.hits += 1
                    return completion
                if failure is not None:
                    if (handed := decode(failure)) is not None:  # an answer that may not be stored, handed over
                        self.stats.hits += 1
                        return handed
                    try:
                        data = json.loads(failure)
                        if isinstance(data, dict) and data.get(UNSHARED) is True:
                            return UNSHARED
                        status, retry_after_s = data.get("status"), data.get("retry_after_s")
                        finish_reason = data.get("finish_reason")
                        if not isinstance(finish_reason, str) or finish_reason not in _FINISH_REASONS:
                            finish_reason = None  # one this gateway does not know: the error still holds
                        return PeerFailure(
                            str(ErrorCode(data["code"])),
                            str(data["message"]),
                            status if isinstance(status, int) and not isinstance(status, bool) else None,
                            float(retry_after_s) if _a_number(retry_after_s) else None,
                            finish_reason,
                        )
                    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
                        return None  # an unknown or garbled marker: make the call ourselves
                if not leased:
                    return None  # the holder gave up (cancelled, crashed) without an answer: call ourselves
            return None
        finally:
            self.stats.peer_waits_in_flight -= 1

    async def flush(self) -> None:
        """Wait for the writes under way (tests, shutdown)."""
        if self._writes:
            await asyncio.wait(set(self._writes), timeout=2.0)

    async def aclose(self) -> None:
        await self.flush()
        await self.backend.aclose()


def _a_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _nothing() -> None:
    pass
