"""The compacted output schema accepts and rejects exactly what the pydantic one does."""

from __future__ import annotations

import copy
import json

import pytest
from fastmcp.utilities.json_schema import dereference_refs
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
CONSENSUS = {"reached": True, "agreement": 1.0, "votes": 1, "answered": 1, "requested": 1, "groups": []}


def _schemas() -> tuple[dict, dict]:
    """The pydantic schema as is, and as the server lists it: inlined, then compacted."""
    original = QueryResult.model_json_schema()
    return original, compact_nullables(dereference_refs(copy.deepcopy(original)))


def test_nullable_unions_become_type_arrays() -> None:
    _, compact = _schemas()
    assert compact["properties"]["answer"]["type"] == ["string", "null"]
    assert "anyOf" not in compact["properties"]["answer"]


def test_nullable_nested_objects_become_type_arrays_too() -> None:
    _, compact = _schemas()
    model_result = compact["properties"]["results"]["items"]["properties"]
    assert model_result["usage"]["type"] == ["object", "null"]
    assert model_result["usage"]["required"] == ["input_tokens", "output_tokens"]
    assert model_result["error"]["type"] == ["object", "null"]
    assert compact["properties"]["consensus"]["type"] == ["object", "null"]
    assert "anyOf" not in json.dumps(compact)


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
        (lambda r: r["results"][0].update(usage={"input_tokens": 1}), False),
        (lambda r: r["results"][1].update(error="slow down"), False),
        (lambda r: r["results"][1].update(error={}), False),
        (lambda r: r.update(consensus={"reached": "yes"}), False),
        (lambda r: r.update(consensus=CONSENSUS), True),
    ],
)
def test_same_verdicts_as_the_original(change, valid: bool) -> None:
    original, compact = _schemas()
    document = copy.deepcopy(RESULT)
    change(document)
    assert Draft202012Validator(original).is_valid(document) is valid
    assert Draft202012Validator(compact).is_valid(document) is valid
