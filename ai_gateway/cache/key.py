"""Cache keys: a hash of a canonical encoding of everything that can change an answer.

Included: the key-schema version, the provider instance and its base URL, the
model, the system prompt (given as ``system`` or as the first message: the same
request on every wire), every message, every sampling parameter that was set
(an omitted temperature is not temperature 0), the sample index, and the
provider's options that can change an answer (``Adapter.cache_options``). Never
an API key, not even hashed. Keys are namespaced with a prefix and the schema
version, so a change of format never reads an old shape.

Every key ends in the 64 hex digits of a hash, after ``<namespace>:v1:`` (an
answer), ``<namespace>:lease:v1:`` or ``<namespace>:error:v1:``. A namespace
ending in ``:lease`` or ``:error`` would spell another namespace's leases and
errors, so its own hash covers the namespace too (see :func:`cache_key`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import fields
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ai_gateway.secrets import CREDENTIAL_NAME
from ai_gateway.types import ChatRequest

KEY_SCHEMA = 1
# Every ChatRequest field but these is a sampling parameter.
_PARAMS = tuple(f.name for f in fields(ChatRequest) if f.name not in {"messages", "system"})
# What sits beside an answer, under <namespace>:<kind>:v<schema>:<hash> (lease_key, error_key), as a namespace ends.
_KIND_ENDINGS = (":lease", ":error")
_NO_OPTIONS: Mapping[str, Any] = {}


def _plain(value: object) -> object:
    """A plugin's option of a type JSON lacks (a tuple encodes as a list already), in a form every process spells
    alike: a set's iteration order, and so its str(), depends on the process's hash seed."""
    if isinstance(value, set | frozenset):
        return sorted(value, key=_encode)
    return str(value)


# Built once: json.dumps with options builds an encoder per call, a third of a key's cost.
_encode = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_plain).encode


def canonical(
    provider: str,
    base_url: str,
    model: str,
    request: ChatRequest,
    sample: int | None,
    options: Mapping[str, Any] = _NO_OPTIONS,
    *,
    namespace: str | None = None,
) -> str:
    params = {name: _number(value) for name in _PARAMS if (value := getattr(request, name)) is not None}
    system, messages = request.system, request.messages
    if system is None and messages and messages[0].role == "system":
        # The same request as `system` plus the rest: every adapter sends the system parameter as the leading
        # system message (with_system_first) or joins both into one system prompt (system_prompt). Keyed apart,
        # an agent passing `system` and a dataset row opening with a system message paid twice for one answer.
        # Folded this way round, a request given `system` keeps the key it always had.
        system, messages = messages[0].content, messages[1:]
    payload = {
        "schema": KEY_SCHEMA,
        "provider": provider,
        "base_url": _keyable(base_url),
        "model": model,
        "system": system,
        "messages": [[m.role, m.content] for m in messages],
        "params": params,
        "sample": sample,
    }
    if options:  # only when set: a provider without options keeps the keys it had before options joined them
        payload["options"] = dict(options)
    if namespace is not None:
        payload["namespace"] = namespace
    return _encode(payload)


def _keyable(base_url: str) -> str:
    """The base URL without what may be a credential: a user:password before the host, or the value of a query
    parameter named like one (``?api-key=``). The rest still tells one endpoint from another."""
    if "@" not in base_url and "?" not in base_url:
        return base_url
    parts = urlsplit(base_url)
    netloc = parts.netloc.rpartition("@")[2]
    query = urlencode(
        [(name, "" if CREDENTIAL_NAME.search(name) else value) for name, value in parse_qsl(parts.query, True)]
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _number(value: object) -> object:
    """temperature=0 and temperature=0.0 ask for the same thing: one spelling per number."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def cache_key(
    namespace: str,
    provider: str,
    base_url: str,
    model: str,
    request: ChatRequest,
    sample: int | None,
    options: Mapping[str, Any] = _NO_OPTIONS,
) -> str:
    # Namespace "X:lease" keeps its answers under "X:lease:v1:", where namespace X keeps its leases: with the same
    # hash, X's calls waited on a "lease" nobody held until their deadline. Only a namespace ending in a kind can
    # spell another's lease or error key (what precedes the hash must match, and ends in ":v1:" for an answer), so
    # only its hash takes in the namespace: that sets it apart, and every other namespace keeps its keys (no cache
    # goes cold).
    own = namespace if namespace.endswith(_KIND_ENDINGS) else None
    text = canonical(provider, base_url, model, request, sample, options, namespace=own)
    return f"{answer_prefix(namespace)}{hashlib.sha256(text.encode()).hexdigest()}"


def answer_prefix(namespace: str) -> str:
    """The prefix of every answer's key, and of nothing else (the near cache asks Redis to watch it)."""
    return f"{namespace}:v{KEY_SCHEMA}:"


def lease_key(key: str) -> str:
    """Who is making the call for ``key`` now (cross-process single-flight)."""
    return _beside(key, "lease")


def error_key(key: str) -> str:
    """The error that call ended in, published briefly for the processes that waited on it."""
    return _beside(key, "error")


def _beside(key: str, kind: str) -> str:
    # Outside the answers' prefix, so taking a lease or publishing an error sends no invalidation message.
    head, _, digest = key.rpartition(":")
    return f"{head.removesuffix(f':v{KEY_SCHEMA}')}:{kind}:v{KEY_SCHEMA}:{digest}"
