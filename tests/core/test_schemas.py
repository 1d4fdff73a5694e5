"""The compacted output schema accepts and rejects exactly what the pydantic one does."""

from __future__ import annotations

import copy

import pytest
from jsonschema import Draft202012Validator

from ai_gateway.schemas import QueryResult, compact_nullables

RESULT = {
    "strategy": "consensus",
    "answer": "4",
    "model": "openai/gpt-4o-mini",
    "results": [
        {"model": "openai/gpt-4o-mini", "status": "ok", "text": "4", "latency_ms": 812.4,
         "usage": {"input_tokens": 12, "output_tokens": 1}, "error": None},
        {"model": "gemini/gemini-2.5-flash", "status": "error", "text": None, "latency_ms": 30.1, "usage": None,
         "error": {"code": "rate_limited", "message": "slow down"}},
    ],
    "consensus": None,
    "latency_ms": 813.0,
}  # fmt: skip


def _schemas() -> tuple[dict, dict]:
    original = QueryResult.model_json_schema()
    return original, compact_nullables(copy.deepcopy(original))


def test_nullable_unions_become_type_arrays() -> None:
    _, compact = _schemas()
    assert compact["properties"]["answer"]["type"] == ["string", "null"]
    assert "anyOf" not in compact["properties"]["answer"]


@pytest.mark.parametrize(
    ("change", "valid"),
    [
        (lambda r: None, True),
        (lambda r: r.update(answer=None, model=None), True),
        (lambda r: r["results"][0].update(text=5), False),
        (lambda r: r["results"][0].update(status="maybe"), False),
        (lambda r: r["results"][1]["error"].update(code=None), False),
        (lambda r: r.update(latency_ms="fast"), False),
        (lambda r: r["results"][0].update(usage={"input_tokens": "many", "output_tokens": 1}), False),
    ],
)
def test_same_verdicts_as_the_original(change, valid: bool) -> None:
    original, compact = _schemas()
    document = copy.deepcopy(RESULT)
    change(document)
    assert Draft202012Validator(original).is_valid(document) is valid
    assert Draft202012Validator(compact).is_valid(document) is valid
