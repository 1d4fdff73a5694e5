"""Stored answers: a versioned JSON envelope (never pickle). Anything else under a key is a miss."""

from __future__ import annotations

import json
import time
from typing import Any

from ai_gateway.types import Completion, FinishReason, Usage

ENVELOPE_VERSION = 1
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode  # built once, not per call


def encode(completion: Completion) -> bytes:
    usage = completion.usage
    return _encode(
        {
            "v": ENVELOPE_VERSION,
            "text": completion.text,
            "finish_reason": str(completion.finish_reason),
            "raw_finish_reason": completion.raw_finish_reason,
            "model": completion.model,
            "response_id": completion.response_id,
            "usage": None
            if usage is None
            else [usage.input_tokens, usage.output_tokens, usage.cached_input_tokens, usage.reasoning_tokens],
            "stored_at": round(time.time(), 3),
        }
    ).encode()


def decode(raw: bytes) -> Completion | None:
    """The completion in ``raw``, or None for anything corrupt, foreign or from another version."""
    try:
        data: Any = json.loads(raw)
        if not isinstance(data, dict) or data.get("v") != ENVELOPE_VERSION:
            return None
        text = data["text"]
        if not isinstance(text, str) or not text.strip():
            return None
        usage = data["usage"]
        return Completion(
            text=text,
            finish_reason=FinishReason(data["finish_reason"]),
            usage=None if usage is None else Usage(*(_int_or_none(u) for u in usage)),  # type: ignore[arg-type]
            model=_str_or_none(data.get("model")),
            raw_finish_reason=_str_or_none(data.get("raw_finish_reason")),
            response_id=_str_or_none(data.get("response_id")),
        )
    except (ValueError, KeyError, TypeError, RecursionError):  # anything foreign is a miss
        return None


def _int_or_none(value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError("not an int")
    return value


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None
