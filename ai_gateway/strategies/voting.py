"""Answer normalisation and vote counting for the consensus strategy.

Two answers agree when their normalised forms are equal. Normalising folds
case and Unicode forms, drops Markdown markup, a leading "The answer is" (or
"Answer:", "Final answer:"...), quotes, brackets and sentence punctuation around
words, and writes numbers canonically ("4.0", "4", "four" and "**4.**" agree;
"1,000" is "1000"). It never drops a symbol an answer can be made of: "C++" and
"C", "10%" and "10", "2+2" and "22" stay apart (a false agreement is a false
consensus, and a false grade in an evaluation).

Ordering rule (documented in docs/strategies.md): groups are ranked by votes,
most first; equal votes are ranked by the request position of the group's
first model. A group's displayed answer is the raw text of its first model in
request order. Consensus is reached only when the leading group holds a strict
majority of the successful answers, so a tie at the top is never a consensus.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import lru_cache

_LEADING = re.compile(
    r"^(?:(?:so|thus|therefore|hence)[,:]?\s+)?(?:the\s+)?(?:final\s+|correct\s+)?(?:answer|result)"
    r"(?:\s+is|\s*[:=])\s*"
)
# Markup that starts a line (a heading, a quote, a bullet) says nothing about the answer.
_LINE_MARKUP = re.compile(r"^[ \t]*(?:#{1,6}|>|[-*+\u2022])[ \t]+", re.MULTILINE)
# What may wrap a word without being part of it: quotes and brackets, Markdown emphasis and code marks, and
# (after it) sentence punctuation. Symbols that can be part of an answer ("C++", "C#", "10%", "2+2", "x/2",
# "e^x", "-4") are never in these sets, so answers that differ by them never agree.
_EMPHASIS = "*_~`"
_OPENERS = "\"'“‘«‹([{<¿¡" + _EMPHASIS
_CLOSERS = "\"'”’»›)]}>.,;:!?…" + _EMPHASIS
_APOSTROPHES = re.compile(r"(?<=\w)['’](?=\w)")  # "it's" is "its": an apostrophe inside a word
_FOLD = str.maketrans({"\u2212": "-", "\u2012": "-", "\u2013": "-"})
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
    folded = unicodedata.normalize("NFKC", text).casefold().translate(_FOLD)
    folded = _LINE_MARKUP.sub("", folded).strip()
    previous = None
    while previous != folded:  # "Answer: the answer is 4" loses both prefixes
        previous = folded
        folded = _LEADING.sub("", folded.lstrip(_EMPHASIS + " "), count=1).strip()
    tokens = []
    for raw in folded.split():
        word = _APOSTROPHES.sub("", raw.lstrip(_OPENERS).rstrip(_CLOSERS))
        if word:
            tokens.append(_canonical_number(word) or word)
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
