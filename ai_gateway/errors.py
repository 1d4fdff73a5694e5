"""The one error tree of the gateway (part of the public plugin contract).

::

    GatewayError                      code            retryable  trips breaker
    ├── ProviderError                 (what an upstream said or did)
    │   ├── TransientError                            yes        yes
    │   │   ├── RateLimited           rate_limited                   (only a per-model circuit)
    │   │   ├── Overloaded            overloaded
    │   │   ├── UpstreamError         upstream_error
    │   │   ├── ProviderTimeout       timeout
    │   │   ├── ConnectFailed         connect
    │   │   └── MalformedResponse     malformed_response
    │   └── PermanentError                            no         no
    │       ├── BadRequest            bad_request
    │       ├── ContextLengthExceeded context_length
    │       ├── UnusableAnswer                                      (an answer billed but none: ``completion``)
    │       │   ├── ContentFiltered   content_filtered
    │       │   └── EmptyResponse     empty_response
    │       ├── AuthError             auth
    │       ├── NotFound              not_found
    │       └── QuotaExhausted        quota_exhausted              yes
    ├── Cancelled                     cancelled       no         no
    ├── DeadlineExceeded              deadline        no         no
    ├── CircuitOpen                   circuit_open    no         no
    ├── LoadShed                      overloaded      no         no   (the gateway's own limit)
    ├── CacheMiss                     cache_miss      no         no   (cache "only": no provider called)
    ├── InvalidArgument               invalid_argument
    └── InternalError                 internal        no         no

Adapters map every vendor failure onto exactly one of these at one boundary
(``raise ... from exc``). Retry and breaker code reads only ``retryable`` and
``trips_breaker``, never a vendor name. Messages must never carry an API key;
the adapter base redacts its own key before an error leaves it.
"""

from __future__ import annotations

import email.utils
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from ai_gateway.types import Completion


class ErrorCode(StrEnum):
    RATE_LIMITED = "rate_limited"
    QUOTA_EXHAUSTED = "quota_exhausted"
    OVERLOADED = "overloaded"
    UPSTREAM_ERROR = "upstream_error"
    TIMEOUT = "timeout"
    CONNECT = "connect"
    MALFORMED_RESPONSE = "malformed_response"
    BAD_REQUEST = "bad_request"
    CONTEXT_LENGTH = "context_length"
    CONTENT_FILTERED = "content_filtered"
    EMPTY_RESPONSE = "empty_response"
    AUTH = "auth"
    NOT_FOUND = "not_found"
    CANCELLED = "cancelled"
    DEADLINE = "deadline"
    CIRCUIT_OPEN = "circuit_open"
    CACHE_MISS = "cache_miss"
    INVALID_ARGUMENT = "invalid_argument"
    INTERNAL = "internal"


class GatewayError(Exception):
    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL
    retryable: ClassVar[bool] = False
    trips_breaker: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.status = status
        self.retry_after_s = retry_after_s
        # Why the gateway did not retry a retryable error (e.g. "retry budget exhausted").
        self.not_retried: str | None = None
        # The reason was the caller's alone (its strategy could fail over, its deadline was near): a caller sharing
        # this call, with nowhere to fail over or more time, would have retried, so it is not given this error.
        self.not_retried_for_caller = False

    def to_dict(self) -> dict[str, Any]:
        """The error as a caller sees it: code, message and the facts needed to act."""
        out: dict[str, Any] = {"code": str(self.code), "message": self.message}
        if self.provider is not None:
            out["provider"] = self.provider
        if self.status is not None:
            out["status"] = self.status
        if self.retry_after_s is not None:
            out["retry_after_s"] = round(self.retry_after_s, 3)
        if self.not_retried is not None:
            out["not_retried"] = self.not_retried
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!s}, message={self.message!r})"


class ProviderError(GatewayError):
    """Anything an upstream provider said or did."""


class TransientError(ProviderError):
    retryable = True
    trips_breaker = True


class RateLimited(TransientError):
    code = ErrorCode.RATE_LIMITED


class Overloaded(TransientError):
    code = ErrorCode.OVERLOADED


class UpstreamError(TransientError):
    code = ErrorCode.UPSTREAM_ERROR


class ProviderTimeout(TransientError):
    code = ErrorCode.TIMEOUT


class ConnectFailed(TransientError):
    code = ErrorCode.CONNECT


class MalformedResponse(TransientError):
    code = ErrorCode.MALFORMED_RESPONSE


class PermanentError(ProviderError):
    retryable = False
    trips_breaker = False


class BadRequest(PermanentError):
    code = ErrorCode.BAD_REQUEST


class ContextLengthExceeded(PermanentError):
    code = ErrorCode.CONTEXT_LENGTH


class UnusableAnswer(PermanentError):
    """The provider answered, and billed the answer, but it is none: ``completion`` keeps what it did send (its
    finish reason and the usage billed), so the call's tokens and cost are still reported."""

    def __init__(self, message: str, *, completion: Completion | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.completion = completion


class ContentFiltered(UnusableAnswer):
    code = ErrorCode.CONTENT_FILTERED


class EmptyResponse(UnusableAnswer):
    """No text: a reasoning model given a small max_tokens spends them all thinking and finishes with "length"."""

    code = ErrorCode.EMPTY_RESPONSE


class AuthError(PermanentError):
    code = ErrorCode.AUTH


class NotFound(PermanentError):
    code = ErrorCode.NOT_FOUND


class QuotaExhausted(PermanentError):
    """Billing or spend limit reached: retrying cannot help, but every call will fail."""

    code = ErrorCode.QUOTA_EXHAUSTED
    trips_breaker = True


class Cancelled(GatewayError):
    code = ErrorCode.CANCELLED


class DeadlineExceeded(GatewayError):
    code = ErrorCode.DEADLINE


class CircuitOpen(GatewayError):
    """The provider's circuit is open: refused without calling it. ``retry_after_s`` is the time to the next probe."""

    code = ErrorCode.CIRCUIT_OPEN


class LoadShed(GatewayError):
    """The gateway's own concurrency limit is full: refused at once rather than queued into the deadline."""

    code = ErrorCode.OVERLOADED


class CacheMiss(GatewayError):
    """``cache: only`` and the answer is not in the cache; no provider was called."""

    code = ErrorCode.CACHE_MISS


class InvalidArgument(GatewayError):
    """A caller's argument is wrong; ``field`` names it and the message says what is allowed."""

    code = ErrorCode.INVALID_ARGUMENT

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.detail = message  # without the field: for a caller that names it its own way (a CLI option)


class InternalError(GatewayError):
    code = ErrorCode.INTERNAL


def _with_codes(cls: type[ProviderError]) -> list[type[ProviderError]]:
    """``cls`` and its subclasses that set a code of their own (TransientError, UnusableAnswer... set none)."""
    own = [cls] if "code" in vars(cls) else []
    return own + [found for sub in cls.__subclasses__() for found in _with_codes(sub)]


# Each provider error of this module by its code (unique among them). An error known only by its code (another
# gateway process's, published beside the cache; the mock adapter's fail:<code>) is rebuilt as its class, so its
# retryable, trips_breaker and isinstance checks hold as they did where it was raised.
PROVIDER_ERRORS: Mapping[str, type[ProviderError]] = MappingProxyType(
    {cls.code.value: cls for cls in _with_codes(ProviderError)}
)


def error_for_status(status: int, message: str, **kwargs: Any) -> ProviderError:
    """The default mapping of an HTTP status onto the tree; adapters refine it from the body."""
    if status == 429:
        return RateLimited(message, status=status, **kwargs)
    if status == 402:  # "payment required": out of credits on most hosts
        return QuotaExhausted(message, status=status, **kwargs)
    if status in (401, 403):
        return AuthError(message, status=status, **kwargs)
    if status == 404:
        return NotFound(message, status=status, **kwargs)
    if status == 413:
        return ContextLengthExceeded(message, status=status, **kwargs)
    if status in (408, 504):
        return ProviderTimeout(message, status=status, **kwargs)
    if status in (503, 529):
        return Overloaded(message, status=status, **kwargs)
    if status >= 500:
        return UpstreamError(message, status=status, **kwargs)
    return BadRequest(message, status=status, **kwargs)


def parse_retry_after(headers: Mapping[str, str], *, now: datetime | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP date).

    Malformed, negative or non-finite values are ignored (None); an HTTP date in
    the past means 0. ``headers`` must be case-insensitive (httpx.Headers is).
    """
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            ms = float(raw_ms)
        except ValueError:
            ms = math.nan
        if math.isfinite(ms) and ms >= 0:
            return ms / 1000.0
    raw = headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
