"""The summary of an evaluation run: what ``run_eval`` returns and ``ai-gateway eval`` prints.

Computed from every record of the results file that belongs to the dataset,
so a resumed run summarises the whole dataset, not just the rows it ran.
"""

from __future__ import annotations

import functools
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel, Field

from ai_gateway.answers import normalise
from ai_gateway.pricing import from_usd_units, usd_units
from ai_gateway.resilience.health import percentile

# Answers are graded by normalised equality (as consensus votes are); each expected answer is normalised once.
expected_form = functools.lru_cache(maxsize=8192)(normalise)


class ModelStats(BaseModel):
    model: str
    answered: int = Field(description="Queries (row x sample) this model answered.")
    errors: dict[str, int] = Field(default_factory=dict, description="Failed queries by error code.")
    cancelled: int = Field(0, description="Calls cancelled because another model answered first (not errors).")
    skipped: int = Field(0, description="Calls never started (first_available: an earlier model answered).")
    cache_hits: int = Field(0, description="Answers served from the response cache.")
    truncated: int = Field(
        0, description="Its calls cut off at the output token limit (finish_reason length), empty answers included."
    )
    cache_hit_rate: float | None = Field(None, description="cache_hits / (answered + errors).")
    input_tokens: int = Field(
        0, description="Tokens sent to the provider (answers from the cache excluded; superseded lines' included)."
    )
    output_tokens: int = Field(
        0, description="Tokens the provider generated (answers from the cache excluded; superseded lines' included)."
    )
    saved_input_tokens: int = Field(0, description="Input tokens of the answers served from the cache.")
    saved_output_tokens: int = Field(0, description="Output tokens of the answers served from the cache.")
    cost_usd: float | None = Field(
        0.0,
        description="USD of its calls a provider billed (answers, and empty answers, superseded lines' included) "
        "whose cost is known; null when none of them is priced.",
    )
    cost_saved_usd: float | None = Field(
        0.0, description="USD its answers served from the cache would have cost; null when none of them is priced."
    )
    unpriced: int = Field(0, description="Calls a provider billed with no known cost (not in cost_usd).")
    unpriced_cache_hits: int = Field(
        0, description="Answers from the cache with no known price (not in cost_saved_usd)."
    )
    latency_p50_ms: float | None = Field(None, description="Nearest-rank p50 latency of its answers.")
    latency_p95_ms: float | None = Field(None, description="Nearest-rank p95 latency of its answers.")
    graded: int = Field(0, description="Its answers to rows with an expected answer.")
    correct: int = Field(0, description="Graded answers equal to the expected one after normalisation.")
    accuracy: float | None = Field(None, description="correct / graded; null when nothing was graded.")
    k_rows: int = Field(
        0,
        description="Several samples per row: the rows with an expected answer where this model was asked every "
        "sample (answered or failed; not cancelled or skipped by the strategy), over which its pass_at_k and "
        "majority_at_k are taken.",
    )
    pass_at_k: float | None = Field(
        None, description="Several samples per row (k): share of its k_rows where one of its k answers is correct."
    )
    majority_at_k: float | None = Field(
        None, description="Several samples per row (k): share of its k_rows where its most common answer is correct."
    )


class EvalSummary(BaseModel):
    dataset: str
    results_path: str
    strategy: str
    models: list[str]
    samples: int
    concurrency: int = Field(
        description="Queries in flight at once: as asked, or lowered to what the gateway's concurrency limits take "
        "(AI_GATEWAY_MAX_CONCURRENCY, AI_GATEWAY_MAX_CONCURRENCY_PER_PROVIDER)."
    )
    cache: str
    temperature: float | None = Field(None, description="The temperature sent with every query (null: none).")
    max_tokens: int | None = Field(None, description="The output token limit sent with every query (null: none).")
    rows: int = Field(description="Rows in the dataset.")
    queries: int = Field(description="rows x samples.")
    done: int = Field(description="Queries with a line in the results file (this run and earlier ones).")
    answered: int = Field(description="Done queries that at least one model answered.")
    unanswered: int = Field(description="Done queries that no model answered.")
    unanswered_cut_off: int = Field(
        0,
        description="Unanswered queries whose every failed model was cut off at the output token limit before "
        "writing any text (a reasoning model that spent the limit thinking): asked again with the same limit, they "
        "fail alike.",
    )
    resumed: int = Field(description="Queries already in the results file when this run started (not re-run).")
    ran: int = Field(description="Queries this run finished.")
    graded: int = Field(0, description="Done queries whose row has an expected answer.")
    correct: int = Field(
        0, description="Graded queries whose chosen answer matches the dataset's current expected answer."
    )
    accuracy: float | None = Field(
        None,
        description="correct / graded (a query with no answer counts as wrong); with several samples per row, the "
        "mean over samples (pass@1).",
    )
    k_rows: int = Field(
        0,
        description="Several samples per row: the rows with an expected answer whose samples are all done, over "
        "which pass_at_k and majority_at_k are taken.",
    )
    pass_at_k: float | None = Field(
        None, description="Several samples per row (k): share of k_rows where at least one sample's answer is correct."
    )
    majority_at_k: float | None = Field(
        None,
        description="Several samples per row (k): share of k_rows where the most common normalised answer of the k "
        "samples is correct (self-consistency; samples with no answer, or one that normalises to nothing, do not vote; "
        "a tie goes to the answer of the lowest sample).",
    )
    superseded: int = Field(
        0,
        description="Lines of this dataset's queries that a later line for the same query replaced (asked again "
        "with --retry-failed): only the calls providers billed for them still count, in the tokens and cost.",
    )
    cache_hits: int = Field(0, description="Model answers served from the response cache.")
    truncated: int = Field(
        0, description="Model calls cut off at the output token limit (finish_reason length), empty answers included."
    )
    input_tokens: int = Field(0, description="Tokens providers billed (superseded lines' included).")
    output_tokens: int = 0
    saved_input_tokens: int = Field(0, description="Tokens the cache saved (usage of answers served from it).")
    saved_output_tokens: int = 0
    cost_usd: float | None = Field(
        0.0,
        description="USD of the calls providers billed (answers, and empty answers, superseded lines' included) "
        "whose cost is known; null when none of them is priced.",
    )
    cost_saved_usd: float | None = Field(
        0.0, description="USD the answers served from the cache would have cost; null when none of them is priced."
    )
    unpriced: int = Field(0, description="Calls providers billed with no known cost (not in cost_usd).")
    unpriced_cache_hits: int = Field(
        0, description="Answers from the cache with no known price (not in cost_saved_usd)."
    )
    elapsed_s: float = Field(description="Wall-clock time of this run.")
    queries_per_s: float | None = Field(None, description="ran / elapsed_s.")
    per_model: list[ModelStats]


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _usd(units: int, priced: int, unpriced: int) -> float | None:
    """A sum of known costs; None when there were costs and none of them was known."""
    return None if unpriced and not priced else from_usd_units(units)


class _ModelTally:
    __slots__ = (
        "correct", "cost", "errors", "graded", "latencies", "priced", "priced_hits", "samples_of", "saved", "stats"
    )  # fmt: skip

    def __init__(self, model: str) -> None:
        self.stats = ModelStats(model=model, answered=0)
        self.errors: Counter[str] = Counter()
        self.latencies: list[float] = []
        # Several samples: each graded row's answers by this model (normalised; None for a failure), by sample.
        self.samples_of: defaultdict[str, list[tuple[int, str | None]]] = defaultdict(list)
        self.graded = self.correct = 0
        self.cost = self.saved = 0  # in usd_units: exact sums, as the running total's
        self.priced = self.priced_hits = 0


def summarise(
    records: Iterable[tuple[tuple[str, int], dict[str, Any]]],
    expected: dict[tuple[str, int], str | None],
    *,
    models: Sequence[str],
    superseded: Sequence[dict[str, Any]] = (),
    **fields: Any,
) -> EvalSummary:
    """Aggregate (key, record) pairs, one per query, into the summary.

    ``expected`` maps each query's key to its row's expected answer (None: ungraded); ``superseded`` holds the
    earlier lines of queries asked again, whose billed calls count in the tokens and cost, and nothing else;
    ``fields`` are the run's own facts (dataset, results_path, rows, ...).
    """
    tallies = {model: _ModelTally(model) for model in models}
    for record in superseded:
        for r in record.get("results") or []:
            if billed(r):
                _paid(_tally_of(tallies, r["model"]), r, r.get("usage") or {})
    done = answered = graded = correct = cut_off = 0
    k = fields["samples"]
    # Several samples: each graded row's chosen answers (normalised) by sample, for pass@k and majority@k.
    samples_of: defaultdict[str, list[tuple[int, str | None]]] = defaultdict(list)
    want_of: dict[str, str] = {}
    for key, record in records:
        done += 1
        results = record.get("results") or []
        if any(r.get("status") == "ok" for r in results):
            answered += 1
        else:
            failed = [r for r in results if r.get("status") == "error"]
            cut_off += bool(failed) and all(r.get("finish_reason") == "length" for r in failed)
        want = expected.get(key)
        want_form = None if want is None else expected_form(want)
        if want_form is not None:
            graded += 1
            # Re-graded, as per model below: the line's stored "correct" used the expected answer of its day,
            # and a rerun after fixing a gold label must count the fix.
            answer = record.get("answer")
            form = normalise(answer) if isinstance(answer, str) else None
            correct += form == want_form
            if k > 1:
                samples_of[key[0]].append((key[1], form))
                want_of[key[0]] = want_form
        for r in results:
            tally = _tally_of(tallies, r["model"])
            _count(tally, r, want_form)
            if k > 1 and want_form is not None and (status := r.get("status")) in ("ok", "error"):
                # Only samples it was asked: one the strategy cancelled or skipped says nothing of the model.
                form = normalise(r.get("text") or "") if status == "ok" else None
                tally.samples_of[key[0]].append((key[1], form))
    per_model = []
    for tally in tallies.values():
        s = tally.stats
        s.errors = dict(tally.errors.most_common())
        s.cache_hit_rate = _ratio(s.cache_hits, s.answered + sum(tally.errors.values()))
        if tally.latencies:
            ordered = sorted(tally.latencies)
            s.latency_p50_ms = round(percentile(ordered, 50), 3)
            s.latency_p95_ms = round(percentile(ordered, 95), 3)
        s.graded, s.correct, s.accuracy = tally.graded, tally.correct, _ratio(tally.correct, tally.graded)
        s.k_rows, passed_by_model, majority_by_model = _at_k(tally.samples_of, want_of, k)
        s.pass_at_k, s.majority_at_k = _ratio(passed_by_model, s.k_rows), _ratio(majority_by_model, s.k_rows)
        s.cost_usd = _usd(tally.cost, tally.priced, s.unpriced)
        s.cost_saved_usd = _usd(tally.saved, tally.priced_hits, s.unpriced_cache_hits)
        per_model.append(s)
    counts = ("cache_hits", "truncated", "input_tokens", "output_tokens", "saved_input_tokens", "saved_output_tokens",
              "unpriced", "unpriced_cache_hits")  # fmt: skip
    total: dict[str, Any] = {name: sum(getattr(s, name) for s in per_model) for name in counts}
    every = list(tallies.values())
    total["cost_usd"] = _usd(sum(t.cost for t in every), sum(t.priced for t in every), total["unpriced"])
    total["cost_saved_usd"] = _usd(
        sum(t.saved for t in every), sum(t.priced_hits for t in every), total["unpriced_cache_hits"]
    )
    k_rows, passed, majority = _at_k(samples_of, want_of, k)
    elapsed = fields["elapsed_s"]
    return EvalSummary(
        **fields,
        models=list(models),
        done=done,
        answered=answered,
        unanswered=done - answered,
        unanswered_cut_off=cut_off,
        superseded=len(superseded),
        graded=graded,
        correct=correct,
        accuracy=_ratio(correct, graded),
        k_rows=k_rows,
        pass_at_k=_ratio(passed, k_rows),
        majority_at_k=_ratio(majority, k_rows),
        **total,
        queries_per_s=round(fields["ran"] / elapsed, 1) if elapsed > 0 else None,
        per_model=per_model,
    )


def _at_k(samples_of: dict[str, list[tuple[int, str | None]]], want_of: dict[str, str], k: int) -> tuple[int, int, int]:
    """(rows with all k samples done, rows where one of them is right, rows whose majority answer is right)."""
    rows = passed = majority = 0
    for row, samples in samples_of.items():
        if len(samples) < k:  # a resumable run not finished yet: its row is left out, not counted wrong
            continue
        rows += 1
        want = want_of[row]
        # No answer, or one with nothing left once normalised ("..."), is no vote: as in a consensus, it agrees
        # with nothing, and "" votes piling up must not outvote a real answer.
        given = [form for _, form in sorted(samples, key=lambda sample: sample[0]) if form]
        passed += want in given
        if given:
            votes = Counter(given)
            most = max(votes.values())
            majority += next(form for form in given if votes[form] == most) == want
    return rows, passed, majority


def _tally_of(tallies: dict[str, _ModelTally], model: str) -> _ModelTally:
    """The model's tally; a model not in this run's list (an older line of the file) gets its own."""
    tally = tallies.get(model)
    if tally is None:
        tally = tallies[model] = _ModelTally(model)
    return tally


def billed(r: dict[str, Any]) -> bool:
    """A model's result a provider billed: an answer not served from the cache, or a failure that reports usage
    (an empty answer: the model spent its tokens and wrote nothing)."""
    return not r.get("cached") and (r.get("status") == "ok" or bool(r.get("usage")))


def _paid(tally: _ModelTally, r: dict[str, Any], usage: dict[str, Any]) -> None:
    """A call a provider billed: its tokens, and its cost (or one more unpriced call)."""
    s = tally.stats
    s.input_tokens += usage.get("input_tokens") or 0
    s.output_tokens += usage.get("output_tokens") or 0
    cost = r.get("cost_usd")
    if cost is None:
        s.unpriced += 1
    else:
        tally.cost += usd_units(cost)
        tally.priced += 1


def _count(tally: _ModelTally, r: dict[str, Any], want: str | None) -> None:
    """One model's outcome on one query; ``want`` is the expected answer, already normalised."""
    s, status = tally.stats, r.get("status")
    if status == "cancelled":
        s.cancelled += 1
        return
    if status == "skipped" and not r.get("error"):
        s.skipped += 1
        return
    s.truncated += r.get("finish_reason") == "length"  # an empty answer cut off before any text included
    usage = r.get("usage") or {}
    if billed(r):  # an empty answer too
        _paid(tally, r, usage)
    if status != "ok":
        tally.errors[r.get("error") or "unknown"] += 1
        return
    s.answered += 1
    if r.get("cached"):
        s.cache_hits += 1
        s.saved_input_tokens += usage.get("input_tokens") or 0
        s.saved_output_tokens += usage.get("output_tokens") or 0
        saved = r.get("cost_saved_usd")  # absent from lines written before costs were recorded: unknown
        if saved is None:
            s.unpriced_cache_hits += 1
        else:
            tally.saved += usd_units(saved)
            tally.priced_hits += 1
    if r.get("latency_ms") is not None:
        tally.latencies.append(r["latency_ms"])
    if want is not None:
        tally.graded += 1
        tally.correct += normalise(r.get("text") or "") == want
