"""Answer normalisation: which answers count as the same vote."""

from __future__ import annotations

import re
from typing import Any

import pytest

from ai_gateway import answers
from ai_gateway.answers import normalise
from ai_gateway.strategies.voting import Tally


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("4", "four"),
        ("4", "4.0"),
        ("4", "**4.**"),
        ("4", "The answer is 4."),
        ("4", "Answer: 4"),
        ("4", "Final answer: the answer is 4"),
        ("Paris", "  paris  "),
        ("Paris", "PARIS!"),
        ("1000", "1,000"),
        ("3.50", "3.5"),
        ("New York", "new   york."),
        ("“Yes”", "yes"),
        ("Ｐａｒｉｓ", "paris"),  # full-width forms fold under NFKC
        ("It's 4.", "its 4"),
        (".5", "0.5"),
        ("\u22124", "-4"),
        ("3/4.", "3/4"),
        ("4", "**The answer is:** 4"),
        ("Paris", "# Paris"),
        ("Paris", "- Paris"),
        ("Paris", "> *Paris*"),
        ("B", "(B)"),
        ("x", "`x`"),
        ("C++", "The answer is C++."),
        ("snake_case", "`snake_case`"),
        # LaTeX and code wrappers, as math and code models answer
        ("4", "$4$"),
        ("4", "The answer is $4$."),
        ("4", "$$4$$"),
        ("4", "\\(4\\)"),
        ("4", "\\boxed{4}"),
        ("4", "$\\boxed{4}$"),
        ("Paris", "\\boxed{\\text{Paris}}"),
        ("4", "```\n4\n```"),
        ("Paris", "***Paris***"),
        # a number keeps its currency sign or percent, written canonically
        ("$1000", "$1,000.00"),
        ("50%", "50.0 %"),
        # quotes, full stops and dashes of other scripts and typographies; invisible characters
        ("Paris", "„Paris“"),
        ("Paris", "「Paris」"),
        ("東京", "東京。"),
        ("Paris", "\u200bParis\ufeff"),
        ("Paris", "Paris —"),
        ("Paris", "'Paris'"),
        ("US", "U.S."),
        ("Washington DC", "Washington, D.C."),
        ("x²", "x^2"),  # a superscript is a power, as models type it
        ("10⁻³", "10^-3"),
        ("5 m²", "5 m^2"),
        ("0.50", "0.5"),
        ("(B)", "B"),  # around one answer, brackets only wrap it
        ("(0, 1)", "The answer is **(0,1 )**."),
    ],
)
def test_equivalent_answers_normalise_alike(a: str, b: str) -> None:
    assert normalise(a) == normalise(b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("4", "5"),
        ("4", "40"),
        ("3.5", "35"),
        ("Paris", "Lyon"),
        ("-1", "1"),
        ("yes", "no"),
        ("The answer is 4", "The answer is 5"),
        (".5", "5"),
        ("\u22124", "4"),  # a Unicode minus sign is still a minus
        ("3/4", "34"),
        # A symbol that is part of the answer is never dropped: these would be false agreements.
        ("C++", "C"),
        ("C#", "C"),
        ("10%", "10"),
        ("2+2", "22"),
        ("2 + 2", "2 - 2"),
        ("x/2", "x2"),
        ("e^x", "ex"),
        ("2*3", "23"),
        ("$5", "5"),
        # comparisons, signs and operators standing alone are part of the answer
        ("x > 5", "x < 5"),
        ("x > 5", "x 5"),
        ("x <= 5", "x = 5"),
        ("> 5", "< 5"),
        ("<5", "5"),
        ("2 * 3", "2 : 3"),
        ("- 5", "+ 5"),
        ("2\n- 2", "2\n+ 2"),
        # names and notations whose symbols look like markup or punctuation
        ("__init__", "init"),
        ("_id", "id"),
        ("*args", "args"),
        ("**kwargs", "kwargs"),
        ("5!", "5"),
        ("f'", "f"),
        ("~5", "5"),
        ("5'10\"", "510"),
        ("$5 and $10", "5 and 10"),
        # NFKC writes superscripts and subscripts as plain digits: these agreed, and decided consensus votes
        ("2³", "23"),
        ("x²", "x2"),
        ("10⁻³", "10-3"),
        ("H₂O", "H2O"),  # the same molecule, but only a cost of a vote; "x₁" and "x1" are not the same
        # A leading zero is kept: ZIP codes, ids and a decimal comma are not the number without it
        ("02134", "2134"),
        ("007", "7"),
        ("0,5", "5"),
        # Brackets around a list say what it is: intervals open, closed and half-open; a set and a tuple
        ("(0, 1)", "[0, 1]"),
        ("(0, 1)", "(0, 1]"),
        ("The answer is [0, 1).", "[0, 1]"),
        ("{1, 2}", "(1, 2)"),
        ("(1, 2)", "1, 2"),
    ],
)
def test_different_answers_stay_apart(a: str, b: str) -> None:
    assert normalise(a) != normalise(b)


def test_numbers_are_written_canonically() -> None:
    assert normalise("The answer is 1,250.00") == "1250"
    assert normalise("-0.0") == "0"


def test_only_short_answers_are_remembered() -> None:
    """Answers are normalised again and again (vote, grading, summary); a long one would only fill memory."""
    long = "The answer is **Four**. " * 40
    before = answers._normalise_short.cache_info().currsize
    assert normalise(long) == answers._normalise(long) == "4" + " the answer is 4" * 39
    assert answers._normalise_short.cache_info().currsize == before
    assert normalise("**Four.**") == normalise("**Four.**") == "4"
    assert answers._normalise_short.cache_info().currsize == before + 1


class _CountingPattern:
    """``answers._PAIRED`` with its passes counted: one ``sub`` per pass over the answer."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern, self.passes = pattern, 0

    def sub(self, repl: Any, text: str) -> str:
        self.passes += 1
        return self.pattern.sub(repl, text)


def test_an_answer_of_a_phrase_repeated_is_read_in_a_bounded_number_of_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each pass took one leading phrase off and read the whole answer again: a model stuck in a loop ("the answer
    is the answer is ...", 112 KB) held the event loop every call shares for 17 s, in a vote (found by a review).
    The same for a quote or a \\boxed{} nested thousands deep. Past a dozen layers the rest is left as written."""
    counting = _CountingPattern(answers._PAIRED)
    monkeypatch.setattr(answers, "_PAIRED", counting)
    looped = normalise("The answer is " * 1000 + "4")
    assert counting.passes == answers._MAX_PASSES
    assert looped == "the answer is " * (1000 - answers._MAX_PASSES) + "4"
    counting.passes = 0
    assert normalise("Final answer: the answer is **$\\boxed{4}$**" + " " * 600) == "4"  # long: not remembered
    assert counting.passes <= 5  # the layers it has, and one to see nothing more came off
    assert normalise("'" * 5000 + "x" + "'" * 5000) == "'" * (5000 - answers._MAX_PASSES) + "x" + "'" * (
        5000 - answers._MAX_PASSES
    )


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        # An opener with no closer is left as written; the scan for a closer stops at the next opener, so each part
        # of the answer is read once (from every opener to the answer's end was O(length^2): 1.5 s for 20 KB).
        ("**a **b", "**a **b"),
        ("\\(x \\(y", "\\(x \\(y"),
        ("(1, 2", "1 2"),  # not a pair: its words
        # Nested pairs come off from the innermost, one layer a pass.
        ("\\(\\(4\\)\\)", "4"),
        ("\\[a \\[4\\] b\\]", "a 4 b"),
        ("**bold *and* bold**", "bold and bold"),
        ("(1, 2)", "(1,2)"),
    ],
)
def test_unclosed_and_nested_markup(text: str, normalised: str) -> None:
    assert normalise(text) == normalised


def test_answers_with_nothing_left_once_normalised_never_agree() -> None:
    """Two models answering "The answer is:" (or "...", or cut off at a tiny max_tokens) agree on nothing."""
    tally = Tally(requested=3)
    for position, text in enumerate(["The answer is:", "The answer is", "..."]):
        tally.add(position, text)
    assert (tally.answered, [g.votes for g in tally.ranked()]) == (3, [1, 1, 1])
    assert not tally.reached() and not tally.has_majority_of_requested()
    assert [g.normalized for g in tally.ranked()] == ["", "", ""] and tally.leader().members == [0]  # type: ignore[union-attr]

    for others in (["fail"], ["fail", "fail"]):  # the only answer given, with nothing in it, is no consensus either
        tally = Tally(requested=1 + len(others))
        tally.add(0, "The answer is:")
        assert tally.answered == 1 and not tally.reached()

    tally = Tally(requested=3)  # they still count as answered: two of three agreeing is a majority
    for position, text in enumerate(["Paris", "**", "paris."]):
        tally.add(position, text)
    assert tally.reached() and tally.leader().members == [0, 2]  # type: ignore[union-attr]


def test_tally_needs_a_strict_majority_of_the_answers() -> None:
    tally = Tally(requested=4)
    tally.add(0, "4")
    tally.add(1, "5")
    assert not tally.reached()  # 1 of 2 is not a strict majority
    tally.add(2, "four")
    assert tally.reached()  # 2 of 3
    assert not tally.has_majority_of_requested()  # 2 of 4 requested could still be tied
    tally.add(3, "4.0")
    assert tally.has_majority_of_requested()
