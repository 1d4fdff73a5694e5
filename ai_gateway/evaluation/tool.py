"""The ``run_eval`` MCP tool: the runner on the server's own gateway, reporting progress per query."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastmcp.exceptions import ToolError

from ai_gateway.evaluation.dataset import EvalInputError, load_dataset
from ai_gateway.evaluation.runner import (
    EvalConfig,
    Plan,
    RunState,
    execute,
    fit_to,
    gateway_query,
    prepare,
)
from ai_gateway.evaluation.summary import EvalSummary
from ai_gateway.pricing import plus_unpriced, usd

_FIELDS = {"dataset": "path", "timeout": "timeout_s", "max-tokens": "max_tokens"}  # CLI option -> run_eval argument
# The runner's messages name the CLI's options; a run_eval caller passed arguments.
_CLI_OPTION = re.compile(
    r"(?<![\w-])--(models|strategy|samples|concurrency|cache|temperature|max-tokens|timeout|out|retry-failed)(?![\w-])"
)

if TYPE_CHECKING:
    from fastmcp import Context

    from ai_gateway.gateway import Gateway
QUIET = logging.INFO  # a caller's mistake, not the server's: no ERROR line with a traceback


def default_out(dataset: Path) -> Path:
    """``data.jsonl`` -> ``data.results.jsonl``, next to the dataset."""
    return dataset.with_name(f"{dataset.stem}.results.jsonl")


async def run_eval_tool(
    gateway: Gateway, ctx: Context, *, root: Path, path: str, out: str | None, **options: Any
) -> EvalSummary:
    """Check everything (paths inside ``root``, relative ones starting there), then run and summarise."""
    # Off the loop: reading and checking a big dataset and results file takes seconds, in which the server would
    # answer no other call.
    plan = await asyncio.to_thread(plan_eval, root, path, out, options)
    try:
        notes = fit_to(gateway, plan)
    except EvalInputError as exc:
        raise _argument_error(exc) from None
    for note in notes:  # a lowered concurrency: the summary's concurrency says so too
        await ctx.info(_CLI_OPTION.sub(lambda option: option[1], note))

    async def report(state: RunState) -> None:
        cost = usd(state.cost_usd) + plus_unpriced(state.unpriced)
        message = f"{state.done}/{state.total} queries, cache hits {state.cache_hits}, cost {cost}"
        await ctx.report_progress(state.done, state.total, message)

    try:
        return await execute(plan, gateway_query(gateway), report)
    except EvalInputError as exc:  # the results file, taken by another run before any query
        raise _argument_error(exc) from None
    except OSError as exc:  # the results file could not be written (disk full, permissions): the server's trouble
        state = plan.state
        raise ToolError(
            f"cannot write {plan.out} ({exc.strerror or type(exc).__name__}); {state.done} of {state.total} queries "
            "done and kept there; call run_eval again to resume once it can be written",
            log_level=logging.WARNING,
        ) from None


def plan_eval(root: Path, path: str, out: str | None, options: dict[str, Any]) -> Plan:
    """The checked plan, or a ToolError naming the argument at fault. Nothing is called yet."""
    dataset = _inside(root, path, "path")
    if not dataset.is_file():
        raise ToolError(f"invalid argument path: {path!r} is not a file (relative to {root})", log_level=QUIET)
    out_path = _inside(root, out, "out") if out else default_out(dataset)
    if not out and not out_path.resolve().is_relative_to(root):  # a symbolic link of that name, leading out
        raise ToolError(
            f"invalid argument out: the default results file {str(out_path)!r} (beside the dataset) leads outside "
            f"the evaluation directory {str(root)!r}; give out, a path inside it",
            log_level=QUIET,
        )
    if not out_path.parent.is_dir():
        raise ToolError(f"invalid argument out: directory {str(out_path.parent)!r} does not exist", log_level=QUIET)
    try:
        config = EvalConfig(models=tuple(options.pop("models")), **options)
        return prepare(dataset, load_dataset(dataset), config, out_path)
    except EvalInputError as exc:
        raise _argument_error(exc) from None


def _argument_error(exc: EvalInputError) -> ToolError:
    field = _FIELDS.get(exc.option, exc.option)
    detail = _CLI_OPTION.sub(lambda option: _FIELDS.get(option[1], option[1].replace("-", "_")), exc.detail)
    return ToolError(f"invalid argument {field}: {detail}", log_level=QUIET)


def _inside(root: Path, given: str, argument: str) -> Path:
    """``given`` (relative to ``root``) as an absolute path, refused unless it really lies inside ``root``.

    A client of an HTTP deployment is not the server's user: without this, run_eval would read any file the
    server can read and append to any file it can write. Resolving first means ``..`` and links that lead
    out are refused too. A path no file can have is refused here as well, naming the argument: its errors (a
    ValueError, a RuntimeError, an OSError) reached the caller as fastmcp's bare "Error calling tool".
    """

    def unusable(why: str) -> ToolError:
        return ToolError(f"invalid argument {argument}: {given!r} is not a usable path ({why})", log_level=QUIET)

    if "\0" in given:
        raise unusable("it holds a NUL byte, which no file name can")
    try:
        candidate = root / Path(given).expanduser()
    except RuntimeError:  # ~name, and the server has no user of that name
        raise unusable(
            f"{given.partition('/')[0]} is the home of no user on the server; write the path without ~"
        ) from None
    if not candidate.resolve().is_relative_to(root):
        raise ToolError(
            f"invalid argument {argument}: {given!r} lies outside the evaluation directory {str(root)!r}; "
            "give a path inside it (or start the server with AI_GATEWAY_EVAL_DIR set to the directory you need)",
            log_level=QUIET,
        )
    try:  # only inside: what a stat says of a path outside is none of the caller's business
        candidate.exists()  # raises for what resolve() lets by: a name over 255 bytes, a directory not searchable
    except OSError as exc:
        raise unusable(exc.strerror or type(exc).__name__) from None
    return candidate
