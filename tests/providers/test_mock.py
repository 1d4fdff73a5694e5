"""The mock provider's model grammar: a name outside it is refused before any call, saying what is allowed."""

from __future__ import annotations

import pytest

from providers.mock import Behaviour, parse_model


@pytest.mark.parametrize(
    ("model", "behaviour"),
    [
        ("echo", Behaviour("echo", "", 0.0)),
        ("echo@20ms", Behaviour("echo", "", 0.02)),
        ("fixed:4@1.5s", Behaviour("fixed", "4", 1.5)),
        ("fail:rate_limited", Behaviour("fail", "rate_limited", 0.0)),
    ],
)
def test_names_inside_the_grammar(model: str, behaviour: Behaviour) -> None:
    assert parse_model(model) == behaviour


@pytest.mark.parametrize(
    ("model", "says"),
    [
        ("echo:anything", "echo takes no argument"),  # was accepted, and echoed
        ("fixed", "fixed needs a text"),
        ("fail:teapot", "fail needs one of"),
        ("shout", "unknown mock model"),
    ],
)
def test_names_outside_the_grammar_are_refused(model: str, says: str) -> None:
    problem = parse_model(model)
    assert isinstance(problem, str) and problem.startswith(says)
