"""The text block of a large ``query_models`` result: each answer once.

A tool result carries its structured content twice: as ``structuredContent`` and, for clients that read only
text (and the LLMs they feed it to), as the same JSON in a text block. Inside it the chosen answer is there twice
(``answer`` and its model's ``text``), and a consensus group repeats its first member's text and its normalised
form. So one 300 KB answer made a 1.2 MB message, over the 1 MiB event the ``mcp`` SDK's HTTP client accepts by
default: the call was paid for and the client got a transport error.

Over ``LARGE_TEXT_CHARS`` of answer text, the text block keeps the result's JSON shape but says each answer once:
a later copy becomes a reference to the first (``"(same as answer)"``) and a group's normalised form is left to
``structuredContent``, which is unchanged and complete. Smaller results keep the full JSON in both.
"""

from __future__ import annotations

import json
from typing import Any

from fastmcp.tools import ToolResult
from mcp.types import TextContent

from ai_gateway.schemas import QueryResult

# Characters of answer text (every copy) above which the text block says each answer once. Well under the 1 MiB
# a client may take in one message, and far more than an LLM reading the text block is helped by seeing twice.
LARGE_TEXT_CHARS = 128 * 1024
OMITTED_NORMALIZED = "(left out of this text block: see structuredContent)"


def answer_chars(result: QueryResult) -> int:
    """Characters of answer text the result holds, every copy counted: cheap, read on every call."""
    chars = len(result.answer or "") + sum(len(r.text or "") for r in result.results)
    if result.consensus is not None:
        chars += sum(len(g.answer) + len(g.normalized) for g in result.consensus.groups)
    return chars


def large_result(result: QueryResult) -> ToolResult | None:
    """The tool result with each answer once in its text block, or None when the result is not large."""
    chars = answer_chars(result)
    if chars <= LARGE_TEXT_CHARS:
        return None
    structured = result.model_dump(mode="json")
    return ToolResult(
        content=[TextContent(type="text", text=json.dumps(each_answer_once(structured, chars), ensure_ascii=False))],
        structured_content=structured,
    )


def each_answer_once(structured: dict[str, Any], chars: int) -> dict[str, Any]:
    """A copy of the result's JSON where an answer already given is a reference to where it was first."""
    first_seen: dict[str, str] = {}

    def once(text: str | None, where: str) -> str | None:
        if text is None:
            return None
        if (seen := first_seen.get(text)) is not None:
            return f"(same as {seen})"
        first_seen[text] = where
        return text

    note = (
        f"a large result ({chars:,} characters of answers): this text gives each answer once; structuredContent "
        "holds the full result"
    )
    shown = {"note": note, **structured}
    shown["answer"] = once(structured["answer"], "answer")
    shown["results"] = [
        {**r, "text": once(r["text"], f"results[{i}].text")} for i, r in enumerate(structured["results"])
    ]
    if (consensus := structured.get("consensus")) is not None:
        groups = [
            {**g, "answer": once(g["answer"], f"consensus.groups[{i}].answer"), "normalized": OMITTED_NORMALIZED}
            for i, g in enumerate(consensus["groups"])
        ]
        shown["consensus"] = {**consensus, "groups": groups}
    return shown
