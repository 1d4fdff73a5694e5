"""Answer normalisation and vote counting for the consensus strategy.

Two answers agree when their normalised forms are equal. Normalising folds
case and Unicode forms, drops Markdown emphasis, a leading "The answer is" (or
"Answer:", "Final answer:"...), punctuation around and inside words, and writes
numbers canonically ("4.0", "4", "four" and "**4.**" agree; "1,000" is "1000").

Ordering rule (documented in docs/strategies.md): groups are ranked by votes,
most first; equal votes are ranked by the request position of the group's
first model. A group's displayed answer is the raw text of its first model in
request order. Consensus is reached only when the leading group holds a strict
majority of the successful answers, so a tie at the top is never a consensus.
"""

from __future__ import annotations

import re
import string
import unicodedata
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import lru_cache

_LEADING = re.compile(
    r"^(?:(?:so|thus|therefore|hence)[,:]?\s+)?(?:the\s+)?(?:final\s+|correct\s+)?(?:answer|result)"
    r"(?:\s+is|\s*[:=])\s*"
)
_MARKDOWN = re.compile(r"[*_`#]+")
_EDGE_PUNCT = string.punctuation + "“”‘’«»¿¡…–—"
# A leading sign or decimal point belongs to a number ("-4", ".5"), so those survive.
_LEADING_PUNCT = _EDGE_PUNCT.replace("-", "").replace("+", "").replace(".", "")
_FRACTION = re.compile(r"^\d+/\d+$")
_MINUS_SIGNS = str.maketrans({"\u2212": "-", "\u2012": "-", "\u2013": "-"})
_INNER_PUNCT = re.compile(r"[^\w]+")
_NUMBER = re.compile(r"^[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?$|^[-+]?\.\d+$")
_WORDS = {
    word: str(value)
    for value, word in enumerate(
        [
            "zero",
            "one",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
            "ten",
            "eleven",
            "twelve",
            "thirteen",
            "fourteen",
            "fifteen",
            "sixteen",
            "seventeen",
            "eighteen",
            "nineteen",
            "twenty",
        ]
    )
}
_WORDS.update({"thirty": "30", "forty": "40", "fifty": "50", "sixty": "60", "seventy": "70", "eighty": "80"})
_WORDS.update({"ninety": "90", "hundred": "100", "thousand": "1000"})


# An answer is normalised several times (its vote, the run's grading, the summary's per-model grading), and
# models often give the same short answer; a short answer is worth remembering, a long one is not.
_MEMO_CHARS = 512


def normalise(text: str) -> str:
    return _normalise_short(text) if len(text) <= _MEMO_CHARS else _normalise(text)


@lru_cache(maxsize=4096)
def _normalise_short(text: str) -> str:
    return _normalise(text)


def _normalise(text: str) -> str:
    folded = unicodedata.normalize("NFKC", text).casefold().translate(_MINUS_SIGNS)
    folded = _MARKDOWN.sub("", folded).strip()
    previous = None
    while previous != folded:  # "Answer: the answer is 4" loses both prefixes
        previous = folded
        folded = _LEADING.sub("", folded, count=1).strip()
    tokens = []
    for raw in folded.split():
        number = _canonical_number(raw.rstrip(_EDGE_PUNCT).lstrip(_LEADING_PUNCT))
        if number is not None:
            tokens.append(number)
            continue
        stripped = raw.strip(_EDGE_PUNCT)
        if _FRACTION.match(stripped):  # "3/4" must not become "34"
            tokens.append(stripped)
            continue
        cleaned = _INNER_PUNCT.sub("", stripped)
        if cleaned:
            tokens.append(cleaned)
    return " ".join(tokens)


def _canonical_number(token: str) -> str | None:
    if token in _WORDS:
        return _WORDS[token]
    if not _NUMBER.match(token):
        return None
    try:
        value = Decimal(token.replace(",", ""))
    except InvalidOperation:
        return None
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "+0") else text


@dataclass(slots=True)
class Group:
    normalized: str
    members: list[int] = field(default_factory=list)  # request positions, ascending

    @property
    def votes(self) -> int:
        return len(self.members)


@dataclass(slots=True)
class Tally:
    """Votes counted so far, by normalised answer."""

    requested: int
    groups: dict[str, Group] = field(default_factory=dict)
    answered: int = 0
    decided_early: bool = False

    def add(self, position: int, text: str) -> Group:
        key = normalise(text)
        group = self.groups.setdefault(key, Group(key))
        group.members.append(position)
        group.members.sort()
        self.answered += 1
        return group

    def has_majority_of_requested(self) -> bool:
        """True once no answer still outstanding could change the outcome."""
        return any(2 * g.votes > self.requested for g in self.groups.values())

    def ranked(self) -> list[Group]:
        return sorted(self.groups.values(), key=lambda g: (-g.votes, g.members[0]))

    def leader(self) -> Group | None:
        ranked = self.ranked()
        return ranked[0] if ranked else None

    def reached(self) -> bool:
        leader = self.leader()
        return leader is not None and 2 * leader.votes > self.answered
