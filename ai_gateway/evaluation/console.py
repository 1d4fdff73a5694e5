"""``ai-gateway eval``: the runner behind a progress bar (stderr) and a summary table (stdout).

Exit codes: 0 every query answered (by at least one model), 1 some query got no
answer at all, 2 bad input (nothing was called), 3 the results file could not be written,
130 interrupted, 143 terminated (SIGTERM), 129 hung up (SIGHUP); finished rows are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ai_gateway.evaluation.dataset import EvalInputError, load_dataset
from ai_gateway.evaluation.runner import (
    EvalConfig,
    Plan,
    QueryFn,
    RunState,
    execute,
    fit_to,
    gateway_query,
    prepare,
    tool_query,
)
from ai_gateway.evaluation.summary import EvalSummary
from ai_gateway.pricing import plus_unpriced, usd

if TYPE_CHECKING:
    from ai_gateway.gateway import Gateway
    from ai_gateway.registry import Registry
    from ai_gateway.settings import Settings


class View(Protocol):
    """Where the run shows itself: the progress bar, or nothing (--no-progress)."""

    def start(self) -> None: ...
    def update(self, state: RunState, force: bool = False) -> None: ...
    def note(self, message: str) -> None: ...


EXIT_OK, EXIT_UNANSWERED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_WRITE_FAILED = 3
EXIT_TERMINATED = 128 + signal.SIGTERM
EXIT_HUNG_UP = 129  # 128 + SIGHUP (1, where there is one), as a shell reports a death by it
_REFRESH_S = 0.1  # progress fields are re-rendered at most this often
# Not a terminal (a CI log): a progress line at each tenth of the queries done, and on the first query done this long
# after the last line. CI runners end a job that writes nothing for ~10 minutes.
_LOG_EVERY_S = 60.0


def run_cli(
    args: Any,
    setup: Callable[[Any], Any],
    build: Callable[..., Any],
    registry: Callable[..., Any] | None = None,
) -> int:
    """The eval sub-command; ``setup``, ``build`` and ``registry`` are the CLI's own (settings, the MCP
    server for ``--via tool``, the provider registry for the default path)."""
    try:
        config = EvalConfig(
            models=tuple(args.models),
            strategy=args.strategy,
            samples=args.samples,
            concurrency=args.concurrency,
            cache=args.cache,
            temperature=args.temperature,
            max_tokens=args.max_tokens,
            timeout_s=args.timeout_s,
            retry_failed=args.retry_failed,
        )
        dataset = Path(args.dataset)
        plan = prepare(dataset, load_dataset(dataset), config, Path(args.out))
    except EvalInputError as exc:
        print(f"ai-gateway eval: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    settings, environ = setup(args)
    if config.cache == "only" and plan.pending and not settings.redis_url:
        print(
            "ai-gateway eval: --cache only replays answers from a cache that outlives a process, and "
            "AI_GATEWAY_REDIS_URL is not set: this process's embedded cache starts empty, so every query would be "
            "a cache_miss. Set AI_GATEWAY_REDIS_URL to the Redis the run filled (or replay with run_eval on the "
            "server that ran it)",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    if config.cache == "only" and plan.pending and (down := _unreachable(settings.redis_url.get_secret_value())):
        # Replayed, every query would be a cache_miss line, and a rerun would take those lines for done.
        print(
            f"ai-gateway eval: --cache only replays from the Redis at {down}; start it (or fix "
            "AI_GATEWAY_REDIS_URL) and run again. Nothing was written",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    # --no-progress (scripted runs): no bar, and rich (~40 ms of start-up) is never imported.
    view: View = NO_PROGRESS if args.no_progress else progress_view(plan.state)
    # Built before the progress bar shows: a bad provider configuration exits with its message first.
    if args.via == "tool":
        run = functools.partial(_run_tool, build(settings, environ), plan, view)
    else:
        from ai_gateway.registry import Registry

        providers = (registry or Registry.from_settings)(settings, environ)
        run = functools.partial(_run_gateway, settings, providers, plan, view)
    stopped_by: int | None = None  # the signal that ended the run at once (SIGTERM, SIGHUP), if one did
    # Decided as asyncio.run decides for its own handler (which replaces it by the time the run starts): a shell
    # that started this in the background ignores SIGINT for it, and Ctrl-C meant for the foreground must not stop it.
    ctrl_c = signal.getsignal(signal.SIGINT) is signal.default_int_handler
    # Likewise `nohup ai-gateway eval ...` ignores SIGHUP, so that the run outlives its terminal: it keeps doing so.
    sighup = getattr(signal, "SIGHUP", None)  # none on Windows
    hang_up = sighup is not None and signal.getsignal(sighup) is signal.SIG_DFL

    async def until_signalled() -> EvalSummary:
        """Ctrl-C stops the run in two steps. The first starts no new query and lets those in flight finish:
        providers bill a query that is cut off too, and a resume would pay for it again. The second (or the
        first, when nothing is in flight) cancels them. Either way every line written is kept.

        SIGTERM (a scheduler, a container stopping, whose grace period a slow query could outlast) and SIGHUP (the
        terminal closed, an SSH session dropped) cancel at once, as a second Ctrl-C does: the answers already
        written reach the cache before the process ends. Killed outright, a replay would miss the answers whose
        lines were written but whose cache writes were still under way."""
        main = asyncio.current_task()
        assert main is not None
        state = plan.state

        def terminate(signum: int) -> None:
            nonlocal stopped_by
            stopped_by = signum
            main.cancel()

        def interrupt() -> None:
            if state.stopping or not state.in_flight:
                main.cancel()
                return
            state.stopping = True
            n = state.in_flight
            view.note(
                f"ai-gateway eval: stopping: no new query starts; waiting for the {n} in flight to finish and be "
                f"kept (a provider bills {'it' if n == 1 else 'them'} even if stopped). Ctrl-C again to stop now"
            )

        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):  # no signals (Windows, not the main thread)
            loop.add_signal_handler(signal.SIGTERM, terminate, signal.SIGTERM)
            if hang_up and sighup is not None:
                loop.add_signal_handler(sighup, terminate, sighup)
            if ctrl_c:
                loop.add_signal_handler(signal.SIGINT, interrupt)  # in place of asyncio.run's (it cancels at once)
        return await run()

    try:
        with view:
            summary = asyncio.run(until_signalled())
    except EvalInputError as exc:
        print(f"ai-gateway eval: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:  # the results file could not be opened or written (disk full, permissions)
        state = plan.state
        print(
            f"ai-gateway eval: cannot write {plan.out} ({exc.strerror or type(exc).__name__}); {state.done} of "
            f"{state.total} queries done and kept there; free the space (or fix the permission) and run the same "
            "command again to resume",
            file=sys.stderr,
        )
        return EXIT_WRITE_FAILED
    except (KeyboardInterrupt, asyncio.CancelledError):
        if stopped_by is None:
            _say_stopped(plan, "interrupted")
            return EXIT_INTERRUPTED
        if stopped_by == signal.SIGTERM:
            _say_stopped(plan, "terminated")
            return EXIT_TERMINATED
        _say_stopped(plan, "hung up (SIGHUP: the terminal closed)")
        return EXIT_HUNG_UP
    if args.json_summary:
        print(summary.model_dump_json(indent=2))
    else:
        print_summary(summary)
    if summary.done < summary.queries and plan.state.stopping:  # stopped by a first Ctrl-C
        _say_stopped(plan, "interrupted")
        return EXIT_INTERRUPTED
    complete = summary.done == summary.queries and summary.unanswered == 0
    return EXIT_OK if complete else EXIT_UNANSWERED


def _unreachable(url: str) -> str | None:
    """The Redis URL (password redacted) and why, if a PING gets no answer within 2 s; else None."""
    import redis

    from ai_gateway.cache.redis_backend import failure_reason
    from ai_gateway.secrets import redact_url, url_password

    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2, retry=None)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        return f"{redact_url(url)}, which failed a PING ({failure_reason(exc, url_password(url))})"
    finally:
        client.close()
    return None


def _say_stopped(plan: Plan, how: str) -> None:
    state = plan.state
    # Hung up, stderr may be the terminal that is gone (EIO): the exit code says it all the same.
    with contextlib.suppress(OSError):
        print(
            f"ai-gateway eval: {how}; {state.done} of {state.total} queries done and kept in {plan.out} (run the "
            "same command again to resume)",
            file=sys.stderr,
            flush=True,
        )


async def _run_gateway(settings: Settings, registry: Registry, plan: Plan, view: View) -> EvalSummary:
    """The rows through ``Gateway.query``, the code path behind the tool, without the MCP server: no
    fastmcp import (~0.8 s of every run's start here) and no MCP framing per row."""
    from ai_gateway.gateway import running_gateway

    async with running_gateway(settings, registry) as gateway:
        return await _execute(gateway, plan, gateway_query(gateway), view)


async def _run_tool(server: Any, plan: Plan, view: View) -> EvalSummary:
    """The rows through the ``query_models`` tool of an in-memory MCP server (``--via tool``)."""
    from fastmcp import Client

    async with Client(server) as client:
        gateway = lifespan_gateway(server)
        return await _execute(gateway, plan, tool_query(client), view)


async def _execute(gateway: Gateway, plan: Plan, query: QueryFn, view: View) -> EvalSummary:
    for note in fit_to(gateway, plan):
        view.note(f"ai-gateway eval: {note}")
    if gateway.warm is not None:
        # Load what the run needs before its first row, off the loop: a replay (cache only) calls no
        # provider, so it needs at most the price table (for the cost it saved), not the HTTP stack; and
        # not the table either when its prices for these models are remembered.
        replay = plan.config.cache == "only"
        if replay:
            gateway.warm.skip_http()
        targets = gateway.resolve(plan.config.models)
        if not gateway.pricing.needs_table((target.provider, target.model) for target in targets):
            gateway.warm.skip_prices()
        await gateway.warm.wait(http=not replay)
    view.start()  # only now: a bad --models (or provider set-up) is its message alone, under no bar
    return await execute(plan, query, view.update)


def lifespan_gateway(server: Any) -> Gateway:
    """The Gateway of a server whose lifespan is running (inside ``async with Client(server)``).

    ``build_server``'s lifespan yields ``{"gateway": ...}``; fastmcp keeps what a lifespan
    yields on the server, where tools read it as ``ctx.lifespan_context``.
    """
    context = getattr(server, "_lifespan_result", None)
    if not isinstance(context, dict) or "gateway" not in context:
        raise RuntimeError("the server's lifespan is not running (no gateway in its context)")
    return context["gateway"]


def progress_view(state: RunState) -> View:
    """The bar on a terminal; elsewhere (a CI log, a file), a plain line now and then."""
    return ProgressView(state) if sys.stderr.isatty() else LogView(state)


class ProgressView:
    """A rich progress bar on stderr (queries done, rate, elapsed) over a line of running totals:
    cache hits, tokens, cost and cost saved so far (answers with no known price counted, never guessed)."""

    def __init__(self, state: RunState) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        from rich.text import Text

        class TwoLines(Progress):
            totals = ""

            def get_renderables(self) -> Any:
                yield self.make_tasks_table(self.tasks)
                yield Text(self.totals, no_wrap=True, overflow="ellipsis")

        self.state = state
        self.progress = TwoLines(
            TextColumn("eval"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            refresh_per_second=10,
        )
        self.task = self.progress.add_task("eval", total=state.total, completed=state.done, rate="")
        self._shown_at = 0.0
        self.started = False
        self.update(state, force=True)

    def update(self, state: RunState, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._shown_at < _REFRESH_S and state.done < state.total:
            return
        self._shown_at = now
        self.progress.totals = totals_line(state)
        self.progress.update(self.task, completed=state.done, rate=f"{_rate(state.rate)} q/s")

    def note(self, message: str) -> None:
        """A line above the bar (printed on its own, it would be drawn over)."""
        self.progress.console.print(message, highlight=False, markup=False)

    def start(self) -> None:
        self.progress.start()
        self.started = True

    def __enter__(self) -> ProgressView:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.started:
            self.update(self.state, force=True)
            # A terminal that hung up (EIO) must not turn the run's end into "cannot write the results file".
            with contextlib.suppress(OSError):
                self.progress.stop()


class LogView:
    """Progress where stderr is not a terminal (a CI log, a file): a bar redrawn in place cannot be drawn there, and
    rich prints only its final state, so a long run left the log silent until it ended (and a CI runner ends a job
    silent for ~10 minutes). A plain line instead, written as queries finish: at each tenth of them done, and on the
    first one done ``_LOG_EVERY_S`` after the last line; and the final line when the run ends."""

    def __init__(self, state: RunState) -> None:
        self.state = state
        self.started = False
        self._tenth = state.done * 10 // state.total  # resumed: the tenths already done are no news
        self._written_at = 0.0

    def start(self) -> None:
        self.started = True
        self._written_at = time.perf_counter()

    def update(self, state: RunState, force: bool = False) -> None:
        if not self.started or state.done >= state.total:  # the last query's line is the final one
            return
        tenth = state.done * 10 // state.total
        if tenth > self._tenth or time.perf_counter() - self._written_at >= _LOG_EVERY_S:
            self._tenth = tenth
            self._write(progress_line(state))

    def note(self, message: str) -> None:
        self._write(message)

    def _write(self, line: str) -> None:
        print(line, file=sys.stderr, flush=True)
        self._written_at = time.perf_counter()

    def __enter__(self) -> LogView:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.started:
            with contextlib.suppress(OSError):  # stderr gone: the results file is what counts
                self._write(progress_line(self.state))


class _NoProgress:
    def start(self) -> None:
        pass

    def update(self, state: RunState, force: bool = False) -> None:
        pass

    def note(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


NO_PROGRESS = _NoProgress()


def progress_line(state: RunState) -> str:
    """One line of progress for a log: queries done, the rate, the time taken and the running totals."""
    rate = _rate(state.rate)
    elapsed = datetime.timedelta(seconds=int(time.perf_counter() - state.started))
    return (
        f"eval {state.done:,}/{state.total:,} queries ({state.done * 100 // state.total}%) · {rate} q/s · {elapsed}"
        f" · {totals_line(state)}"
    )


def totals_line(state: RunState) -> str:
    """The line under the progress bar: running totals (answers with no known price counted, never guessed)."""
    return (
        f"cache hits {state.cache_hits:,} · tokens {state.input_tokens:,} in / {state.output_tokens:,} out"
        f" · cost {usd(state.cost_usd)}{plus_unpriced(state.unpriced)}"
        f" (saved {usd(state.cost_saved_usd)}{plus_unpriced(state.unpriced_cache_hits)})"
    )


def print_summary(summary: EvalSummary) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(width=None if sys.stdout.isatty() else 160)
    title = f"ai-gateway eval: {summary.strategy}, {summary.samples} sample(s) per row"
    if summary.temperature is not None:
        title += f", temperature {summary.temperature:g}"
    if summary.max_tokens is not None:
        title += f", at most {summary.max_tokens:,} tokens out"
    table = Table(title=title, box=box.SIMPLE)
    table.add_column("model", no_wrap=True)
    columns = (
        "answered",
        "errors",
        "cached",
        "tokens in/out",
        "saved in/out",
        "cost",
        "saved",
        "p50/p95 ms",
        "accuracy",
    )
    k = summary.samples
    if k > 1:
        columns += (f"pass@{k}/maj@{k}",)
    for name in columns:
        table.add_column(name, justify="left" if name == "errors" else "right")
    for m in summary.per_model:
        at_k = (f"{_pct(m.pass_at_k)}/{_pct(m.majority_at_k)} of {m.k_rows:,}" if m.k_rows else "-",) if k > 1 else ()
        table.add_row(
            Text(m.model),  # not markup: an id may hold brackets ("mock/fixed:[/x]"), which rich drops or fails on
            str(m.answered),
            ", ".join(f"{code} {n}" for code, n in m.errors.items()) or "-",
            f"{m.cache_hits} {_pct(m.cache_hit_rate, 0)}",
            f"{m.input_tokens:,}/{m.output_tokens:,}",
            f"{m.saved_input_tokens:,}/{m.saved_output_tokens:,}",
            _cost(m.cost_usd, m.unpriced, "unpriced"),
            _cost(m.cost_saved_usd, m.unpriced_cache_hits, "unpriced"),
            f"{_ms(m.latency_p50_ms)}/{_ms(m.latency_p95_ms)}",
            f"{_pct(m.accuracy)} {m.correct}/{m.graded}" if m.graded else "-",
            *at_k,
        )
    console.print(table)
    lines = [
        f"{summary.answered} of {summary.queries} queries answered"
        + (f", {summary.unanswered} with no answer" if summary.unanswered else "")
        + (f", {summary.queries - summary.done} not run" if summary.done < summary.queries else "")
        + f" ({summary.ran} run now, {summary.resumed} from an earlier run)",
    ]
    if summary.graded:
        lines.append(f"accuracy: {_pct(summary.accuracy)} ({summary.correct} of {summary.graded} graded queries)")
    if summary.pass_at_k is not None:
        lines.append(
            f"pass@{k}: {_pct(summary.pass_at_k)} · majority@{k}: {_pct(summary.majority_at_k)} "
            f"(over {summary.k_rows:,} rows with an expected answer and all {k} samples done)"
        )
    if summary.truncated:
        # A cut-off answer is usually graded wrong for its length, not its content: say so before anyone reads
        # the accuracy as the model's.
        by_model = ", ".join(f"{m.model} {m.truncated:,}" for m in summary.per_model if m.truncated)
        answers = f"{summary.truncated:,} answer{'s' * (summary.truncated != 1)}"
        if summary.max_tokens is not None:
            fix = "a higher --max-tokens lets them finish (in another --out: a results file keeps one limit)"
        else:
            fix = (
                "no --max-tokens was set, so the limit was the provider's default (Anthropic's adapter sends its "
                "default_max_tokens) or the model's own maximum; --max-tokens can raise a default"
            )
        lines.append(f"cut off at the output token limit: {answers} ({by_model}); {fix}")
    lines.append(
        f"tokens: {summary.input_tokens:,} in / {summary.output_tokens:,} out; saved by the cache: "
        f"{summary.saved_input_tokens:,} in / {summary.saved_output_tokens:,} out"
    )
    rate = f", {_rate(summary.queries_per_s)} queries/s" if summary.queries_per_s else ""
    lines.append(
        f"cost: {_cost(summary.cost_usd, summary.unpriced, 'answers with no known price')}; saved by the cache: "
        f"{_cost(summary.cost_saved_usd, summary.unpriced_cache_hits, 'cached answers with no known price')}"
    )
    if summary.superseded:
        lines.append(
            f"  (with what providers billed for {summary.superseded:,} earlier line{'s' * (summary.superseded != 1)} "
            "of queries asked again, which no longer count otherwise)"
        )
    if summary.unpriced or summary.unpriced_cache_hits:
        lines.append("  (set prices for models with none in AI_GATEWAY_MODEL_PRICES: see docs/configuration.md)")
    lines.append(f"time: {summary.elapsed_s:.2f}s{rate}")
    lines.append(f"results: {summary.results_path}")
    if summary.unanswered_cut_off:
        lines.append(
            f"{summary.unanswered_cut_off:,} with no answer were cut off at the output token limit before any text "
            "(a model that spent it thinking): asked again with the same limit, they fail alike"
        )
    if retry := summary.unanswered - summary.unanswered_cut_off:
        others = "other " if summary.unanswered_cut_off else ""
        # A replay asks no provider: rerun as it is, its misses would miss again.
        how = "without --cache only, with --retry-failed" if summary.cache == "only" else "with --retry-failed"
        lines.append(f"to ask the {retry:,} {others}with no answer again: the same command {how}")
    for line in lines:
        console.print(line, highlight=False, markup=False)


def _cost(total: float | None, unpriced: int, what: str) -> str:
    """A known sum and how many answers it leaves out: "$0.0123 + 4 unpriced", or "4 unpriced" alone."""
    if unpriced == 1:
        what = what.replace("answers", "answer", 1)
    if total is None:
        return f"{unpriced:,} {what}"
    return usd(total) + (f" + {unpriced:,} {what}" if unpriced else "")


def _rate(per_s: float) -> str:
    return f"{per_s:,.1f}" if per_s < 10 else f"{per_s:,.0f}"  # a slow model's 0.4 q/s is not 0


def _pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}%}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"
