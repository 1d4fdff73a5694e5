"""Gateway settings: one pydantic-settings object, read once and passed down.

Every field is read from ``AI_GATEWAY_<FIELD>`` (or a ``.env`` file in the
working directory). Provider credentials are *not* here: they use the
variables users already have (``OPENAI_API_KEY``, ``OLLAMA_HOST``...), read by
the registry from the same environment. ``.env.example`` documents every field;
a test keeps the two in sync.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ai_gateway.secrets import credentials_in, sendable_in_header, url_password

ENV_PREFIX = "AI_GATEWAY_"
# Ten years: past any use, and far inside what Redis accepts as an expiry in milliseconds (an infinite or huge
# TTL made every store fail, leaving its lease behind).
TTL_LIMIT_S = 10 * 365 * 86400.0


class CustomProvider(BaseModel):
    """A provider declared in settings: any host that speaks a known dialect."""

    model_config = {"extra": "forbid"}

    base_url: str = Field(description="Endpoint base URL, e.g. http://localhost:8080/v1 for an OpenAI-compatible host")
    dialect: str = Field("openai", description="Registered provider whose API dialect this host speaks")
    api_key_env: str | None = Field(None, description="Environment variable holding the key; None for keyless hosts")
    description: str = ""
    options: dict[str, Any] = Field(
        default_factory=dict,
        description='Dialect options, e.g. {"max_tokens_field": "max_completion_tokens", "extra_headers": {...}}',
    )
    price_source: str | None = Field(
        None, description="A genai-prices provider id whose prices apply (e.g. openai for a proxy); None: unpriced"
    )

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _variable_name(cls, value: str | None) -> str | None:
        # "" or "CORP KEY" named no variable anyone can set: the host stayed "not configured:  is not set".
        if value is not None and not _ENV_NAME.match(value):
            raise ValueError(
                f"{value!r} is no environment variable name: use letters, digits and '_' (e.g. CORP_LLM_KEY), or "
                "leave it out for a host that needs no key"
            )
        return value

    def credentials(self) -> list[str]:
        """What must never show: credentials in its headers and options, or in its base URL (``?api-key=``)."""
        return credentials_in([self.options, self.base_url])


class ModelPrice(BaseModel):
    """A price in USD per million tokens, from AI_GATEWAY_MODEL_PRICES: local models, negotiated rates."""

    model_config = {"extra": "forbid", "frozen": True}

    input_per_mtok: float = Field(ge=0, description="USD per million input tokens")
    output_per_mtok: float = Field(ge=0, description="USD per million output tokens")
    cached_input_per_mtok: float | None = Field(
        None, ge=0, description="USD per million input tokens read from the provider's prompt cache; default: input"
    )


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CUSTOM_EXAMPLE = '{"lms": {"base_url": "http://localhost:1234/v1"}}'
_PRICE_FIELDS = ("input_per_mtok", "output_per_mtok", "cached_input_per_mtok")
_PRICE_EXAMPLE = '{"ollama/*": {"input_per_mtok": 0, "output_per_mtok": 0}}'


def _check_model_prices(value: Any) -> Any:
    """Parse and check AI_GATEWAY_MODEL_PRICES, saying which key is wrong and how to write it."""
    if isinstance(value, str):
        if not value.strip():
            return {}
        import json

        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"not valid JSON ({exc}); write a JSON object such as {_PRICE_EXAMPLE}") from None
    if not isinstance(value, dict):
        raise ValueError(f"must be a JSON object of provider/model keys, such as {_PRICE_EXAMPLE}")
    for key, price in value.items():
        provider, sep, model = str(key).partition("/")
        if not sep or not provider or not model or any(c in provider for c in "*?["):
            raise ValueError(
                f"key {key!r}: write provider/model (e.g. openai/gpt-4o-mini) or provider/* for all its models"
            )
        if isinstance(price, ModelPrice):
            continue
        if not isinstance(price, dict):
            raise ValueError(
                f"key {key!r}: the price must be an object such as "
                '{"input_per_mtok": 0.15, "output_per_mtok": 0.6} (USD per million tokens)'
            )
        unknown = sorted(set(price) - set(_PRICE_FIELDS))
        if unknown:
            raise ValueError(f"key {key!r}: unknown field {unknown[0]!r}; the fields are {', '.join(_PRICE_FIELDS)}")
        for name in _PRICE_FIELDS:
            if name not in price:
                if name == "cached_input_per_mtok":
                    continue
                raise ValueError(f"key {key!r}: {name} is missing; give input_per_mtok and output_per_mtok")
            number = price[name]
            if number is None and name == "cached_input_per_mtok":
                continue
            if isinstance(number, bool) or not isinstance(number, int | float) or not 0 <= number < float("inf"):
                raise ValueError(
                    f"key {key!r}: {name} must be a number of USD per million tokens, 0 or more; got {number!r}"
                )
    return value


def _split_list(value: Any) -> Any:
    """Accept a JSON list or a comma-separated string for list settings."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import json

            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
    )

    # -- requests ---------------------------------------------------------------
    default_models: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Models used when a call names none (comma-separated provider/model ids)."
    )
    max_models: int = Field(8, ge=1, le=64, description="Most models one query_models call may name.")
    default_timeout_s: float = Field(60.0, gt=0, description="Deadline for one tool call when the caller gives none.")
    min_timeout_s: float = Field(0.5, gt=0, description="Smallest accepted timeout_s; smaller values are raised to it.")
    max_timeout_s: float = Field(
        300.0, gt=0, description="Largest accepted timeout_s; larger values are lowered to it."
    )
    progress_interval_s: float | None = Field(
        5.0,
        ge=0.1,
        description="While a query_models call waits on its models, a progress notification (to a client that "
        "asked for progress) at least this often, so a client resetting its timeout on progress keeps waiting "
        "(0.1 or more; off if unset).",
    )

    # -- resilience (docs/resilience.md) ---------------------------------------------
    attempt_timeout_s: float = Field(
        30.0, gt=0, description="Longest single attempt; each attempt gets min(this, time left in the call)."
    )
    min_attempt_s: float = Field(
        0.05, ge=0, description="Below this much time left, a model fails at once with 'deadline' instead of starting."
    )
    max_attempts: int = Field(3, ge=1, le=10, description="Attempts per model, the first included (transient errors).")
    backoff_base_s: float = Field(
        0.2, gt=0, description="Full-jitter backoff: retry n waits up to base * 2^(n-1) seconds."
    )
    backoff_max_s: float = Field(5.0, gt=0, description="Cap on one backoff wait.")
    retry_after_cap_s: float = Field(
        20.0, ge=0, description="A Retry-After longer than this (or than the time left) fails the model at once."
    )
    retry_budget_ratio: float = Field(
        0.2, ge=0, le=1, description="Retries per provider may add at most this fraction of its recent requests."
    )
    retry_budget_floor: int = Field(3, ge=0, description="Retries always allowed per window, however few requests.")
    retry_budget_window_s: float = Field(10.0, gt=0, description="Window over which the retry budget is counted.")
    breaker_fail_max: int = Field(5, ge=1, description="Consecutive failures that open a provider's circuit.")
    breaker_reset_s: float = Field(
        30.0, gt=0, description="Seconds an open circuit waits before admitting trial calls."
    )
    breaker_half_open_calls: int = Field(
        1, ge=1, description="Trial calls admitted at once while half-open; they must all succeed to close it."
    )
    slow_call_s: float | None = Field(
        10.0,
        gt=0,
        description="An attempt the caller's deadline cuts after this many seconds with no answer counts as a "
        "failure against the model's circuit, unless the model's recent answers took as long (off if unset).",
    )
    max_concurrency: int = Field(256, ge=1, description="Provider calls in flight at once, across all providers.")
    max_concurrency_per_provider: int = Field(64, ge=1, description="Provider calls in flight at once, per provider.")
    queue_wait_s: float = Field(
        0.05, ge=0, description="Longest wait for a free call slot before failing fast with 'overloaded'."
    )
    hedge_after_s: float | None = Field(
        None, gt=0, description="first_available hedging: start the next model after this many seconds (off if unset)."
    )
    hedge_min_samples: int = Field(
        20, ge=1, description="Recent latencies needed before hedge_after_s='auto' uses a model's own p95."
    )

    # -- response cache (docs/caching.md) ---------------------------------------------
    redis_url: SecretStr | None = Field(
        None, description="Redis for a cache shared across processes (redis://...); unset: the embedded cache only."
    )
    cache_namespace: str = Field("aigw", min_length=1, description="Prefix of every cache key.")
    cache_ttl_s: float = Field(
        86400.0, gt=0, le=TTL_LIMIT_S, allow_inf_nan=False, description="How long a cached answer lives."
    )
    cache_max_ttl_s: float = Field(
        30 * 86400.0, gt=0, le=TTL_LIMIT_S, allow_inf_nan=False, description="Hard ceiling on cache_ttl_s."
    )
    cache_max_entry_bytes: int = Field(262144, ge=1, description="Larger answers are served but not stored.")
    cache_max_entries: int = Field(10000, ge=1, description="Embedded cache: most entries kept (LRU).")
    cache_max_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1,
        description="Embedded cache: most memory its entries take (LRU): keys, values and ~230 B each besides.",
    )
    cache_op_timeout_s: float = Field(0.1, gt=0, description="Longest wait for one Redis operation.")
    cache_max_connections: int = Field(
        64, ge=1, description="Redis connections at most; past it an operation waits within its timeout."
    )
    cache_cooldown_s: float = Field(5.0, gt=0, description="After a Redis failure, how long to use the embedded cache.")
    cache_near_entries: int = Field(
        1000, ge=0, description="Redis only: answers also kept here, dropped when Redis says they changed; 0: off."
    )
    cache_near_bytes: int = Field(8 * 1024 * 1024, ge=0, description="Redis only: most bytes the near cache keeps.")

    # -- outbound HTTP (one shared client) ---------------------------------------
    http_transport: Literal["aiohttp", "httpx"] = Field(
        "aiohttp", description="aiohttp (default; httpx's own pool degrades under concurrency) or httpx."
    )
    connect_timeout_s: float = Field(10.0, gt=0, description="TCP/TLS connect timeout per provider request.")
    read_timeout_s: float = Field(120.0, gt=0, description="Longest silence between two reads of a response.")
    max_connections: int = Field(
        200,
        ge=1,
        description="Connection pool size across all providers; never below AI_GATEWAY_MAX_CONCURRENCY (a call the "
        "limiter admitted must not wait for a connection).",
    )
    max_keepalive_connections: int = Field(50, ge=0, description="Idle connections kept open for reuse.")
    keepalive_expiry_s: float = Field(30.0, ge=0, description="Seconds an idle connection is kept.")

    # -- providers ---------------------------------------------------------------
    custom_providers: Annotated[dict[str, CustomProvider], NoDecode] = Field(
        default_factory=dict,
        description='Extra hosts as JSON: {"name": {"base_url": ..., "dialect": "openai", "api_key_env": ...}}.',
    )
    load_plugins: bool = Field(
        True, description="Load third-party adapters from the ai_gateway.providers entry points."
    )
    disabled_providers: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Provider names to hide and refuse (comma-separated)."
    )
    model_prices: Annotated[dict[str, ModelPrice], NoDecode] = Field(
        default_factory=dict,
        description='Prices over the built-in table, USD per million tokens: {"provider/model" or "provider/*": '
        '{"input_per_mtok": ..., "output_per_mtok": ..., "cached_input_per_mtok": ...}}.',
    )

    price_memo: bool = Field(
        True,
        description="Remember the genai-prices table's prices of the models used, in $XDG_CACHE_HOME/ai-gateway "
        "(default ~/.cache/ai-gateway), so that a new process need not load the table (~0.1 s of its start).",
    )

    # -- serving -----------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Bind address for the HTTP transport.")
    port: int = Field(8000, ge=0, le=65535, description="Port for the HTTP transport.")
    path: str = Field("/mcp", description="URL path of the MCP endpoint for the HTTP transport.")
    stateless_http: bool = Field(
        False,
        description="HTTP transport without sessions: any replica can serve any request (no sticky sessions), but a "
        "client on a protocol before 2026-07-28 can no longer cancel a call (its cancel arrives on another request).",
    )
    session_idle_timeout_s: float = Field(
        1800.0,
        gt=0,
        le=604800,
        allow_inf_nan=False,
        description="HTTP transport with sessions: how long a session with no request in flight (and no open "
        "stream) is kept; then it is ended, and its client starts a new one. An open session holds ~45 KB, so "
        "sessions that clients never end hold memory this long.",
    )
    max_sessions: int = Field(
        10000,
        ge=1,
        description="HTTP transport with sessions: at most this many open at once; past it a new client is refused "
        "(503, 'Too many open sessions') until a session ends or idles out. Open sessions show in /health.",
    )
    shutdown_grace_s: float = Field(
        30.0,
        ge=0,
        le=3600,
        allow_inf_nan=False,
        description="HTTP transport: on SIGTERM or Ctrl-C, how long the calls in flight may take to answer before they "
        "are cut and the server exits (meanwhile new calls are refused and /health answers 503; a second Ctrl-C exits "
        "at once).",
    )
    auth_token: SecretStr | None = Field(
        None, description="If set, HTTP clients must send 'Authorization: Bearer <token>' (stdio is unaffected)."
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="HTTP transport: Host header values accepted besides localhost and the bind address "
        "(comma-separated; '*.example.com' patterns). Set, every request's Host is checked, whatever the bind "
        "address; unset, only a server bound to a loopback address checks it (DNS-rebinding protection).",
    )
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="HTTP transport: browser origins trusted besides the server's own and loopback ones "
        "(comma-separated, e.g. https://app.example.com).",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("warning", description="Log level (stderr).")
    eval_dir: str | None = Field(
        None,
        description="run_eval only: the directory its dataset and results files must lie in (relative paths start "
        "there; symbolic links are followed before the check). Unset: the server's working directory.",
    )

    @field_validator(
        "hedge_after_s", "slow_call_s", "progress_interval_s", "auth_token", "redis_url", "eval_dir", mode="before"
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # `AI_GATEWAY_AUTH_TOKEN=` in a .env means "no token", never "the empty token".
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("host", "path", mode="before")
    @classmethod
    def _empty_is_default(cls, value: Any, info: ValidationInfo) -> Any:
        # `AI_GATEWAY_HOST=` served on every interface (uvicorn binds "" to all of them), without a token.
        if isinstance(value, str) and not value.strip():
            return cls.model_fields[info.field_name].default  # type: ignore[index]
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _any_case(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, value: list[str]) -> list[str]:
        # Compared with the Host header, which never holds a scheme or a path: a URL here matched nothing.
        for host in value:
            if "://" in host or "/" in host:
                bare = host.split("://")[-1].partition("/")[0]
                raise ValueError(f"{host!r}: write the host name alone, as a Host header carries it (e.g. {bare!r})")
        return value

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        # Compared with the Origin header, scheme://host[:port]: a bare name matched nothing.
        for origin in value:
            scheme, sep, rest = origin.partition("://")
            if not sep or not scheme or not rest or "/" in rest:
                bare = (rest or origin).partition("/")[0]
                raise ValueError(
                    f"{origin!r}: write an origin as a browser sends it, scheme://host[:port] (e.g. 'https://{bare}')"
                )
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        # redis-py would fail on these at the first connection, with the password in its traceback; the message
        # here never repeats the URL.
        if value is None:
            return None
        url = value.get_secret_value()
        scheme = url.partition("://")[0].lower() if "://" in url else ""
        if scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must start with redis://, rediss:// or unix://")
        if any(c in (url_password(url) or "") for c in "/?#"):
            raise ValueError("the password holds '/', '?' or '#': percent-encode them (%2F, %3F, %23)")
        try:
            _ = urlsplit(url).port
        except ValueError:
            raise ValueError("the port is not a number (percent-encode a ':' or '@' in the password)") from None
        return value

    @field_validator("default_models", "disabled_providers", "allowed_hosts", "allowed_origins", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("auth_token")
    @classmethod
    def _auth_token(cls, value: SecretStr | None) -> SecretStr | None:
        # A token file mounted with its newline: no client can send one that ends so, and each got a bare 401.
        if value is None:
            return None
        token = value.get_secret_value().strip()
        if not sendable_in_header(token):
            raise ValueError("holds a control or non-ASCII character, which no HTTP header may carry")
        return SecretStr(token)

    @field_validator("model_prices", mode="before")
    @classmethod
    def _model_prices(cls, value: Any) -> Any:
        return _check_model_prices(value)

    @field_validator("custom_providers", mode="before")
    @classmethod
    def _custom_providers(cls, value: Any) -> Any:
        # Parsed here, not by pydantic-settings: its parse error was a 45-line traceback naming no fix.
        if not isinstance(value, str):
            return value
        if not value.strip():
            return {}
        import json

        try:
            return json.loads(value)
        except ValueError as exc:
            raise ValueError(f"not valid JSON ({exc}); write a JSON object such as {_CUSTOM_EXAMPLE}") from None

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        return value if value.startswith("/") else "/" + value

    @field_validator("eval_dir")
    @classmethod
    def _eval_dir(cls, value: str | None) -> str | None:
        # Checked at start: a typo here would otherwise surface as "outside the evaluation directory" on every call.
        if value is not None and not Path(value).expanduser().is_dir():
            raise ValueError(f"{value!r} is not a directory")
        return value

    @model_validator(mode="after")
    def _timeouts(self) -> Settings:
        if self.min_timeout_s > self.max_timeout_s:
            raise ValueError("AI_GATEWAY_MIN_TIMEOUT_S must not exceed AI_GATEWAY_MAX_TIMEOUT_S")
        if self.cache_ttl_s > self.cache_max_ttl_s:
            raise ValueError("AI_GATEWAY_CACHE_TTL_S must not exceed AI_GATEWAY_CACHE_MAX_TTL_S")
        if not self.min_timeout_s <= self.default_timeout_s <= self.max_timeout_s:
            raise ValueError(
                "AI_GATEWAY_DEFAULT_TIMEOUT_S must lie between AI_GATEWAY_MIN_TIMEOUT_S and AI_GATEWAY_MAX_TIMEOUT_S"
            )
        return self

    def clamp_timeout(self, timeout_s: float | None) -> float:
        if timeout_s is None:
            return self.default_timeout_s
        return min(max(timeout_s, self.min_timeout_s), self.max_timeout_s)


def unknown_settings(environ: Mapping[str, str]) -> list[str]:
    """The ``AI_GATEWAY_*`` names in ``environ`` that are no setting, each with the nearest one.

    Settings ignore names they do not know, so a typo went unseen: ``AI_GATEWAY_AUTH_TOKN`` served without the
    token it was meant to require. Names are matched without regard to case, as the settings read them.
    """
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    problems = []
    for name in sorted(environ):
        upper = name.upper()
        if upper.startswith(ENV_PREFIX) and upper not in known:
            close = difflib.get_close_matches(upper, known, n=1, cutoff=0.75)
            problems.append(f"{name} is not a setting" + (f" (did you mean {close[0]}?)" if close else ""))
    return problems
