"""Running an evaluation: each (row, sample) is one query; N run at once; each is written as it finishes.

Queries go through :meth:`Gateway.query` (validation, strategy, resilience,
cache: the ``query_models`` code path without the MCP framing) or, for
fidelity checks, through the ``query_models`` tool itself (:func:`tool_query`).
The results file is opened in append mode and flushed after every line, so an
interruption loses only the queries still in flight; a rerun skips the
(id, sample) pairs already in the file.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

try:
    import fcntl
except ImportError:  # not POSIX (Windows): runs are not kept apart there
    fcntl = None  # type: ignore[assignment]

from ai_gateway.answers import normalise
from ai_gateway.cache.store import CACHE_MODES
from ai_gateway.errors import InvalidArgument
from ai_gateway.evaluation.dataset import (
    QUESTION_FIELDS,
    EvalInputError,
    ResultsFile,
    Row,
    answered,
    read_results,
    row_key,
    ungraded_hint,
)
from ai_gateway.evaluation.summary import EvalSummary, billed, expected_form, summarise
from ai_gateway.pricing import from_usd_units, usd_units
from ai_gateway.strategies import STRATEGIES

if TYPE_CHECKING:
    from ai_gateway.gateway import Gateway
    from ai_gateway.settings import Settings

MAX_SAMPLES = 1000  # pass@k and self-consistency use tens; a typo's billion would be planned in memory first
QueryFn = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
# For a line holding a lone surrogate (half an emoji: in a model's answer, or a meta field), which UTF-8 cannot
# encode: escaped as \ud83d, it reads back as the same string.
_dumps_ascii = json.JSONEncoder(separators=(",", ":")).encode


class QueryFailed(Exception):
    """The query itself failed (no per-model results): recorded as the row's ``error``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class EvalConfig:
    models: tuple[str, ...]
    strategy: str = "first_available"
    samples: int = 1
    concurrency: int = 4
    cache: str = "use"
    temperature: float | None = None
    max_tokens: int | None = None
    timeout_s: float | None = None
    retry_failed: bool = False  # ask again the queries no model answered (their new lines supersede the old)

    def sample_arg(self, index: int) -> int | None:
        """The ``sample`` sent for sample ``index``: a function of the index and the temperature only, never of
        ``samples``, so a resume, a run extended to more samples and a replay all send the same arguments for
        the same sample and find the same cache entries.

        Above temperature 0 every sample sends its index (the gateway caches a sampled answer only with one).
        At temperature 0 (or unset) sample 0 sends none, so it is the plain query and shares its cache entry;
        sample i >= 1 sends i, a distinct entry."""
        if index > 0 or (self.temperature is not None and self.temperature > 0):
            return index
        return None

    def check(self) -> None:
        def bad(flag: str, message: str) -> EvalInputError:
            return option_error(flag, message)

        if not self.models:
            raise bad("--models", "name at least one model as provider/model")
        if self.strategy not in STRATEGIES:
            raise bad("--strategy", f"must be one of {', '.join(STRATEGIES)}; got {self.strategy!r}")
        if not 1 <= self.samples <= MAX_SAMPLES:
            raise bad("--samples", f"must lie between 1 and {MAX_SAMPLES:,}; got {self.samples:,}")
        if self.concurrency < 1:
            raise bad("--concurrency", f"must be 1 or more; got {self.concurrency}")
        if self.cache not in CACHE_MODES:
            raise bad("--cache", f"must be one of {', '.join(CACHE_MODES)}; got {self.cache!r}")
        if self.temperature is not None and not 0 <= self.temperature <= 2:
            raise bad("--temperature", f"must lie between 0 and 2; got {self.temperature:g}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise bad("--max-tokens", f"must be 1 or more; got {self.max_tokens}")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise bad("--timeout", f"must be a positive number of seconds; got {self.timeout_s:g}")


def option_error(flag: str, message: str) -> EvalInputError:
    return EvalInputError(f"{flag}: {message}", flag.removeprefix("--"), message)


def check_models(gateway: Gateway, config: EvalConfig) -> None:
    """Resolve the models once, before any query: an unknown model (or a temperature one of them refuses) is bad
    input, not 2,000 failed rows."""
    try:
        targets = gateway.resolve(config.models)
    except InvalidArgument as exc:
        raise option_error("--models", exc.message) from None
    try:
        gateway.check_temperature(targets, config.temperature)
    except InvalidArgument as exc:
        raise option_error("--temperature", exc.detail) from None


def fit_to(gateway: Gateway, plan: Plan) -> list[str]:
    """Before any query: check the models (EvalInputError), fit the concurrency to the gateway; return what the run
    should tell its user (in the CLI's option names), as the CLI and ``run_eval`` both do."""
    check_models(gateway, plan.config)
    notes = [lowered] if (lowered := fit_concurrency(gateway, plan)) is not None else []
    if hint := ungraded_hint(plan.rows):
        notes.append(hint)
    if plan.foreign:
        notes.append(
            f"{plan.foreign:,} line(s) of {plan.out} are for ids not in this dataset: left as they are, and not in "
            "this summary"
        )
    return notes


def fit_concurrency(gateway: Gateway, plan: Plan) -> str | None:
    """Lower the run's concurrency to what the gateway takes without shedding its own load; say so if it did.

    Past ``max_concurrency`` provider calls in flight (``max_concurrency_per_provider`` to one provider), the gateway
    fails the extra calls at once with ``overloaded``: a run asking more at once had queries the provider never saw
    written as unanswered, and graded wrong. A ``first_available`` query has one model in flight at a time, unless
    the gateway hedges (``AI_GATEWAY_HEDGE_AFTER_S``: a slow model is joined by the next, and so on); a ``fastest`` or
    ``consensus`` query has all of them. A replay (cache only) calls no provider.
    """
    config = plan.config
    if config.cache == "only":
        return None
    settings = gateway.settings
    if config.strategy == "first_available" and settings.hedge_after_s is None:
        allowed = min(settings.max_concurrency, settings.max_concurrency_per_provider)
    else:
        per_provider = Counter(target.provider for target in gateway.resolve(config.models))
        if config.strategy != "first_available":
            _check_one_query_fits(config.strategy, per_provider, settings)
        allowed = settings.max_concurrency // sum(per_provider.values())
        allowed = min(allowed, *(settings.max_concurrency_per_provider // n for n in per_provider.values()))
    allowed = max(1, allowed)
    if config.concurrency <= allowed:
        return None
    plan.config = replace(config, concurrency=allowed)
    return (
        f"--concurrency {config.concurrency} lowered to {allowed}: the gateway takes at most "
        f"{settings.max_concurrency} provider calls in flight (AI_GATEWAY_MAX_CONCURRENCY), "
        f"{settings.max_concurrency_per_provider} to one provider (AI_GATEWAY_MAX_CONCURRENCY_PER_PROVIDER), and "
        f"fails the rest at once; raise those to run more queries at once"
    )


def _check_one_query_fits(strategy: str, per_provider: Counter[str], settings: Settings) -> None:
    """A fastest or consensus query calls every model at once: one that alone passes the gateway's limits had the
    models past them fail ``overloaded`` in every row (a three-model vote run as a two-model one), and no lower
    concurrency helps. (A hedged first_available query is fitted instead: it starts its models one by one, and a
    hedge that is refused leaves the model it joined running.)"""
    total = sum(per_provider.values())
    provider, most = per_provider.most_common(1)[0]
    if most > settings.max_concurrency_per_provider:
        raise option_error(
            "--models",
            f"a {strategy} query calls its {total} models at once, {most} of them to {provider!r}, and the gateway "
            f"takes at most {settings.max_concurrency_per_provider} calls in flight to one provider: the rest would "
            f"fail 'overloaded' in every row; set AI_GATEWAY_MAX_CONCURRENCY_PER_PROVIDER to at least {most}, or "
            f"ask fewer models of {provider!r}",
        )
    if total > settings.max_concurrency:
        raise option_error(
            "--models",
            f"a {strategy} query calls its {total} models at once, and the gateway takes at most "
            f"{settings.max_concurrency} calls in flight: the rest would fail 'overloaded' in every row; set "
            f"AI_GATEWAY_MAX_CONCURRENCY to at least {total}, or ask fewer models",
        )


@dataclass(slots=True)
class RunState:
    """Live counters, read by progress displays (and by the CLI after an interruption)."""

    total: int
    done: int
    ran: int = 0
    cache_hits: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_units: int = 0  # answers from providers whose cost is known (see usd_units)
    saved_units: int = 0  # answers from the cache whose price is known
    unpriced: int = 0  # answers from providers with no known cost
    unpriced_cache_hits: int = 0
    started: float = field(default_factory=time.perf_counter)
    in_flight: int = 0  # queries asked and not yet written
    # Set by a first Ctrl-C: no new query starts, and those in flight finish and are written. Providers bill a
    # query that is cut off too; cancelled, it would be paid for again when the run resumes.
    stopping: bool = False

    def add(self, record: dict[str, Any]) -> None:
        self.done += 1
        self.ran += 1
        for r in record["results"]:
            if r.get("status") == "ok" and r.get("cached"):
                self.cache_hits += 1
                saved = r.get("cost_saved_usd")
                if saved is None:
                    self.unpriced_cache_hits += 1
                else:
                    self.saved_units += usd_units(saved)
                continue
            if not billed(r):
                continue
            usage = r.get("usage") or {}
            self.input_tokens += usage.get("input_tokens") or 0
            self.output_tokens += usage.get("output_tokens") or 0
            cost = r.get("cost_usd")
            if cost is None:
                self.unpriced += 1
            else:
                self.cost_units += usd_units(cost)

    @property
    def cost_usd(self) -> float:
        return from_usd_units(self.cost_units)

    @property
    def cost_saved_usd(self) -> float:
        return from_usd_units(self.saved_units)

    @property
    def rate(self) -> float:
        elapsed = time.perf_counter() - self.started
        return self.ran / elapsed if elapsed > 0 else 0.0


@dataclass(slots=True)
class Plan:
    """A checked dataset, its results file and what is left to run: built before any provider call."""

    dataset: Path
    out: Path
    rows: list[Row]
    config: EvalConfig
    existing: ResultsFile
    pending: list[tuple[Row, int]]
    state: RunState
    foreign: int = 0  # lines of the results file for ids this dataset does not have (left as they are)


def prepare(dataset: Path, rows: Sequence[Row], config: EvalConfig, out: Path) -> Plan:
    """Check the options and the results file; find the (row, sample) pairs still to run."""
    config.check()
    try:
        out_dir = out.parent.is_dir()
    except OSError as exc:  # a name over 255 bytes, a directory that may not be searched
        raise option_error("--out", f"{str(out)!r} is not a usable path ({exc.strerror})") from None
    if not out_dir:
        raise option_error("--out", f"directory {str(out.parent)!r} does not exist")
    if out.resolve() == dataset.resolve():
        raise option_error("--out", "must not be the dataset itself")
    existing = read_results(out)
    # Every line, not only those of this dataset's rows: one file never holds two setups' answers.
    for record in existing.records.values():
        _check_compatible(out, record, config)
        _check_same_sampling(out, record, record["sample"], config)
    pending: list[tuple[Row, int]] = []
    for row in rows:
        for sample in range(config.samples):
            record = existing.records.get(row_key(row.id, sample))
            if record is not None:
                _check_same_question(out, record, row)
            if record is None or (config.retry_failed and not answered(record)):
                pending.append((row, sample))
    foreign = _other_ids(out, existing, rows)
    queries = len(rows) * config.samples
    state = RunState(queries, queries - len(pending))
    return Plan(dataset, out, list(rows), config, existing, pending, state, foreign)


def _other_ids(out: Path, existing: ResultsFile, rows: Sequence[Row]) -> int:
    """How many lines of the results file are for ids not in this dataset; none for any of its ids is refused.

    A results file whose lines are all for other ids is another dataset's: the run was appended to it without a
    word. Some lines for other ids is a dataset edited since (rows dropped), which resumes."""
    ids = {row_key(row.id, 0)[0] for row in rows}
    others = [key for key, _ in existing.records if key not in ids]
    if not others or len(others) < len(existing.records):
        return len(others)
    loose = {str(json.loads(key)) for key in ids}
    typed = any(str(json.loads(key)) in loose for key in others)
    raise option_error(
        "--out",
        f"{out} holds {len(others):,} results line(s), none for an id of this dataset (e.g. id {others[0]}), so they "
        "are another dataset's"
        + ('; an id written as a number (1) and as a string ("1") are two ids' if typed else "")
        + ": choose another --out, or delete it to start over",
    )


def _check_compatible(out: Path, record: dict[str, Any], config: EvalConfig) -> None:
    """Resuming must not mix the answers of two different setups in one file. The message names the options that
    differ and both values of each, as for --temperature: "another setup" alone left the user to diff them."""
    models = [r.get("model") for r in record.get("results") or []]
    differ: list[tuple[str, str, str]] = []  # (option, the file's value, this run's)
    if record.get("strategy") != config.strategy:
        differ.append(("--strategy", str(record.get("strategy")), config.strategy))
    if models and models != list(config.models):  # a query that failed as a whole records no models
        differ.append(("--models", ",".join(map(str, models)), ",".join(config.models)))
    if not differ:
        return
    where = f"id {json.dumps(record.get('id'), ensure_ascii=False)}, sample {record.get('sample')}"
    raise option_error(
        "--out",
        f"{out} already holds results of another setup: written with "
        f"{' and '.join(f'{flag} {was}' for flag, was, _ in differ)} ({where}), this run has "
        f"{' and '.join(f'{flag} {now}' for flag, _, now in differ)}; rerun with "
        f"{' '.join(f'{flag} {was}' for flag, was, _ in differ)} to resume, or choose another --out",
    )


def _check_same_sampling(out: Path, record: dict[str, Any], sample: int, config: EvalConfig) -> None:
    """A done line must have been asked as this run would ask it: another temperature or output limit is another
    experiment, and another sample index another cache entry (a later ``--cache only`` replay would miss it).

    Lines that do not record the temperature or the sample index (older files) are not checked for them. Every
    version that could send ``max_tokens`` records it, so a line without one was sent none."""
    where = f"id {json.dumps(record.get('id'), ensure_ascii=False)}, sample {sample}"
    sent_with = [("--max-tokens", record.get("max_tokens"), config.max_tokens)]
    if "temperature" in record:
        sent_with.insert(0, ("--temperature", record["temperature"], config.temperature))
    for flag, was, now in sent_with:
        if was != now:
            raise option_error(
                "--out",
                f"{out} was written with {flag} {_setting(was)} ({where}), this run has {flag} {_setting(now)}; "
                f"rerun with {f'no {flag}' if was is None else f'{flag} {_setting(was)}'} to resume, "
                "or choose another --out",
            )
    sent = config.sample_arg(sample)
    if "sample_index" in record and record["sample_index"] != sent:
        raise option_error(
            "--out",
            f"{out} holds a line ({where}) sent with sample index {_setting(record['sample_index'], 'none')}, "
            f"but this run sends {_setting(sent, 'none')} for it (at --temperature {_setting(config.temperature)}), "
            "another cache entry; rerun with the options (and ai-gateway version) that wrote the file, "
            "or choose another --out",
        )


def _setting(value: Any, unset: str = "unset") -> str:
    return unset if value is None else json.dumps(value)


def _check_same_question(out: Path, record: dict[str, Any], row: Row) -> None:
    """A done line is the answer to the question it recorded, not to whatever row has its id now: a row inserted
    above rows with default (line-number) ids, or an edited prompt or system prompt, would otherwise get another
    question's answer."""
    if not any(name in record for name in ("prompt", "messages")):  # older lines did not record the question
        return
    asked = row.question()
    changed = [name for name in QUESTION_FIELDS if record.get(name) != asked.get(name)]
    if not changed:
        return
    if changed == ["system"] and "system" not in record:
        why = "the line was asked with no system prompt (its row had none, or an older version sent none)"
    else:
        why = "the dataset changed since those results were written"
    diff = "; ".join(f"{name} was {_excerpt(record.get(name))}, now {_excerpt(asked.get(name))}" for name in changed)
    raise option_error(
        "--out",
        f"{out} holds an answer to another question for id {json.dumps(row.id, ensure_ascii=False)} "
        f"(dataset line {row.line}): {diff}; {why}. Rerun with the dataset the results came from, "
        "or choose another --out",
    )


def _excerpt(value: Any, limit: int = 60) -> str:
    if value is None:
        return "none"
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def query_arguments(row: Row, sample: int, config: EvalConfig) -> dict[str, Any]:
    """The query_models arguments for one (row, sample); identical on every run with the same options."""
    args = row.question()
    args["models"] = list(config.models)
    args["strategy"] = config.strategy
    args["cache"] = config.cache
    for name, value in (
        ("sample", config.sample_arg(sample)),
        ("temperature", config.temperature),
        ("max_tokens", config.max_tokens),
        ("timeout_s", config.timeout_s),
    ):
        if value is not None:
            args[name] = value
    return args


def gateway_query(gateway: Gateway) -> QueryFn:
    """Queries through ``Gateway.query`` (the gateway of a running server's lifespan)."""
    from ai_gateway.schemas import ChatMessage

    async def query(args: dict[str, Any]) -> dict[str, Any]:
        if "messages" in args:
            args = {**args, "messages": [ChatMessage(**m) for m in args["messages"]]}
        try:
            result = await gateway.query(**args)
        except InvalidArgument as exc:
            raise QueryFailed("invalid_argument", exc.message) from None
        return result.model_dump(mode="json")

    return query


def tool_query(client: Any) -> QueryFn:
    """Queries through the ``query_models`` tool of a connected fastmcp Client (every MCP layer included)."""

    async def query(args: dict[str, Any]) -> dict[str, Any]:
        try:
            result = await client.call_tool_mcp("query_models", args)
        except Exception as exc:  # the MCP layer failed (e.g. a timeout): this query has no result
            raise QueryFailed("tool_error", f"{type(exc).__name__}: {exc}") from None
        if result.structured_content:  # also when no model answered: every outcome is still there
            return result.structured_content
        text = " ".join(getattr(block, "text", "") for block in result.content)
        raise QueryFailed("invalid_argument" if text.startswith("invalid argument") else "tool_error", text)

    return query


def make_record(row: Row, sample: int, config: EvalConfig, result: dict[str, Any] | None,
                failure: QueryFailed | None = None) -> dict[str, Any]:  # fmt: skip
    """One line of the results file."""
    record: dict[str, Any] = {"id": row.id, "sample": sample, **row.question(), "expected": row.expected}
    if row.meta is not None:
        record["meta"] = row.meta
    record["strategy"] = config.strategy
    # As sent: a resume checks them, so one file never mixes temperatures or cache entries of a sample.
    record["temperature"] = config.temperature
    record["max_tokens"] = config.max_tokens
    record["sample_index"] = config.sample_arg(sample)
    answer = result["answer"] if result is not None else None
    record["answer"] = answer
    record["model"] = result["model"] if result is not None else None
    if row.expected is None:
        record["correct"] = None
    else:
        record["correct"] = answer is not None and normalise(answer) == expected_form(row.expected)
    record["results"] = [_model_result(r) for r in result["results"]] if result is not None else []
    if result is not None and result.get("consensus"):
        c = result["consensus"]
        record["consensus"] = {"reached": c["reached"], "agreement": c["agreement"], "votes": c["votes"]}
    if failure is not None:
        record["error"] = {"code": failure.code, "message": failure.message}
    return record


def _model_result(r: dict[str, Any]) -> dict[str, Any]:
    usage = r.get("usage")
    error = r.get("error")
    return {
        "model": r["model"],
        "status": r["status"],
        "text": r.get("text"),
        "latency_ms": r.get("latency_ms"),
        "usage": {"input_tokens": usage["input_tokens"], "output_tokens": usage["output_tokens"]} if usage else None,
        "cached": r.get("cached", False),
        "cost_usd": r.get("cost_usd"),
        "cost_saved_usd": r.get("cost_saved_usd"),
        "attempts": r.get("attempts", 0),
        "finish_reason": r.get("finish_reason"),  # "length": cut off at the output limit, often graded wrong
        "error": error["code"] if error else None,
    }


async def execute(
    plan: Plan, query: QueryFn, on_record: Callable[[RunState], Awaitable[None] | None] | None = None
) -> EvalSummary:
    """Run the pending queries, ``plan.config.concurrency`` at a time, appending each line as it finishes.

    Cancellation (a second Ctrl-C, SIGTERM, a cancelled tool call) stops scheduling, cancels the
    queries in flight and re-raises; every line written so far stays in the file. ``state.stopping``
    (a first Ctrl-C) stops scheduling only: the queries in flight finish, are written, and the
    summary of the lines so far is returned.
    """
    config, state = plan.config, plan.state
    state.started = time.perf_counter()
    new: dict[tuple[str, int], dict[str, Any]] = {}
    todo = iter(plan.pending)

    with plan.out.open("a", encoding="utf-8") as out:
        _own(out, plan)
        if plan.existing.truncated_tail:  # an interrupted write: drop the partial line, its query runs again
            out.truncate(plan.existing.keep_bytes)
        if plan.existing.unterminated:
            out.write("\n")

        async def worker() -> None:
            while not state.stopping:
                pair = next(todo, None)  # shared: each pair is taken by exactly one worker
                if pair is None:
                    return
                row, sample = pair
                state.in_flight += 1
                try:
                    result, failure = await query(query_arguments(row, sample, config)), None
                except QueryFailed as exc:
                    result, failure = None, exc
                finally:
                    state.in_flight -= 1
                record = make_record(row, sample, config, result, failure)
                try:
                    out.write(_dumps(record) + "\n")
                except UnicodeEncodeError:  # encoded before anything is written: nothing half-written to undo
                    out.write(_dumps_ascii(record) + "\n")
                out.flush()
                new[row_key(row.id, sample)] = record
                state.add(record)
                if on_record is not None:
                    pending = on_record(state)
                    if inspect.isawaitable(pending):
                        await pending

        workers = [asyncio.create_task(worker()) for _ in range(min(config.concurrency, len(plan.pending)))]
        try:
            await asyncio.gather(*workers)
        except BaseException:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            raise
    return summary_of(plan, new, time.perf_counter() - state.started)


def _own(out: IO[str], plan: Plan) -> None:
    """This run alone writes the file until it ends (a lock the system drops if the process dies), and the file
    is as ``prepare`` read it. Two runs on one file asked every row twice and wrote every line twice; one
    finishing between another's reading and writing would be asked again too."""
    try:
        if fcntl is not None:
            fcntl.flock(out.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise option_error(
            "--out", f"another run is writing {plan.out}; wait for it to end, or choose another --out"
        ) from None
    if os.fstat(out.fileno()).st_size != plan.existing.size:
        raise option_error("--out", f"{plan.out} changed while this run started (another run?); run it again")


def summary_of(plan: Plan, new: dict[tuple[str, int], dict[str, Any]], elapsed_s: float) -> EvalSummary:
    config = plan.config
    expected: dict[tuple[str, int], str | None] = {}
    pairs = []
    for row in plan.rows:
        for sample in range(config.samples):
            key = row_key(row.id, sample)
            expected[key] = row.expected
            record = new.get(key) or plan.existing.records.get(key)
            if record is not None:
                pairs.append((key, record))
    # Lines of this dataset's queries that a later line replaced: in the file, and those this run asked again.
    superseded = [r for r in plan.existing.superseded if row_key(r["id"], r["sample"]) in expected]
    superseded += [plan.existing.records[key] for key in new if key in plan.existing.records]
    return summarise(
        pairs,
        expected,
        superseded=superseded,
        models=config.models,
        dataset=str(plan.dataset),
        results_path=str(plan.out),
        strategy=config.strategy,
        samples=config.samples,
        concurrency=config.concurrency,
        cache=config.cache,
        temperature=config.temperature,
        max_tokens=config.max_tokens,
        rows=len(plan.rows),
        queries=len(plan.rows) * config.samples,
        resumed=plan.state.total - len(plan.pending),
        ran=len(new),
        elapsed_s=round(elapsed_s, 3),
    )
