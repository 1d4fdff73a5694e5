"""The adapter base class and provider description: the contract every plugin implements.

An adapter speaks one API dialect. It is three pure functions of their inputs
(build the request, parse the response, classify an error) plus one shared I/O
step here in the base class. Where to reach a provider and how to authenticate
is data (:class:`ProviderSpec`), so an OpenAI-compatible host is a row, not code.

Plugins import only this module, :mod:`ai_gateway.types`, :mod:`ai_gateway.errors`
and :mod:`ai_gateway.secrets`. Cross-cutting concerns (deadline, retries,
breakers, cache, cost) belong to the core and never appear in an adapter.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from ai_gateway.errors import (
    BadRequest,
    ConnectFailed,
    GatewayError,
    MalformedResponse,
    ProviderError,
    ProviderTimeout,
    UpstreamError,
    error_for_status,
    parse_retry_after,
)
from ai_gateway.secrets import Secret, credentials_in, redact_cut
from ai_gateway.types import ChatRequest, Completion

if TYPE_CHECKING:
    import httpx

__all__ = [
    "Adapter",
    "HttpRequest",
    "ProviderConfig",
    "ProviderSpec",
    "Secret",
    "error_message_from_body",
]


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """Where and how to reach one provider; the dialect is ``adapter``.

    ``api_key_env`` and ``base_url_env`` list environment variables in order of
    preference (``GOOGLE_API_KEY`` before ``GEMINI_API_KEY``, as Google orders them). ``options`` are
    dialect knobs the adapter reads from its config (never secrets).
    """

    name: str
    adapter: type[Adapter]
    base_url: str | None
    api_key_env: tuple[str, ...] = ()
    base_url_env: tuple[str, ...] = ()
    key_required: bool = True
    description: str = ""
    example_models: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    # "model" where a provider's models fail independently (aggregators route each model to
    # a different backend): then each model gets its own circuit breaker.
    breaker_scope: Literal["provider", "model"] = "provider"
    # Where the core finds this provider's prices: a provider id of the genai-prices table
    # ("openai", "google", ...). None: prices unknown (local servers), unless the user sets
    # AI_GATEWAY_MODEL_PRICES. Only data: the core computes cost, an adapter never does.
    price_source: str | None = None
    # How a value of a base_url_env variable becomes the base URL, for a variable people write otherwise (Ollama's
    # OLLAMA_HOST is a bind address: "localhost:11434"). A variable's URL must start with http:// or https://.
    normalise_base_url: Callable[[str], str] | None = None

    def __post_init__(self) -> None:
        # api_key_env="X_API_KEY" was read as a tuple of its letters: "_", "X"... named variables of the shell
        # ($_, a one-letter $T), and one of their values was sent as the key, to the wrong host.
        for name in ("api_key_env", "base_url_env"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(var, str) for var in value):
                raise TypeError(f"ProviderSpec.{name} must be a tuple of variable names, e.g. ({value!r},)")


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """One provider resolved against the environment: a name, an endpoint and a key."""

    name: str
    base_url: str
    api_key: Secret | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    # Set for a host declared in settings, whose name does not say which API it speaks: the same question through
    # another dialect is another request, so it joins the cache key (a built-in's name implies its dialect).
    dialect: str | None = None

    def credentials(self) -> tuple[str, ...]:
        """What must never show in an error: the key, and any credential in the options (an ``api-key`` header) or
        the base URL (Azure's ``?api-key=``)."""
        key = (self.api_key.reveal(),) if self.api_key else ()
        return (*key, *credentials_in(self.options), *credentials_in(self.base_url))

    def url(self, path: str) -> str:
        """``path`` under the base URL, before any query it carries (Azure's ``?api-version=``)."""
        base, mark, query = self.base_url.partition("?")
        return f"{base.rstrip('/')}{path}{mark}{query}"


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    url: str
    headers: Mapping[str, str]
    json: Mapping[str, Any]


class Adapter(ABC):
    """Base class of every dialect. Subclasses implement the three pure methods."""

    dialect: ClassVar[str]
    # Options that cannot change an answer, or may carry a credential (a header): kept out of the cache key.
    # Every other option joins the key, so changing one (a default max_tokens, say) never serves an
    # answer made under its old value.
    options_outside_cache_key: ClassVar[frozenset[str]] = frozenset()
    # The highest temperature the API accepts (Anthropic's is 1): a caller asking for more is told before any call,
    # naming the field, instead of every model of the dialect failing with the vendor's 400.
    max_temperature: ClassVar[float] = 2.0

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config

    def cache_options(self) -> Mapping[str, Any]:
        """The options that join the cache key: all but ``options_outside_cache_key`` and any holding a credential
        (a custom host's headers, whatever its dialect): a key never joins the cache key, not even hashed."""
        outside = self.options_outside_cache_key
        options = {
            name: value
            for name, value in self.config.options.items()
            if name not in outside and not credentials_in({name: value})
        }
        if self.config.dialect is not None:
            options["dialect"] = self.config.dialect
        return options

    # -- the three pure functions -------------------------------------------------

    @abstractmethod
    def build_request(self, request: ChatRequest, model: str) -> HttpRequest:
        """The vendor's HTTP request for ``request`` sent to ``model``."""

    @abstractmethod
    def parse_response(self, body: Any, model: str) -> Completion:
        """A normalised completion from the vendor's decoded JSON body.

        May raise a :class:`ProviderError` (for example ``ContentFiltered`` when the
        vendor answered 200 but refused). Any ``KeyError``/``TypeError``/... is
        reported as a malformed response by the base class.
        """

    def classify_error(self, status: int, headers: Mapping[str, str], body: Any) -> ProviderError:
        """The error for a non-2xx answer; ``body`` is decoded JSON, or text if it was not JSON.

        The default maps the status code; dialects refine it from their error body.
        """
        return error_for_status(status, error_message_from_body(body, status))

    def validate_model(self, model: str) -> str | None:
        """An explanation if ``model`` can never work with this provider, else None."""
        return None

    def canonical_model(self, model: str) -> str:
        """The one spelling of ``model`` among those the API takes for the same model (Gemini's
        ``models/gemini-2.5-flash`` is ``gemini-2.5-flash``).

        The core uses it to refuse one model named twice (under consensus it would vote twice and be paid twice),
        to key the cache and to look up prices; it is also the name ``build_request`` is given. The default: every
        spelling is its own model.
        """
        return model

    # -- the one shared I/O step ---------------------------------------------------

    async def complete(self, client: httpx.AsyncClient, request: ChatRequest, model: str) -> Completion:
        import httpx  # imported on first use: the server lists its tools without the HTTP stack

        spec = self.build_request(request, model)
        try:
            response = await client.request(spec.method, spec.url, headers=dict(spec.headers), json=spec.json)
        # `from None` below: the transport's exception text is not scrubbed of secrets.
        except httpx.TimeoutException as exc:
            raise self._own(ProviderTimeout(f"{type(exc).__name__} from {self.config.name}")) from None
        except httpx.ConnectError as exc:
            raise self._own(ConnectFailed(f"cannot connect to {self.config.name}: {exc}")) from None
        except httpx.HTTPError as exc:
            raise self._own(UpstreamError(f"transport error from {self.config.name}: {type(exc).__name__}")) from None
        except ValueError:  # the transport refused to send it: a control character in a key or header, say
            why = "a header or the URL holds a character HTTP does not allow; check its key and base URL"
            raise self._own(BadRequest(f"the request to {self.config.name} could not be sent: {why}")) from None
        content = response.content
        if not 200 <= response.status_code < 300:
            error = self.classify_error(response.status_code, response.headers, _decode(content))
            if error.status is None:
                error.status = response.status_code
            if error.retry_after_s is None and error.retryable:  # a wait means nothing for a permanent error
                error.retry_after_s = parse_retry_after(response.headers)
            raise self._own(error)
        try:
            body = json.loads(content)
        except ValueError as exc:
            ctype = response.headers.get("content-type", "none")
            error = MalformedResponse(f"response is not JSON (content-type {ctype})", status=response.status_code)
            raise self._own(error) from exc
        try:
            return self.parse_response(body, model)
        except GatewayError as exc:
            exc.status = exc.status or response.status_code
            raise self._own(exc) from None
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            error = MalformedResponse(
                f"unexpected response shape ({type(exc).__name__}: {exc})", status=response.status_code
            )
            raise self._own(error) from exc

    def _own(self, error: GatewayError) -> GatewayError:
        """Stamp the provider name on an error and scrub this provider's key from it."""
        error.provider = self.config.name
        error.message = redact_cut(error.message, self.config.credentials())  # messages are cut at 500 characters
        error.args = (error.message,)
        return error


def _decode(content: bytes) -> Any:
    try:
        return json.loads(content)
    except ValueError:
        return content.decode("utf-8", "replace")


def _validation_detail(value: Any) -> str | None:
    """A FastAPI validation error (Mistral, vLLM), bare (``{"detail": [...]}``) or as the message: each item's
    field and reason ("temperature: Input should be less than or equal to 1.5"), which a bare "HTTP 422" hid.
    Its ``input`` is left out: it echoes what the caller sent."""
    if isinstance(value, dict):
        value = value.get("detail")
    if isinstance(value, str) and value:
        return value[:500]
    if not isinstance(value, list):
        return None
    parts = []
    for item in value:
        if isinstance(item, dict) and isinstance(reason := item.get("msg"), str):
            loc = item.get("loc")
            where = ".".join(str(p) for p in loc if p != "body") if isinstance(loc, list) else ""
            parts.append(f"{where}: {reason}" if where else reason)
    return "; ".join(parts)[:500] or None


def error_message_from_body(body: Any, status: int) -> str:
    """The vendor's own message if the body has one in a usual place, else the status."""
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            msg = err.get("message") or err.get("msg")
            if isinstance(msg, str) and msg:
                return msg[:500]
            if (detail := _validation_detail(msg if isinstance(msg, dict | list) else err.get("detail"))) is not None:
                return detail
        if isinstance(err, str) and err:
            return err[:500]
    if isinstance(body, str) and body.strip():
        return f"HTTP {status}: {body.strip()[:200]}"
    return f"HTTP {status}"


def token_count(value: Any) -> int | None:
    """A token count from a vendor's usage object: an int, or None for anything else (a JSON true is no count)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None
