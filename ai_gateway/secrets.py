"""Keeping API keys out of everything the gateway prints, logs or returns."""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

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
CREDENTIAL_NAME = re.compile(r"key|token|secret|passw|sig|auth|credential", re.IGNORECASE)
# The same two places in URLs inside any text (an httpx log line, an error message): user:password@ and
# ?name=value with a credential's name.
_URL_PASSWORD = re.compile(r"(://[^/\s:@]*:)[^@/\s]+@")
_URL_CREDENTIAL = re.compile(
    r"([?&][^=&\s#]*(?:key|token|secret|passw|sig|auth|credential)[^=&\s#]*=)[^&\s#\"']+", re.IGNORECASE
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
    """``text`` with every known secret and anything shaped like a key replaced."""
    for value in secrets:
        if value and len(value) >= 4:
            text = text.replace(value, REDACTED)
    if "://" in text:
        text = _URL_CREDENTIAL.sub(rf"\1{REDACTED}", _URL_PASSWORD.sub(rf"\1{REDACTED}@", text))
    return _KEY_SHAPES.sub(REDACTED, text)


def redact_url(url: str) -> str:
    """A URL fit to show (a status, a log line): a password before the host and the value of a query parameter
    named like a credential become ``****``; the rest still tells one endpoint from another."""
    if "@" not in url and "?" not in url:
        return url
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username or ''}:****@{netloc.rpartition('@')[2]}"
    query = urlencode(
        [(name, "****" if CREDENTIAL_NAME.search(name) else value) for name, value in parse_qsl(parts.query, True)],
        safe="*",
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query))
