"""The two files of an evaluation: the dataset (input) and the results (output, resumable).

Everything here is checked before any provider is called: a bad dataset line
or a results file that belongs to another run is an :class:`EvalInputError`
naming the file, the line and the field.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import stat
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ai_gateway.answers import normalise
from ai_gateway.types import broken_character

T = TypeVar("T")

ROLES = ("system", "user", "assistant")
RowId = str | int
QUESTION_FIELDS = ("prompt", "messages", "system")
# query_models arguments that are the run's options, the same for every row: one given per row would not be used.
RUN_OPTIONS = {
    "models": "--models",
    "strategy": "--strategy",
    "temperature": "--temperature",
    "sample": "--samples",
    "samples": "--samples",
    "cache": "--cache",
    "timeout_s": "--timeout",
    "max_tokens": "--max-tokens",
    # The same limit under each vendor's own name: kept as meta, it would look applied and not be.
    "max_completion_tokens": "--max-tokens",
    "max_output_tokens": "--max-tokens",
    "maxOutputTokens": "--max-tokens",
    "num_predict": "--max-tokens",
    "hedge_after_s": None,
    # Parameters query_models does not take: no run sends them (and a per-row model is the run's --models).
    "model": "--models",
    "seed": None,
    "stop": None,
    "stop_sequences": None,
    "n": None,
    "reasoning_effort": None,
    "response_format": None,
    "logit_bias": None,
    "top_p": None,
    "top_k": None,
    "presence_penalty": None,
    "frequency_penalty": None,
}


class EvalInputError(ValueError):
    """Bad input (exit code 2): names the file, the line and the field to fix.

    ``option`` is the command-line option at fault (``dataset``, ``out``, ``models``...) and
    ``detail`` the message without it; ``str()`` is the whole message, as the CLI prints it.
    """

    def __init__(self, message: str, option: str = "dataset", detail: str | None = None) -> None:
        super().__init__(message)
        self.option = option
        self.detail = detail or message


@dataclass(frozen=True, slots=True)
class Row:
    id: RowId
    line: int  # 1-based line number in the dataset
    prompt: str | None
    messages: tuple[dict[str, str], ...] | None  # [{role, content}] exactly as given
    expected: str | None
    system: str | None = None
    # Every other field of the line, as given (a category, a source...): copied to each of its results lines.
    meta: dict[str, Any] | None = None

    def question(self) -> dict[str, Any]:
        """What the row asks, as a results line records it: ``prompt`` or ``messages``, and ``system`` if given."""
        asked: dict[str, Any]
        asked = {"prompt": self.prompt} if self.prompt is not None else {"messages": list(self.messages or ())}
        if self.system is not None:
            asked["system"] = self.system
        return asked


def answered(record: dict[str, Any]) -> bool:
    """Some model answered the line's query (with consensus, whether or not they agreed)."""
    return any(r.get("status") == "ok" for r in record["results"])


def row_key(row_id: RowId, sample: int) -> tuple[str, int]:
    """(id, sample) as a dictionary key; the JSON form keeps 7 and "7" apart."""
    return json.dumps(row_id, ensure_ascii=False), sample


def jsonl_lines(text: str) -> list[str]:
    """The lines of JSONL text: split on "\\n" only, one trailing "\\r" dropped (CRLF files).

    Not ``str.splitlines()``: it also splits on U+2028, U+2029, U+0085 and others, which a JSON
    string may hold unescaped (``json.dumps(..., ensure_ascii=False)`` writes them raw).
    """
    return [line.removesuffix("\r") for line in text.split("\n")]


def load_dataset(path: Path) -> list[Row]:
    """Every row of a JSONL dataset, or an EvalInputError for the first bad line (blank lines skipped)."""
    try:
        # Bytes, then text: read_text's universal newlines would end a line at a lone "\r" too, which JSON allows
        # between tokens. A byte-order mark (Windows editors write one) is not a line.
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise EvalInputError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise EvalInputError(
            f"{path} line {line}: not UTF-8 text ({exc.reason} at byte {exc.start:,} of the file); save the file as "
            "UTF-8"
        ) from None
    except OSError as exc:
        raise EvalInputError(f"{path}: cannot read ({exc.strerror})") from None
    rows: list[Row] = []
    seen: dict[str, tuple[int, bool]] = {}  # id -> (the line that has it, whether that line gives it)
    for number, line in enumerate(jsonl_lines(text), start=1):
        if not line.strip():
            continue
        row, id_given = _parse_row(path, number, line)
        key = json.dumps(row.id, ensure_ascii=False)
        if key in seen:
            raise EvalInputError(_repeated_id(path, number, id_given, key, *seen[key]))
        seen[key] = number, id_given
        rows.append(row)
    if not rows:
        raise EvalInputError(f"{path}: no rows (expected one JSON object per line)")
    return rows


def _repeated_id(path: Path, number: int, id_given: bool, key: str, first: int, first_given: bool) -> str:
    """Which line's id is a default (its line number, when the line has no 'id') matters to the fix: a line with
    no 'id' field cannot be told that its field repeats another's."""
    if not id_given:
        return (
            f"{path} line {number}: no field 'id', so its id is its line number, {key}, which line {first} gives as "
            f"its 'id'; give line {number} an 'id' of its own (or line {first} another one)"
        )
    if not first_given:
        return (
            f"{path} line {number}: field 'id': {key} repeats the id of line {first}, which has no field 'id' (its id "
            f"is its line number); give line {number} another id, or line {first} an 'id' of its own"
        )
    return f"{path} line {number}: field 'id': {key} repeats the id of line {first}; give each row an id of its own"


def _parse_row(path: Path, number: int, line: str) -> tuple[Row, bool]:
    """The row, and whether it gives its id (else the id is its line number)."""
    where = f"{path} line {number}"
    repeated: list[bool] = []
    if line.startswith("\ufeff"):  # the file's own is dropped on reading: this one came with a file pasted in
        raise EvalInputError(
            f"{where}: starts with a byte-order mark (U+FEFF, the bytes EF BB BF), as where a file saved by an editor "
            "that writes one was appended; remove it"
        )
    try:
        data: Any = json.loads(
            line,
            parse_constant=_not_json,
            parse_float=_written_float,
            parse_int=_int,
            object_pairs_hook=functools.partial(_object, repeated),
        )
    except _Unreadable as exc:
        raise EvalInputError(f"{where}: {exc}") from None
    except ValueError as exc:
        hint = ""
        if isinstance(exc, json.JSONDecodeError) and exc.msg == "Extra data" and "\r" in line[: exc.pos]:
            # JSON reads a lone \r as blank space, so a file with old Mac line ends is one line of many objects.
            hint = "; its lines end with a lone \\r (old Mac line ends): save it with \\n (or \\r\\n) line ends"
        raise EvalInputError(f"{where}: not valid JSON ({exc}){hint}") from None
    except RecursionError:  # Python's parser recurses per level: ~1,000 levels end it with a traceback
        raise EvalInputError(f"{where}: nested too deeply to read (about 1,000 levels or more)") from None
    if not isinstance(data, dict):
        raise EvalInputError(
            f"{where}: expected a JSON object, got {type(data).__name__}; write one object per line, such as "
            '{"id": 1, "prompt": "..."}'
        )
    if repeated and (field := _first(data, "", _repeated_key)) is not None:
        raise EvalInputError(
            f"{where}: field {field!r} is given twice; JSON readers keep one of the two without a word (Python's the "
            "last, others the first), so the row means what its reader makes of it: keep the one you mean"
        )
    prompt, messages = data.get("prompt"), data.get("messages")
    if prompt is None and messages is None:
        raise EvalInputError(
            f"{where}: field 'prompt' (a string) or 'messages' (a list of {{role, content}}) is required"
        )
    if prompt is not None and messages is not None:
        raise EvalInputError(f"{where}: field 'prompt': give 'prompt' or 'messages', not both")
    if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
        raise EvalInputError(f"{where}: field 'prompt' must be a non-empty string")
    if prompt is not None:
        _check_unicode(where, "prompt", prompt)
    turns = _parse_messages(where, messages) if messages is not None else None
    row_id = data.get("id", number)
    if (
        isinstance(row_id, bool)
        or not isinstance(row_id, str | int)
        or (isinstance(row_id, str) and not row_id.strip())
    ):
        raise EvalInputError(f"{where}: field 'id' must be a non-empty string or an integer, got {row_id!r}")
    if isinstance(row_id, str):
        _check_unicode(where, "id", row_id)
    system = data.get("system")
    if system is not None and (not isinstance(system, str) or not system.strip()):
        raise EvalInputError(f"{where}: field 'system' must be a non-empty string (omit it for no system prompt)")
    if system is not None:
        _check_unicode(where, "system", system)
    expected = _parse_expected(where, data.get("expected"))
    for name in data.keys() & RUN_OPTIONS.keys():
        option = RUN_OPTIONS[name]
        how = f"set it for the whole run with {option}" if option else "the run sends none"
        raise EvalInputError(
            f"{where}: field {name!r} is a query option, not a dataset field: every row is asked with the run's "
            f"options ({how}); remove it from the dataset, or split the rows that need another value into their "
            "own dataset and run"
        )
    meta = {name: value for name, value in data.items() if name not in _ROW_FIELDS}
    if (huge := _first(meta, "", _beyond_double)) is not None:
        field, number_text = huge
        raise EvalInputError(
            f"{where}: field {field!r} is {number_text}, beyond the range of a double (about 1.8e308): copied to the "
            f'results line it would read Infinity, which is not JSON; write it as a string ("{number_text}") or '
            "within that range"
        )
    return Row(row_id, number, prompt, turns, expected, system, meta or None), "id" in data


_ROW_FIELDS = {"id", "expected", *QUESTION_FIELDS}
# Where other datasets keep their gold answer; ours is read from 'expected' only (grading a field we guessed could
# grade against reasoning text, or a label that is not the answer).
_GOLD_ELSEWHERE = ("answer", "answers", "target", "targets", "label", "gold", "ground_truth", "reference",
                   "solution", "correct_answer", "expected_answer", "expected_output", "output")  # fmt: skip


def ungraded_hint(rows: list[Row]) -> str | None:
    """When no row has 'expected' but rows hold a field other datasets keep their gold answer in: say so, or the
    run ends with no accuracy and nothing to say why."""
    if any(row.expected is not None for row in rows):
        return None
    names = Counter(name for row in rows if row.meta for name in row.meta)
    for gold in ("expected", *_GOLD_ELSEWHERE):  # in any case: "Expected" and "Answer" were not pointed out
        spellings = [name for name in names if name.casefold() == gold]
        if not spellings:
            continue
        name = max(spellings, key=names.__getitem__)
        holding = sum(1 for row in rows if row.meta and any(spelt in row.meta for spelt in spellings))
        why = "field names are case-sensitive" if gold == "expected" else "if it holds the gold answer"
        return (
            f"no row has 'expected', so no answer is graded; {holding:,} of {len(rows):,} rows have {name!r} "
            f"(kept in the results as given): {why}, rename it 'expected' to grade"
        )
    return None


def _parse_expected(where: str, expected: Any) -> str | None:
    if expected is None:
        return None
    if isinstance(expected, (_WrittenFloat, _NegativeZero)):
        expected = expected.text  # as written: 3.141592653589793238 read as a float and back lost digits
    elif isinstance(expected, int) and not isinstance(expected, bool):
        expected = str(expected)  # 4 is "4": answers are graded as text, and "4.0" normalises to "4" too
    if not isinstance(expected, str):
        raise EvalInputError(f"{where}: field 'expected' must be a string (or a number), got {type(expected).__name__}")
    _check_unicode(where, "expected", expected)
    if not normalise(expected):
        # Nothing to compare: every answer would be graded wrong (or, normalised to nothing too, right).
        raise EvalInputError(
            f"{where}: field 'expected' is {json.dumps(expected, ensure_ascii=False)}, which leaves nothing to "
            "compare an answer with (punctuation and Markdown do not count); give the answer, or omit 'expected' "
            "to leave the row ungraded"
        )
    return expected


class _WrittenFloat(float):
    """A JSON number with a fraction or an exponent, and its text: a float keeps 17 digits, and writes 1e3 as
    1000.0. Elsewhere in a row (its meta) it is the float it always was."""

    __slots__ = ("text",)
    text: str


def _written_float(text: str) -> float:
    number = _WrittenFloat(text)
    number.text = text
    return number


class _NegativeZero(int):
    """The JSON integer -0, the one whose text int() does not keep. Elsewhere in a row it is the 0 it always was."""

    text = "-0"


class _Repeats(dict[str, Any]):
    """A JSON object that gave ``key`` more than once (``dict`` kept the last)."""

    key: str


def _object(repeated: list[bool], pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object; one with a key given twice is marked, and ``repeated`` says there is one, to name its path."""
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    marked = _Repeats(obj)
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            marked.key = key
            break
        seen.add(key)
    repeated.append(True)
    return marked


def _first(value: Any, path: str, check: Callable[[Any, str], T | None]) -> T | None:
    """What ``check`` finds first in ``value`` (itself, then what it holds, depth first), given each part's path
    (``source.tags``, ``messages[0].role``)."""
    if (found := check(value, path)) is not None:
        return found
    children: Any = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for name, child in children:
        if (found := _first(child, _join(path, name), check)) is not None:
            return found
    return None


def _repeated_key(value: Any, path: str) -> str | None:
    """The path of the key an object gave twice."""
    return _join(path, value.key) if isinstance(value, _Repeats) else None


def _beyond_double(value: Any, path: str) -> tuple[str, str] | None:
    """The path and text of a number a double cannot hold (1e400 reads as inf)."""
    return (path, value.text) if isinstance(value, _WrittenFloat) and math.isinf(value) else None


def _join(path: str, name: str | int) -> str:
    if isinstance(name, int):
        return f"{path}[{name}]"
    return f"{path}.{name}" if path else name


class _Unreadable(ValueError):
    """Valid JSON this reader cannot take: said as it is, not as "not valid JSON"."""


def _int(text: str) -> int:
    """A JSON integer; past Python's limit on digits, a message for the dataset's author, not Python's advice to
    raise the limit."""
    digits = len(text) - text.startswith("-")
    limit = sys.get_int_max_str_digits()  # 0: no limit (PYTHONINTMAXSTRDIGITS=0)
    if limit and digits > limit:
        raise _Unreadable(
            f"a number of {digits:,} digits, more than can be read ({limit:,}); write it as a string (in quotes)"
        )
    return _NegativeZero() if text == "-0" else int(text)


def _not_json(constant: str) -> Any:
    # Python's json reads NaN and Infinity; copied to a results line (meta), they would make it unreadable elsewhere.
    raise ValueError(f"{constant} is not a JSON value; write null or a string")


def _parse_messages(where: str, messages: Any) -> tuple[dict[str, str], ...]:
    if not isinstance(messages, list) or not messages:
        raise EvalInputError(f"{where}: field 'messages' must be a non-empty list of {{role, content}}")
    turns = []
    for i, message in enumerate(messages):
        field = f"messages[{i}]"
        if not isinstance(message, dict):
            raise EvalInputError(f"{where}: field '{field}' must be an object {{role, content}}")
        extra = sorted(set(message) - {"role", "content"})
        if extra:
            raise EvalInputError(f"{where}: field '{field}' has unknown key(s) {extra}; allowed: role, content")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise EvalInputError(f"{where}: field '{field}.role' must be one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(content, str) or not content.strip():
            raise EvalInputError(f"{where}: field '{field}.content' must be a non-empty string")
        _check_unicode(where, f"{field}.content", content)
        turns.append({"role": role, "content": content})
    if not any(t["role"] == "user" for t in turns):
        raise EvalInputError(f"{where}: field 'messages' must contain at least one message with role 'user'")
    return tuple(turns)


def _check_unicode(where: str, field: str, text: str) -> None:
    """Caught here, a lone surrogate is one bad line; left in, it fails the run at its first cache key."""
    if (at := broken_character(text)) is not None:
        raise EvalInputError(
            f"{where}: field '{field}' is not valid Unicode (a lone surrogate, \\u{ord(text[at]):04x}, at "
            f"character {at}, e.g. half of an emoji cut off); write the whole character or remove it"
        )


@dataclass(slots=True)
class ResultsFile:
    """What an earlier run left in the results file."""

    # By row_key(id, sample). The last line wins: a query asked again (--retry-failed) appends its new line.
    records: dict[tuple[str, int], dict[str, Any]]
    keep_bytes: int  # the complete lines; anything after them is an interrupted write
    truncated_tail: bool
    # The last line is a whole record without its newline (the file was edited, or copied): kept, and the
    # next line written starts with the newline it lacks.
    unterminated: bool = False
    size: int = 0  # bytes when read: a run finds out whether another one wrote since
    # Earlier lines a later one for the same query replaced, in file order: no longer the query's result, but
    # what their providers billed was paid all the same, and the summary's tokens and cost count it.
    superseded: list[dict[str, Any]] = field(default_factory=list)


_LINE_START = b'{"id":'  # how every line of a results file begins (runner.make_record puts the id first)


def read_results(path: Path) -> ResultsFile:
    """The finished (id, sample) records of ``path`` (absent: none); of two lines for one, the later.

    A last line without its newline is ours cut off mid-write only if it starts as our lines do (or is a start of
    that, cut shorter); then it is dropped (its query runs again). Anything else there is refused, never cut: the
    file may be someone's notes, or another dataset, given as ``--out`` by mistake.
    """
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            # Read to the end to resume from: /dev/full never ends (the run ate memory until killed), a pipe waits.
            raise EvalInputError(
                f"{path}: not a regular file (a directory, a device or a pipe); the results file is read back to "
                "resume, so --out must be a file (choose another --out)",
                "out",
            )
        data = path.read_bytes()
    except FileNotFoundError:
        return ResultsFile({}, 0, False)
    except OSError as exc:
        raise EvalInputError(f"{path}: cannot read the results file ({exc.strerror})", "out") from None
    keep = data.rfind(b"\n") + 1
    unterminated = False
    tail = data[keep:]
    if tail and _LINE_START.startswith(tail):
        pass  # cut off within the line's first bytes ('{"i', after a full disk): dropped
    elif tail.strip() and not tail.startswith(_LINE_START):
        keep, unterminated = len(data), True  # a whole line or not ours: read (and so checked) as the others
    elif tail.startswith(_LINE_START):
        try:
            with contextlib.suppress(RecursionError):  # whole, and nested too deep to be ours: read (and refused)
                json.loads(tail)
        except ValueError:
            pass  # cut off mid-write: dropped
        else:
            keep, unterminated = len(data), True
    records: dict[tuple[str, int], dict[str, Any]] = {}
    superseded: list[dict[str, Any]] = []
    # b"\n" only: bytes.splitlines() also splits on a lone b"\r", which JSON allows between tokens.
    for number, raw in enumerate((line.removesuffix(b"\r") for line in data[:keep].split(b"\n")), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: nested ~1,000 levels deep, no line of ours
            raise EvalInputError(
                f"{path} line {number}: not valid JSON; this is not a results file of ai-gateway eval "
                "(choose another --out)",
                "out",
            ) from None
        problem = _id_or_sample_problem(record) if isinstance(record, dict) else "not a JSON object"
        if problem:
            raise EvalInputError(
                f"{path} line {number}: {problem}; this is not a results file of ai-gateway eval "
                "(choose another --out)",
                "out",
            )
        results = record.get("results")
        if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
            # Some other tool's line with an "id" and a "sample": reading it as ours would crash further on.
            got = "missing" if results is None else "not a list of objects"
            raise EvalInputError(
                f"{path} line {number}: field 'results' {got} (one object per model); this is not a results file "
                "of ai-gateway eval (choose another --out)",
                "out",
            )
        key = row_key(record["id"], record["sample"])
        if (earlier := records.get(key)) is not None:
            superseded.append(earlier)
        records[key] = record
    return ResultsFile(records, keep, keep < len(data), unterminated, len(data), superseded)


def _id_or_sample_problem(record: dict[str, Any]) -> str | None:
    """What is wrong with a results line's id and sample, said as it is: a ``"sample": 0.0`` is there, but is
    not the whole number every line of ours holds."""
    for name, kinds, want in (("id", (str, int), "a string or an integer"), ("sample", (int,), "an integer")):
        if name not in record:
            return f"field '{name}' missing"
        value = record[name]
        if isinstance(value, bool) or not isinstance(value, kinds):
            return f"field '{name}' is {json.dumps(value)[:40]}, not {want}"
    return None
