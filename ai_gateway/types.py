"""Normalised request and response types shared by the core and every adapter.

These are part of the public plugin contract: adapters (built-in and third-party)
import them, so they stay small, immutable and free of vendor details.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One chat turn to send to a model, independent of any vendor's dialect.

    ``messages`` may contain ``system`` messages; ``system`` is an extra system
    prompt that goes before them. Adapters whose API takes the system prompt
    outside the message list use :meth:`system_prompt` and :meth:`conversation`.
    ``None`` means "not set": an omitted temperature is not the same as 0.
    """

    messages: tuple[Message, ...]
    system: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None

    def system_prompt(self) -> str | None:
        """The system parameter plus every system message, in order, or None."""
        parts = [self.system] if self.system else []
        parts.extend(m.content for m in self.messages if m.role == "system")
        return "\n\n".join(parts) if parts else None

    def conversation(self) -> tuple[Message, ...]:
        """The user and assistant messages, without system messages."""
        return tuple(m for m in self.messages if m.role != "system")

    def alternating_turns(self, assistant_role: str = "assistant") -> list[tuple[str, str]]:
        """The conversation with runs of same-role messages merged into one turn.

        For APIs that reject two user (or two assistant) turns in a row; assistant
        turns are named ``assistant_role`` (Gemini calls them "model").
        """
        merged: list[tuple[str, str]] = []
        for m in self.conversation():
            role = assistant_role if m.role == "assistant" else m.role
            if merged and merged[-1][0] == role:
                merged[-1] = (role, f"{merged[-1][1]}\n\n{m.content}")
            else:
                merged.append((role, m.content))
        return merged

    def with_system_first(self) -> tuple[Message, ...]:
        """The message list with the ``system`` parameter as a leading system message."""
        if not self.system:
            return self.messages
        return (Message("system", self.system), *self.messages)


class FinishReason(StrEnum):
    """Why the model stopped, mapped from each vendor's own vocabulary."""

    STOP = "stop"
    LENGTH = "length"
    CONTENT_FILTER = "content_filter"
    TOOL_CALLS = "tool_calls"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts as the provider reported them.

    ``input_tokens`` includes cached input tokens (``cached_input_tokens`` is the
    part of it served from the provider's prompt cache), and ``output_tokens``
    includes reasoning tokens (the core prices them so); ``None`` means the
    provider did not say, never zero. Where a wire format omits a count to mean
    zero (Gemini, Ollama), adapters report 0.
    """

    input_tokens: int
    output_tokens: int
    cached_input_tokens: int | None = None
    reasoning_tokens: int | None = None

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True, slots=True)
class Completion:
    """A complete, successful answer from one model."""

    text: str
    finish_reason: FinishReason
    usage: Usage | None = None
    model: str | None = None  # the model name the vendor reported, if any
    raw_finish_reason: str | None = None
    response_id: str | None = None


def broken_character(text: str) -> int | None:
    """The position of the first thing in ``text`` that is no character, or None when it is valid Unicode text.

    JSON can carry half of a surrogate pair (``"\\ud83d"``, an emoji cut in two): no provider could be sent it
    and no cache key computed from it, so callers refuse it at their boundary, naming the field.
    """
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        return exc.start
    return None
