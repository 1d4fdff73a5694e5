"""The MCP prompts (ready-made instructions that lead an agent to ``query_models``) and the check of their arguments.

No ``from __future__ import annotations`` here, and each argument's description is its default's ``Field``: fastmcp
appends "Provide a value matching the following JSON schema ... Encode non-string values as JSON." to the description
of every prompt argument whose annotation is not the ``str`` object itself. A string annotation (as that import makes
them) was all a client saw; ``Annotated[str, Field(...)]`` gets the note too, repeating the description, and as a
string annotation it cannot be resolved when the prompt is rendered.
"""

import json
from collections.abc import Sequence
from typing import Any

from fastmcp import FastMCP
from fastmcp.exceptions import ValidationError
from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext
from pydantic import Field

QUESTION = "The question to put to the models, as you would ask it."
MODELS = (
    "Comma-separated model ids as provider/model (e.g. 'openai/gpt-4o-mini, gemini/gemini-2.5-flash'). "
    "Left empty, the gateway's default models (AI_GATEWAY_DEFAULT_MODELS) apply; with none set, the prompt asks "
    "the agent to choose some with list_models."
)
ANSWER = "The answer to check; the models are asked the question without seeing it."


def add_prompts(mcp: FastMCP, default_models: Sequence[str] = ()) -> None:
    mcp.add_middleware(PromptArguments(mcp))

    def with_models(models: str) -> str:
        """How the prompt names the models: those given, else the defaults (named by none), else the way to choose.
        With no defaults, a prompt naming none led the agent to a call that could only be refused."""
        if chosen := [m.strip() for m in models.split(",") if m.strip()]:
            return f" with models={json.dumps(chosen)}"
        if default_models:
            return ""
        return (
            " and models set to two or three models of different providers (this gateway has no default models; "
            "call the list_models tool to see the configured providers and example ids)"
        )

    @mcp.prompt
    def compare_models(question: str = Field(description=QUESTION), models: str = Field("", description=MODELS)) -> str:
        """Ask several models the same question and compare their answers."""
        return (
            f"Use the query_models tool with strategy='consensus'{with_models(models)} to ask this question:\n\n"
            f"{question}\n\nThen compare the answers: say where the models agree, where they differ and why, which "
            "answer is best supported, and report the agreement ratio and any model that failed."
        )

    @mcp.prompt
    def second_opinion(
        question: str = Field(description=QUESTION),
        answer: str = Field(description=ANSWER),
        models: str = Field("", description=MODELS),
    ) -> str:
        """Check an answer against other models before relying on it."""
        return (
            f"Use the query_models tool with strategy='consensus'{with_models(models)} to ask the question below, "
            f"without showing the proposed answer to the models.\n\nQuestion: {question}\n\nProposed answer: "
            f"{answer}\n\nThen say whether the models' majority answer supports the proposed answer, and quote any "
            "dissent."
        )


class PromptArguments(Middleware):
    """Refuses a prompt request whose arguments are missing, empty or unknown, naming them (invalid params, -32602).

    Left to fastmcp, a missing argument is a ValueError that ``mask_error_details`` turns into a bare "Error
    rendering prompt" (-32603, an internal error, logged with a traceback as the server's fault), and an
    unknown argument (a misspelt one) is dropped without a word.
    """

    def __init__(self, server: FastMCP) -> None:
        self.server = server

    async def on_get_prompt(self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]) -> Any:
        name, given = context.message.name, context.message.arguments or {}
        prompt = await self.server.get_prompt(name)
        if prompt is not None:  # an unknown prompt: fastmcp's own "Unknown prompt" answers it
            problem = _problem(name, [(a.name, a.required) for a in prompt.arguments or ()], given)
            if problem:
                raise ValidationError(problem)
        return await call_next(context)


def _problem(prompt: str, declared: list[tuple[str, bool]], given: dict[str, Any]) -> str | None:
    known = [name for name, _ in declared]
    takes = f"it takes {_names(known)}" if known else "it takes none"
    required = [name for name, needed in declared if needed]
    if required:
        takes += " (all required)" if required == known else f" ({_names(required)} required)"
    if unknown := sorted(set(given) - set(known)):
        return f"prompt {prompt!r}: unknown {_arguments(unknown)}; {takes}"
    if missing := [n for n in required if n not in given]:
        return f"prompt {prompt!r}: missing {_arguments(missing)}; {takes}"
    if empty := [n for n in required if not str(given[n]).strip()]:
        return f"prompt {prompt!r}: {_arguments(empty)} must not be empty"
    return None


def _arguments(names: list[str]) -> str:
    return f"argument{'s' if len(names) > 1 else ''} {_names(names)}"


def _names(names: list[str]) -> str:
    return ", ".join(repr(n) for n in names)
