"""Keeping API keys out of everything the gateway prints, logs or returns."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, urlencode, urlsplit, urlunsplit

# A safety net for keys we were never told about (a key echoed by a vendor for a
# different account, a key pasted into a prompt that comes back in an error).
_KEY_SHAPES = re.compile(
    r"(sk-(?:ant-|proj-|or-)?[A-Za-z0-9_\-]{12,}"  # OpenAI, Anthropic, OpenRouter
    r"|AIza[0-9A-Za-z_\-]{20,}"  # Google
    r"|gsk_[A-Za-z0-9]{12,}"  # Groq
    r"|fw_[A-Za-z0-9]{12,}"  # Fireworks
    r"|(?i:bearer)\s+[A-Za-z0-9._\-]{8,})"
)
REDACTED = "[REDACTED]"
# A URL query parameter named like a credential: Azure's ?api-key=, redis-py's ?password=, a signed URL's ?sig=.
# A query parameter named "code" is Azure Functions' key (https://host/api/fn?code=...): only that exact name, not
# "zipcode" or "encode".
CREDENTIAL_NAME = re.compile(r"key|token|secret|passw|sig|auth|credential|^code$", re.IGNORECASE)
# A setting or header named like a credential (an "api-key" header), but not "max_tokens_field": tokens are output.
_CREDENTIAL_OPTION = re.compile(r"key|token(?!s)|secret|passw|auth|credential|signature|cookie", re.IGNORECASE)
# The same two places in URLs inside any text (an httpx log line, an error message): user:password@ (or a bare
# token@: with no ":", the whole userinfo is the credential, as in https://TOKEN@host) and ?name=value with a
# credential's name.
# The userinfo runs to the *last* "@" before the path, as urlsplit and redis-py read it: a password may hold an "@"
# or ":" that was not percent-encoded (redis://:p@ss@host works), and all of it must go.
_URL_PASSWORD = re.compile(r"(://(?:[^/\s:@]*:)?)[^/\s]+@")
# user:password@ (or a bare token@, all of it secret): first within the host part, to its last "@"; failing that, a
# password holding a "/" (or "#", "?") that should have been percent-encoded, which urlsplit takes for a path, so
# only this finds it.
_SCHEME = r"^[a-z][a-z0-9+.\-]*://"
_URL_USERINFO = re.compile(
    _SCHEME + r"(?:(?P<user>[^/?#@:\s]*):(?P<password>[^/?#\s]*)|(?P<token>[^/?#:\s]+))@", re.IGNORECASE
)
_URL_USERINFO_SLASHED = re.compile(_SCHEME + r"(?P<user>[^/?#@:\s]*):(?P<password>[^@\s]*)@", re.IGNORECASE)
# A secret cut off at the end of a truncated message still shows this much of itself.
_CUT_PREFIX = 6
_URL_CREDENTIAL = re.compile(
    r"([?&](?:[^=&\s#]*(?:key|token|secret|passw|sig|auth|credential)[^=&\s#]*|code)=)[^&\s#\"']+", re.IGNORECASE
)


class Secret:
    """A string that never shows itself in repr, str, logs or JSON by accident."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every known secret (as written, or as a URL or JSON would spell it) and anything shaped like a
    key replaced."""
    for value in secrets:
        for form in _spellings(value):
            if form in text:
                text = text.replace(form, REDACTED)
    if "://" in text:
        text = _URL_CREDENTIAL.sub(rf"\1{REDACTED}", _URL_PASSWORD.sub(rf"\1{REDACTED}@", text))
    elif "=" in text:  # a path and query echoed without its scheme ("Cannot POST /v1/x?api-key=...")
        text = _URL_CREDENTIAL.sub(rf"\1{REDACTED}", text)
    return _KEY_SHAPES.sub(REDACTED, text)


def redact_cut(text: str, secrets: Iterable[str] = ()) -> str:
    """:func:`redact`, for a message that may have been cut short: a secret's beginning left at its end goes too."""
    text = redact(text, secrets)
    for value in secrets:
        for form in _spellings(value):
            for size in range(len(form) - 1, _CUT_PREFIX - 1, -1):
                if text.endswith(form[:size]):
                    return text[:-size] + REDACTED
    return text


def redact_known(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with only the known secrets (in every spelling) replaced: for a model's answer, whose key-shaped
    examples ("Bearer YOUR_TOKEN", "sk-...") are content, never credentials of ours."""
    pattern = _known_pattern(secrets)
    return text if pattern is None else pattern.sub(REDACTED, text)


@lru_cache(maxsize=8)
def _known_pattern(secrets: tuple[str, ...]) -> re.Pattern[str] | None:
    # One pass over the text however many secrets there are; longest spellings first, so none leaves a tail.
    forms = sorted({form for value in secrets for form in _spellings(value)}, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, forms))) if forms else None


@lru_cache(maxsize=256)
def _spellings(value: str) -> tuple[str, ...]:
    """The ways a secret shows up when echoed: as is, trimmed (a stray newline), percent-encoded (in a URL or a
    form) and JSON-escaped (inside a JSON string, "/" also as "\\/"). Longest first, so none leaves a tail."""
    if not value or len(value) < 4:
        return ()
    trimmed = value.strip()
    escaped = json.dumps(value)[1:-1]
    forms = {value, trimmed, quote(value, safe=""), quote_plus(value), escaped, escaped.replace("/", "\\/")}
    return tuple(sorted((f for f in forms if len(f) >= 4), key=len, reverse=True))


def credentials_in(value: Any) -> list[str]:
    """The credentials inside settings-like data: values under credential-like names (an ``api-key`` header, a
    ``token`` option), and the password and credential-named query values of any URL, at any depth."""
    found: list[str] = []
    if isinstance(value, Mapping):
        for name, item in value.items():
            if isinstance(item, str) and _CREDENTIAL_OPTION.search(str(name)):
                found.append(item)
            else:
                found += credentials_in(item)
    elif isinstance(value, list | tuple):
        for item in value:
            found += credentials_in(item)
    elif isinstance(value, str) and "://" in value:
        if (secret := url_password(value)) is not None:
            found.append(secret)
        query = value.partition("?")[2].partition("#")[0]
        found += [v for name, v in parse_qsl(query, True) if v and CREDENTIAL_NAME.search(name)]
    return [v for v in found if v]


def environment_credentials(environ: Mapping[str, str]) -> set[str]:
    """The credentials an environment holds: the values of ``*_API_KEY``, ``*_KEY``, ``*_TOKEN`` and ``*_SECRET``
    variables, of any other variable named like a credential option (a plugin's ``MYHOST_APIKEY``, read before any
    code could name it) whose value looks like a secret, and those inside ``*_URL`` and ``*_HOST``
    values (``OPENAI_BASE_URL=...?api-key=``)."""
    found = {
        v
        for k, v in environ.items()
        if v and (k.endswith(("_KEY", "_TOKEN", "_SECRET")) or (_CREDENTIAL_OPTION.search(k) and _secret_like(v)))
    }
    return found | set(credentials_in([v for k, v in environ.items() if k.endswith(("_URL", "_HOST"))]))


def _secret_like(value: str) -> bool:
    """Long enough, one word and no path: a flag ("true"), a number or a file path is no secret, and redacting it
    would blank every "true" in the logs."""
    return len(value) >= 12 and not any(c.isspace() for c in value) and not value.startswith(("/", "~", "."))


def _userinfo(url: str) -> re.Match[str] | None:
    return _URL_USERINFO.match(url) or _URL_USERINFO_SLASHED.match(url)


def url_password(url: str) -> str | None:
    """The password of a URL's user:password@, as written (even with a "/" in it, which urlsplit misreads), or the
    whole userinfo when it has no ":" (https://TOKEN@host)."""
    match = _userinfo(url)
    return match[_secret_group(match)] if match else None


def _secret_group(match: re.Match[str]) -> str:
    """Which group of a userinfo match holds the secret: the password, else the bare token."""
    return "password" if match["password"] is not None else "token"


def userinfo_form(url: str) -> str:
    """How a URL's userinfo is written, to name it in a message without showing it: ``token@`` or
    ``user:password@``."""
    match = _userinfo(url)
    return "token@" if match is not None and match.groupdict().get("token") is not None else "user:password@"


def has_userinfo(url: str) -> bool:
    """True when ``url`` carries user:password@ or token@ (even with a "/" in the password, which urlsplit
    misreads)."""
    return url_password(url) is not None or "@" in urlsplit(url).netloc


def redact_url(url: str) -> str:
    """A URL fit to show (a status, a log line): a password before the host (or the whole userinfo when it is a
    bare token) and the value of a query parameter named like a credential become ``****``; the rest still tells
    one endpoint from another."""
    if "@" not in url and "?" not in url:
        return url
    if (match := _userinfo(url)) is not None:  # before urlsplit, which misreads a "/" in the password
        group = _secret_group(match)
        url = f"{url[: match.start(group)]}****{url[match.end(group) :]}"
    parts = urlsplit(url)
    query = urlencode(
        [(name, "****" if CREDENTIAL_NAME.search(name) else value) for name, value in parse_qsl(parts.query, True)],
        safe="*",
    )
    return urlunsplit(parts._replace(query=query))


def sendable_in_header(secret: str) -> bool:
    """Whether a key or token can travel in an HTTP header as it is: printable ASCII. A control character failed
    every call (aiohttp) or was sent and quoted back by the server's error (httpx)."""
    return secret.isascii() and secret.isprintable()
