"""The stored form: a versioned JSON envelope that round-trips; anything else under a key decodes to None."""

from __future__ import annotations

import json
import pickle

import pytest

from ai_gateway.cache.envelope import ENVELOPE_VERSION, decode, encode
from ai_gateway.types import Completion, FinishReason, Usage

FULL = Completion(
    text="Paris — la capitale 🇫🇷",
    finish_reason=FinishReason.LENGTH,
    usage=Usage(12, 7, cached_input_tokens=4, reasoning_tokens=2),
    model="gpt-4o-mini-2024-07-18",
    raw_finish_reason="length",
    response_id="chatcmpl-123",
)


@pytest.mark.parametrize(
    "completion",
    [
        FULL,
        Completion("Paris", FinishReason.STOP),
        Completion("call()", FinishReason.TOOL_CALLS, Usage(1, 2)),
    ],
    ids=["every field", "bare", "tool calls"],
)
def test_round_trip(completion: Completion) -> None:
    assert decode(encode(completion)) == completion


def test_the_envelope_is_versioned_json_not_pickle() -> None:
    data = json.loads(encode(FULL))
    assert data["v"] == ENVELOPE_VERSION == 1
    assert (data["text"], data["finish_reason"], data["usage"]) == (FULL.text, "length", [12, 7, 4, 2])
    assert isinstance(data["stored_at"], float)


def envelope(**changes: object) -> bytes:
    data = json.loads(encode(FULL))
    data.update(changes)
    return json.dumps({k: v for k, v in data.items() if v is not ...}).encode()


BAD: dict[str, bytes] = {
    "empty": b"",
    "not utf-8": b"\xff\xfe\x00garbage",
    "truncated": encode(FULL)[:-5],
    "plain text": b"Paris",
    "json null": b"null",
    "json list": b"[1, 2, 3]",
    "json number": b"42",
    "pickle": pickle.dumps(FULL.text),
    "other version": envelope(v=2),
    "version as text": envelope(v="1"),
    "no version": envelope(v=...),
    "no text": envelope(text=...),
    "empty text": envelope(text=""),
    "blank text": envelope(text="  \n"),
    "text not a string": envelope(text=["Paris"]),
    "unknown finish reason": envelope(finish_reason="exploded"),
    "finish reason not a string": envelope(finish_reason=3),
    "no usage field": envelope(usage=...),
    "usage as text": envelope(usage="12,7"),
    "usage too short": envelope(usage=[1]),
    "usage too long": envelope(usage=[1, 2, 3, 4, 5]),
    "usage with a float": envelope(usage=[1.5, 2, None, None]),
    "usage with a bool": envelope(usage=[True, 2, None, None]),
    "usage an object": envelope(usage={"input": 1}),
}


@pytest.mark.parametrize("name", list(BAD))
def test_corrupt_foreign_or_other_version_bytes_decode_to_none(name: str) -> None:
    assert decode(BAD[name]) is None


def test_odd_optional_fields_are_dropped_not_fatal() -> None:
    decoded = decode(envelope(model=5, raw_finish_reason=["x"], response_id=None))
    assert decoded is not None
    assert decoded.text == FULL.text
    assert (decoded.model, decoded.raw_finish_reason, decoded.response_id) == (None, None, None)


def test_deeply_nested_json_decodes_to_none() -> None:
    assert decode(b"[" * 100_000) is None
