"""Answer normalisation: when two answers say the same thing (consensus votes, evaluation grades).

Two answers agree when their normalised forms are equal. Normalising folds
case and Unicode forms, unwraps paired Markdown and LaTeX markup, drops a
leading "The answer is" (or "Answer:", "Final answer:"...), quotes, brackets and
sentence punctuation around words, and writes numbers canonically ("4.0", "4",
"four", "$4$" and "**4.**" agree; "1,000" is "1000"). It never drops a symbol
an answer can be made of: "C++" and "C", "10%" and "10", "2+2" and "22",
"x > 5" and "x < 5" stay apart (a false agreement is a false consensus, and a
false grade in an evaluation). An answer that normalises to nothing ("...",
"The answer is:") agrees with no other. The rules, with examples: docs/strategies.md.
"""

from __future__ import annotations

import re
import unicodedata
from decimal import Decimal, InvalidOperation
from functools import lru_cache

_LEADING = re.compile(
    r"^(?:(?:so|thus|therefore|hence)[,:]?\s+)?(?:the\s+)?(?:final\s+|correct\s+)?(?:answer|result)"
    r"(?:\s+is\s*:?|\s*[:=])\s*"
)
# Markup that starts a line: a heading; a quote or a bullet unless a number follows ("- 5" and "> 5" may be the
# answer itself: read as markup, they would agree with "+ 5" and "< 5").
_LINE_MARKUP = re.compile(r"^[ \t]*(?:#{1,6}[ \t]+|(?:>|[-*+\u2022])[ \t]+(?![-+.]?\d))", re.MULTILINE)
# Paired markup around an answer or part of it: emphasis (*, **, ***), code spans and blocks, LaTeX math ($...$,
# $$...$$, \(...\), \[...\]) and \boxed{...} / \text{...}. Only in pairs: "*args", "**kwargs" and "$5" keep their
# symbols. Underscores are left alone ("__init__" and "_id" are names far more often than emphasis), and so is a
# strikethrough (~~5~~ is an answer taken back, not the answer).
_PAIRED = re.compile(
    r"```[^\n`]*\n(.*?)\n?[ \t]*```"  # a fenced code block, its language tag dropped
    r"|(?<![*\w])(?P<mark>\*{1,3}|`+)(?=\S)((?:(?!(?P=mark)).)+?)(?<=\S)(?P=mark)(?![*\w])"
    r"|\$\$(.+?)\$\$|(?<![\w$])\$(?=\S)([^$\n]+?)(?<=\S)\$(?![\w$])"
    r"|\\\(((?:[^\\]|\\(?![()]))+?)\\\)|\\\[((?:[^\\]|\\(?![\[\]]))+?)\\\]"
    r"|\\(?:boxed|text|textbf|mathrm|mathbf)\{([^{}]*)\}",
    re.DOTALL,
)
_MARK = _PAIRED.groupindex["mark"]  # the emphasis mark's group: matched, but never the content
# Characters that carry nothing: zero-width spaces and joiners, a byte-order mark.
_INVISIBLE = str.maketrans(dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff")))
_FOLD = str.maketrans({"\u2212": "-", "\u2012": "-", "\u2013": "-"})
# Superscripts and subscripts, which NFKC writes as plain digits and letters: "2³" agreed with "23", "x²" with "x2"
# and "10⁻³" with "10-3". A run of them is written as a power or an index ("2^3", "h_2o"), as models type them.
_RAISED = re.compile("[\u2070\u00b9\u00b2\u00b3\u2074-\u207f]+")
_LOWERED = re.compile("[\u2080-\u209c]+")
# What may wrap a word without being part of it: quotes and brackets, and (after it) sentence punctuation in several
# scripts. Symbols that can be part of an answer ("C++", "C#", "10%", "2+2", "x/2", "e^x", "-4", "x > 5", "f'")
# are never in these sets, so answers that differ by them never agree. A straight single quote only wraps a whole
# answer (see _QUOTED): as a closer it would make "f'" agree with "f".
_OPENERS = '"“‘„‚«‹([{¿¡「『【—'
_CLOSERS = '"”’“‘»›)]}.,;:!?…」』】。、—'  # “ and ‘ close a German quotation („so“)
_QUOTED = re.compile(r"^'(.+)'$", re.DOTALL)
_ITEM_SEPARATOR = re.compile(r"[,;](?!\d{3}(?!\d))")  # not the comma of a thousands group: "(1,000, 2)"
# Possessive, with the separator looked for apart: "[^...]*[,;][^...]*" tried every separator as the split when no
# bracket closed the text, ~4 s for 40 KB of "(1,1,1,...".
_COLLECTION = re.compile(r"^([(\[{])([^()\[\]{}]*+)([)\]}])[.!。]?$", re.DOTALL)
_SEPARATOR = re.compile(r"[,;]")
_APOSTROPHES = re.compile(r"(?<=[^\W\d_])['’](?=[^\W\d_])")  # "it's" is "its": an apostrophe between letters
_ABBREVIATION = re.compile(r"^(?:[^\W\d_]\.)+[^\W\d_]$")  # "u.s" (from "U.S."), "d.c": dotted letters
_SYMBOL_WORDS = {"*", ":", "~"}  # operators on their own ("2 * 3", "2 : 3"), not punctuation to drop
_NUMBER_START = frozenset("0123456789+-.$€£¥")
_AFFIXED_NUMBER = re.compile(r"^([$€£¥]?)(.+?)(%?)$")  # "$1,000", "50.0%": the number inside is canonical
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
# Each pass reads the whole answer and takes off one layer of each kind (a leading phrase, a quote, the pairs of
# markup innermost): markup nested deeper than this is left as it is. Unbounded, an answer of a phrase repeated
# ("the answer is the answer is ...", a model stuck in a loop) took O(length x repeats), 17 s for 112 KB, on the
# event loop every call shares.
_MAX_PASSES = 12


def normalise(text: str) -> str:
    return _normalise_short(text) if len(text) <= _MEMO_CHARS else _normalise(text)


@lru_cache(maxsize=4096)
def _normalise_short(text: str) -> str:
    return _normalise(text)


def _normalise(text: str) -> str:
    if not text.isascii():
        text = _LOWERED.sub(_index, _RAISED.sub(_power, text))
    folded = unicodedata.normalize("NFKC", text).translate(_INVISIBLE).casefold().translate(_FOLD)
    folded = _LINE_MARKUP.sub("", folded).strip()
    for _ in range(_MAX_PASSES):  # "Answer: the answer is 4" loses both prefixes; "**$4$**" both pairs
        previous = folded
        folded = _PAIRED.sub(_inside, folded)
        folded = _LEADING.sub("", folded, count=1).strip()
        folded = _QUOTED.sub(r"\1", folded)
        if folded == previous:
            break
    # "(0, 1)", "[0, 1]" and "(0, 1]" are different intervals, and "{1, 2}" a set, not the pair "(1, 2)": brackets
    # around a list are part of the answer, while around a single answer ("(B)") they only wrap it.
    if (collection := _COLLECTION.match(folded)) and _SEPARATOR.search(collection[2]):
        opener, inside, closer = collection.groups()
        return opener + ",".join(_words(item) for item in _ITEM_SEPARATOR.split(inside)) + closer
    return _words(folded)


def _words(folded: str) -> str:
    tokens: list[str] = []
    for raw in folded.split():
        opened = raw.lstrip(_OPENERS)
        word = opened.rstrip(_CLOSERS)
        if word == "%" and tokens and _canonical_number(tokens[-1]) is not None:
            tokens[-1] += "%"  # "10 %" is "10%"
            continue
        if not word.strip("*`"):  # punctuation, or emphasis and code marks left unpaired
            if raw in _SYMBOL_WORDS:
                tokens.append(raw)
            continue
        if word[-1].isdigit() and opened[len(word) :].startswith("!"):
            word += "!"  # "5!" is a factorial; "Yes!" is only emphatic
        if "'" in word or "’" in word:
            word = _APOSTROPHES.sub("", word)
        if "." in word and _ABBREVIATION.match(word):
            word = word.replace(".", "")
        if word[0] in _NUMBER_START or word in _WORDS:  # the rest cannot be a number: no regex for them
            word = _canonical_affixed(word) or word
        tokens.append(word)
    return " ".join(tokens)


def _power(match: re.Match[str]) -> str:
    return "^" + unicodedata.normalize("NFKC", match[0])


def _index(match: re.Match[str]) -> str:
    return "_" + unicodedata.normalize("NFKC", match[0])


def _inside(match: re.Match[str]) -> str:
    """The content of a paired markup match (whichever alternative matched; not the emphasis mark itself)."""
    return next(group for i, group in enumerate(match.groups(), 1) if group is not None and i != _MARK)


def _canonical_affixed(word: str) -> str | None:
    """A number, canonical, with its currency sign or percent kept: "$1,000.00" -> "$1000", "50.0%" -> "50%"."""
    if (number := _canonical_number(word)) is not None:
        return number
    if word[0] not in "$€£¥" and not word.endswith("%"):
        return None
    match = _AFFIXED_NUMBER.match(word)
    if match is None or (number := _canonical_number(match[2])) is None:
        return None
    return f"{match[1]}{number}{match[3]}"


def _canonical_number(token: str) -> str | None:
    if token in _WORDS:
        return _WORDS[token]
    if not _NUMBER.match(token):
        return None
    digits = token.lstrip("+-")
    if len(digits) > 1 and digits[0] == "0" and digits[1] != ".":
        return None  # "02134" (a ZIP code, an id) is not "2134", nor "0,5" (a decimal comma) "5": kept as written
    try:
        value = Decimal(token.replace(",", ""))
    except InvalidOperation:
        return None
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "+0") else text
