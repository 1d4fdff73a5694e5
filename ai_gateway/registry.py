"""Finding providers by name.

Built-in adapters and third-party plugins are both entry points in the
``ai_gateway.providers`` group, each naming a :class:`ProviderSpec`
(``groq = "providers.openai:GROQ"``). Specs load lazily: resolving ``groq/...``
imports only the module that holds it. Hosts declared in settings become specs
that reuse a registered dialect. Credentials come from the environment the
registry is given, so tests pass their own and never see the real one.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from ai_gateway.adapter import ProviderConfig, ProviderSpec
from ai_gateway.secrets import (
    Secret,
    environment_credentials,
    has_userinfo,
    redact,
    redact_url,
    sendable_in_header,
    userinfo_form,
)
from ai_gateway.settings import CustomProvider, Settings

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "ai_gateway.providers"
DIST_NAME = "ai-gateway"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")


class RegistryError(LookupError):
    """A provider cannot be used; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class ProviderStatus:
    name: str
    configured: bool
    reason: str
    source: str
    base_url: str | None = None
    description: str = ""
    example_models: tuple[str, ...] = ()


@dataclass(slots=True)
class _Entry:
    load: Callable[[], ProviderSpec]
    source: str
    spec: ProviderSpec | None = None
    error: str | None = None


def _is_builtin(ep: EntryPoint) -> bool:
    dist = getattr(ep, "dist", None)
    return dist is not None and dist.name.replace("_", "-").lower() == DIST_NAME


class Registry:
    def __init__(
        self,
        eps: Iterable[EntryPoint],
        *,
        environ: Mapping[str, str],
        custom: Mapping[str, CustomProvider] | None = None,
        load_plugins: bool = True,
        disabled: Iterable[str] = (),
    ) -> None:
        # A key pasted with its newline (`$(cat key.txt)`, an .env line with a stray space) made every call fail
        # in the transport, as an internal error, while `models` said configured. No key or URL has edge spaces.
        self._environ = {name: value.strip() for name, value in environ.items()}
        self._entries: dict[str, _Entry] = {}
        # Disabled providers stay loadable as dialects for custom hosts, but are hidden and refused.
        self._disabled = disabled_set = set(disabled)
        # Built-ins first so a plugin can never shadow one by reusing its name.
        ordered = sorted(eps, key=lambda ep: not _is_builtin(ep))
        for ep in ordered:
            builtin = _is_builtin(ep)
            if not builtin and not load_plugins:
                continue
            if ep.name in self._entries:
                log.warning("provider %r from %s ignored: the name is taken", ep.name, ep.value)
                continue
            source = "built-in" if builtin else f"plugin ({getattr(ep.dist, 'name', ep.value)})"
            self._entries[ep.name] = _Entry(load=_loader(ep), source=source)
        for name, custom_provider in (custom or {}).items():
            if not _NAME.match(name):
                raise RegistryError(f"custom_providers.{name}: use lowercase letters, digits, '-' or '_'")
            if name in self._entries:
                raise RegistryError(f"custom_providers.{name}: the name is taken by a registered provider; rename it")
            self._entries[name] = _Entry(load=self._custom_loader(name, custom_provider), source="settings")
        self._visible = sorted(name for name in self._entries if name not in disabled_set)
        # Every name a setting may use: a plugin left unloaded (AI_GATEWAY_LOAD_PLUGINS=false) or a disabled
        # provider is still one, and turning it off must not make its other settings refuse to start.
        self._known = frozenset(self._entries) | {ep.name for ep in ordered}
        self._custom = dict(custom or {})
        self._key_vars = {c.api_key_env for c in (custom or {}).values() if c.api_key_env}
        self._custom_credentials = [v for c in (custom or {}).values() for v in c.credentials()]
        self._secrets: tuple[str, ...] | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, environ: Mapping[str, str], eps: Iterable[EntryPoint] | None = None
    ) -> Registry:
        registry = cls(
            entry_points(group=ENTRY_POINT_GROUP) if eps is None else eps,
            environ=environ,
            custom=settings.custom_providers,
            load_plugins=settings.load_plugins,
            disabled=settings.disabled_providers,
        )
        registry.check_names(settings)
        return registry

    def check_names(self, settings: Settings) -> None:
        """Refuse a setting naming a provider that does not exist: it silently did nothing.

        A price keyed ``OpenAI/...`` or ``opnai/*`` never matched, and the list price was charged with nothing to
        say the negotiated one was ignored; ``AI_GATEWAY_DISABLED_PROVIDERS=grok`` left groq in use; a default model
        ``opnai/gpt-4o`` failed every call that named no models.
        """
        for key in settings.model_prices:
            if (problem := self._unknown(key.partition("/")[0], "/...")) is not None:
                raise RegistryError(f"AI_GATEWAY_MODEL_PRICES: key {key!r} {problem}")
        for name in settings.disabled_providers:
            if (problem := self._unknown(name, "")) is not None:
                raise RegistryError(f"AI_GATEWAY_DISABLED_PROVIDERS: {name!r} {problem}")
        # A wrong default model made every call that names no models fail, while the server ran and `models` showed
        # it as the default. Whether its provider is configured is left to the call, which says so (and loading
        # every default's adapter here would put its imports on start-up).
        for i, model_id in enumerate(settings.default_models):
            if (problem := self._default_problem(model_id)) is not None:
                raise RegistryError(f"AI_GATEWAY_DEFAULT_MODELS[{i}]: {model_id!r} {problem}")

    def _default_problem(self, model_id: str) -> str | None:
        provider, _, model = model_id.partition("/")
        if not provider or not model.strip():
            return "is not provider/model (e.g. openai/gpt-4o-mini)"
        if provider in self._disabled:
            return f"names provider {provider!r}, which AI_GATEWAY_DISABLED_PROVIDERS turns off"
        if provider in self._known and provider not in self._entries:
            return f"names provider {provider!r}, a plugin AI_GATEWAY_LOAD_PLUGINS=false leaves unloaded"
        return self._unknown(provider, f"/{model}")

    def _unknown(self, name: str, rest: str) -> str | None:
        if name in self._known:
            return None
        if name.lower() in self._known:
            hint = f"write {name.lower()}{rest}"
        elif close := difflib.get_close_matches(name, self._known, n=1, cutoff=0.75):
            hint = f"did you mean {close[0]}?"
        else:
            hint = "check the spelling"
        return f"names no provider {name!r} ({hint}); provider names: {', '.join(sorted(self._known))}"

    def names(self) -> list[str]:
        return list(self._visible)

    def spec(self, name: str) -> ProviderSpec:
        if name in self._disabled:
            raise RegistryError(f"provider {name!r} is disabled (AI_GATEWAY_DISABLED_PROVIDERS)")
        return self._load(name)

    def _load(self, name: str) -> ProviderSpec:
        entry = self._entries.get(name)
        if entry is None:
            raise RegistryError(f"unknown provider {name!r}; known providers: {', '.join(self.names())}")
        if entry.spec is None and entry.error is None:
            try:
                entry.spec = entry.load()
                self._secrets = None  # a plugin may name a key variable we did not know
            except Exception as exc:  # a broken plugin must not take the gateway down
                # Its message may quote what it read (pydantic's input_value='<the key>'): shown in list_models, in
                # query_models' refusal and in the log, so scrubbed of every credential the environment holds.
                entry.error = redact(f"failed to load: {type(exc).__name__}: {exc}", self.secrets())
                log.warning("provider %r %s", name, entry.error)
        if entry.spec is None:
            raise RegistryError(f"provider {name!r} {entry.error}")
        return entry.spec

    def status(self, name: str) -> ProviderStatus:
        entry = self._entries.get(name)
        if entry is None or name in self._disabled:
            return ProviderStatus(name, False, "unknown or disabled provider", "none")
        try:
            spec = self.spec(name)
        except RegistryError as exc:
            return ProviderStatus(name, False, str(exc), entry.source)
        base_var = next((var for var in spec.base_url_env if self._environ.get(var)), None)
        base_url = self._environ[base_var] if base_var else spec.base_url
        if base_var and spec.normalise_base_url is not None:
            base_url = spec.normalise_base_url(self._environ[base_var])
        key_var = next((var for var in spec.api_key_env if self._environ.get(var)), None)
        if base_url is None:
            names = " or ".join(spec.base_url_env) or "a base URL"
            configured, reason = False, f"set {names}"
        elif base_var and not base_url.lower().startswith(("http://", "https://")):
            # "127.0.0.1:8080/v1" passed as configured, and every call failed in the transport, retried, and
            # counted against the circuit. (A spec's own default is its author's: mock:// is no HTTP host.)
            configured, reason = False, f"{base_var} must start with http:// or https://"
            base_url = redact_url(base_url)
        elif has_userinfo(base_url):
            # Sent as is, every call failed in the transport; a password there would also show wherever the
            # URL does. The key belongs in its variable, where it is sent as the dialect sends keys.
            where = base_var or "its base_url"
            keys = " or ".join(spec.api_key_env) or "an api_key_env variable"
            form = userinfo_form(base_url)
            configured, reason = False, f"{where} holds a {form}, which is not sent; put the key in {keys}"
            base_url = redact_url(base_url)
        elif key_var and not sendable_in_header(self._environ[key_var]):
            # Sent, it failed every call, and a server's error that quoted the header showed the key.
            configured, reason = False, f"{key_var} holds a control or non-ASCII character; set it to the key alone"
        elif key_var:
            configured, reason = True, f"{key_var} is set"
        elif spec.key_required:
            configured, reason = False, f"{' or '.join(spec.api_key_env)} is not set"
        else:
            configured, reason = True, "no key needed"
        return ProviderStatus(name, configured, reason, entry.source, base_url, spec.description, spec.example_models)

    def statuses(self) -> list[ProviderStatus]:
        return [self.status(name) for name in self.names()]

    def config(self, name: str) -> ProviderConfig:
        """The resolved endpoint and key for ``name``, or RegistryError saying what is missing."""
        status = self.status(name)
        if not status.configured or status.base_url is None:
            raise RegistryError(f"provider {name!r} is not configured: {status.reason}")
        spec = self.spec(name)
        key = self._first_env(spec.api_key_env)
        return ProviderConfig(
            name=name,
            base_url=status.base_url.rstrip("/"),
            api_key=Secret(key) if key else None,
            options=spec.options,
            dialect=spec.adapter.dialect if self._entries[name].source == "settings" else None,
        )

    def secrets(self) -> tuple[str, ...]:
        """Every credential value in this registry's environment, for redaction."""
        if self._secrets is None:
            names = self._key_vars | {var for e in self._entries.values() if e.spec for var in e.spec.api_key_env}
            values = {v for k, v in self._environ.items() if v and k in names} | environment_credentials(self._environ)
            values.update(self._custom_credentials)  # a custom host's headers and base URL: in no variable
            self._secrets = tuple(sorted(values, key=len, reverse=True))  # longest first: no partial leftovers
        return self._secrets

    def _first_env(self, names: Iterable[str]) -> str | None:
        return next((self._environ[var] for var in names if self._environ.get(var)), None)

    def _custom_loader(self, name: str, custom: CustomProvider) -> Callable[[], ProviderSpec]:
        def load() -> ProviderSpec:
            _refuse_dialect_cycle(name, self._custom)
            dialect = self._load(custom.dialect)
            return ProviderSpec(
                name=name,
                adapter=dialect.adapter,
                base_url=custom.base_url,
                api_key_env=(custom.api_key_env,) if custom.api_key_env else (),
                key_required=custom.api_key_env is not None,
                description=custom.description or f"{custom.dialect}-compatible host from settings",
                options=custom.options,
                price_source=custom.price_source,
            )

        return load


def _refuse_dialect_cycle(name: str, custom: Mapping[str, CustomProvider]) -> None:
    """Refuse a host whose chain of dialects loops among hosts from settings (one naming itself, two naming each
    other): loading it recursed to Python's limit, logging the whole chain at every level (megabytes)."""
    chain = [name]
    while (dialect := custom[chain[-1]].dialect) in custom:
        if dialect in chain:
            path = " -> ".join([*chain, dialect])
            raise RegistryError(
                f"AI_GATEWAY_CUSTOM_PROVIDERS: the dialect of {name!r} goes round in a loop ({path}) and never "
                "reaches a built-in or plugin provider; name one as its dialect"
            )
        chain.append(dialect)


def _loader(ep: EntryPoint) -> Callable[[], ProviderSpec]:
    def load() -> ProviderSpec:
        spec = ep.load()
        if not isinstance(spec, ProviderSpec):
            raise TypeError(f"entry point {ep.value} is a {type(spec).__name__}, not a ProviderSpec")
        if spec.name != ep.name:
            raise ValueError(f"entry point {ep.name!r} names a spec called {spec.name!r}")
        return spec

    return load
