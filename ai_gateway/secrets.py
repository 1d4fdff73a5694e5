"""Keeping API keys out of everything the gateway prints, logs or returns."""

from __future__ import annotations

import re
from collections.abc import Iterable

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
    return _KEY_SHAPES.sub(REDACTED, text)
