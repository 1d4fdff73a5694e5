"""``ai-gateway eval`` and the ``run_eval`` tool against the fake provider.

Most runs are in-process (the runner on the gateway of a server whose lifespan is
running); the CLI runs as a subprocess where the process boundary is the point:
Ctrl-C, and an offline replay from a shared (Redis) cache.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import re
import signal
import socket
import sys
import termios
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from fastmcp import Client, FastMCP
from fastmcp.exceptions import ToolError
from pydantic import ValidationError

from ai_gateway.cli import build_parser, describe_settings_error
from ai_gateway.evaluation import runner as runner_module
from ai_gateway.evaluation.console import lifespan_gateway, print_summary, run_cli
from ai_gateway.evaluation.dataset import EvalInputError, load_dataset
from ai_gateway.evaluation.runner import EvalConfig, check_models, execute, gateway_query, prepare, tool_query
from ai_gateway.evaluation.summary import EvalSummary, summarise
from ai_gateway.price_memo import table_build
from ai_gateway.pricing import usd
from ai_gateway.server import build_server
from ai_gateway.settings import Settings
from tests.fake_provider import Scenario
from tests.integration.conftest import CLI, GatedFake, provider_env, stop_process, subprocess_env, vendor
from tests.integration.conftest import run_cli as run_cli_process
from tests.redis_harness import RedisProcess, RedisTarget

A, B = "openai/ev-a", "anthropic/ev-b"


def write_jsonl(path: Path, rows: Sequence[dict[str, Any] | str]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def dataset_rows(n: int = 10) -> list[dict[str, Any]]:
    """The fake echoes the prompt: rows 1-6 expect the echo (right), 7-8 something else (wrong), 9-10 nothing."""
    rows: list[dict[str, Any]] = []
    for i in range(1, n + 1):
        row: dict[str, Any] = {"id": f"q{i}", "prompt": f"question number {i}"}
        if i <= 6:
            row["expected"] = f"Question number {i}."  # normalisation: case and punctuation do not count
        elif i <= 8:
            row["expected"] = "something else"
        rows.append(row)
    return rows


def read_records(path: Path) -> list[dict[str, Any]]:
    # "\n" only, as the runner reads it: str.splitlines() would also split at a raw U+2028 inside a string.
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


def by_key(records: list[dict[str, Any]]) -> dict[tuple[str, int], tuple[Any, Any, Any]]:
    out = {(json.dumps(r["id"]), r["sample"]): (r["answer"], r["model"], r["correct"]) for r in records}
    assert len(out) == len(records), "duplicate (id, sample) lines"
    return out


async def evaluate(gateway: Any, dataset: Path, out: Path, models: Sequence[str], query: Any = None,
                   **options: Any) -> EvalSummary:  # fmt: skip
    """What ``ai-gateway eval`` does, on a gateway whose server is running."""
    config = EvalConfig(models=tuple(models), **options)
    plan = prepare(dataset, load_dataset(dataset), config, out)
    check_models(gateway, config)
    return await execute(plan, query or gateway_query(gateway))


@pytest.fixture
async def running(make_server: Callable[..., FastMCP], tmp_path: Path) -> AsyncIterator[tuple[Client, Any]]:
    """A connected in-memory client and the gateway of its server's lifespan; run_eval's directory: tmp_path."""
    server = make_server(eval_dir=str(tmp_path))
    async with Client(server) as client:
        yield client, lifespan_gateway(server)


class PromptGatedFake(GatedFake):
    """Requests whose prompt starts with "slow" wait (connected) until ``gate`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.held = 0

    async def _answer(self, request: Any, dialect: str, model: str, body: Any, call: Any) -> Any:
        if body["messages"][-1]["content"].startswith("slow") and not self.gate.is_set():
            self.held += 1
            self._notify()
            await self.gate.wait()
        return await super()._answer(request, dialect, model, body, call)


class NumberingFake(GatedFake):
    """Every request gets a different answer ("answer 1", "answer 2", ...), like sampling would."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    async def _answer(self, request: Any, dialect: str, model: str, body: Any, call: Any) -> Any:
        self.n += 1
        self._scenarios[model] = Scenario(text=f"answer {self.n}")  # read before the fake's first await
        return await super()._answer(request, dialect, model, body, call)


def slow_rows() -> list[dict[str, Any]]:
    return [{"prompt": f"fast {i}"} for i in range(1, 7)] + [{"prompt": f"slow {i}"} for i in range(7, 11)]


# ---------------------------------------------------------------------------- a run, its file and summary
async def test_dataset_runs_and_the_summary_counts_it(running: tuple[Client, Any], fake: GatedFake,
                                                      tmp_path: Path) -> None:  # fmt: skip
    _, gateway = running
    dataset = write_jsonl(tmp_path / "data.jsonl", dataset_rows())
    out = tmp_path / "out.jsonl"
    summary = await evaluate(gateway, dataset, out, [A, B], strategy="consensus", concurrency=3)

    records = read_records(out)
    assert sorted(r["id"] for r in records) == sorted(f"q{i}" for i in range(1, 11))
    assert len(by_key(records)) == 10 and {r["sample"] for r in records} == {0}
    q1 = next(r for r in records if r["id"] == "q1")
    assert q1["prompt"] == "question number 1" and q1["strategy"] == "consensus"
    assert (q1["answer"], q1["model"], q1["correct"]) == ("question number 1", A, True)
    assert [(m["model"], m["status"], m["text"], m["cached"], m["attempts"], m["error"]) for m in q1["results"]] == [
        (A, "ok", "question number 1", False, 1, None),
        (B, "ok", "question number 1", False, 1, None),
    ]
    assert q1["results"][0]["usage"] == {"input_tokens": 3, "output_tokens": 3}  # the fake counts words
    assert {r["id"]: r["correct"] for r in records if r["id"] in ("q7", "q9")} == {"q7": False, "q9": None}

    assert (summary.rows, summary.queries, summary.done, summary.answered, summary.unanswered) == (10, 10, 10, 10, 0)
    assert (summary.ran, summary.resumed) == (10, 0)
    assert (summary.graded, summary.correct, summary.accuracy) == (8, 6, 0.75)
    assert summary.results_path == str(out) and summary.cost_usd is None
    assert [m.model for m in summary.per_model] == [A, B]
    for m in summary.per_model:
        assert (m.answered, m.errors, m.cache_hits, m.cache_hit_rate) == (10, {}, 0, 0.0)
        assert (m.input_tokens, m.output_tokens) == (30, 30)  # 3 words in, 3 echoed, per row
        assert (m.graded, m.correct, m.accuracy) == (8, 6, 0.75)
        assert m.latency_p50_ms is not None and m.latency_p95_ms is not None
        assert m.latency_p50_ms <= m.latency_p95_ms
    assert fake.count("ev-a") == fake.count("ev-b") == 10


async def test_errors_and_cache_hits_are_counted_per_model(running: tuple[Client, Any], fake: GatedFake,
                                                           tmp_path: Path) -> None:  # fmt: skip
    _, gateway = running
    fake.set("ev-down", Scenario.error("auth"))
    dataset = write_jsonl(tmp_path / "data.jsonl", dataset_rows(4))
    first = await evaluate(gateway, dataset, tmp_path / "one.jsonl", ["openai/ev-down", B])
    await gateway.cache.flush()
    second = await evaluate(gateway, dataset, tmp_path / "two.jsonl", ["openai/ev-down", B])

    down, up = first.per_model
    assert (down.answered, down.errors, up.answered, up.cache_hits) == (0, {"auth": 4}, 4, 0)
    assert first.answered == 4  # first_available fell over to ev-b for every row
    down, up = second.per_model
    assert (down.errors, up.cache_hits, up.cache_hit_rate) == ({"auth": 4}, 4, 1.0)
    assert (up.input_tokens, up.output_tokens, up.saved_input_tokens, up.saved_output_tokens) == (0, 0, 12, 12)
    assert fake.count("ev-b") == 4  # the second run's answers all came from the cache


class DownFake(GatedFake):
    """While ``down``, every model fails (401, which neither retries nor trips a breaker) the prompts starting with
    "down", and ev-a those starting with "half"; the others are echoed."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True

    async def _answer(self, request: Any, dialect: str, model: str, body: Any, call: Any) -> Any:
        prompt = body["messages"][-1]["content"]
        failing = self.down and (prompt.startswith("down") or (prompt.startswith("half") and model == "ev-a"))
        self._scenarios[model] = Scenario.error("auth") if failing else Scenario()  # read before the first await
        return await super()._answer(request, dialect, model, body, call)


async def test_retry_failed_asks_again_only_the_queries_no_model_answered(tmp_path: Path) -> None:
    """A resume skips every query in the file, failed ones too (a run must not re-bill an outage's rows without
    being asked); ``retry_failed`` asks again those no model answered, and their new lines supersede the old."""
    rows = [{"id": f"r{i}", "prompt": f"{'down' if i < 3 else 'up'} {i}"} for i in range(6)]
    rows.append({"id": "half", "prompt": "half: only B answers"})  # one model answered: answered, never retried
    async with DownFake() as fake:
        server = build_server(Settings(_env_file=None), provider_env(fake.url))
        async with Client(server):
            gateway = lifespan_gateway(server)
            dataset = write_jsonl(tmp_path / "data.jsonl", rows)
            out = tmp_path / "out.jsonl"
            first = await evaluate(gateway, dataset, out, [A, B], strategy="consensus")
            assert (first.answered, first.unanswered) == (4, 3)

            calls = fake.count()
            fake.down = False
            again = await evaluate(gateway, dataset, out, [A, B], strategy="consensus")
            assert (again.resumed, again.ran, again.unanswered, fake.count()) == (7, 0, 3, calls)

            retried = await evaluate(gateway, dataset, out, [A, B], strategy="consensus", retry_failed=True)
            assert (retried.resumed, retried.ran, retried.answered, retried.unanswered) == (4, 3, 7, 0)
            assert fake.count() == calls + 2 * 3  # two models, the three failed queries
            lines = read_records(out)
            assert len(lines) == 10
            assert sorted(r["id"] for r in lines[7:]) == ["r0", "r1", "r2"]
            assert all(r["answer"] == r["prompt"] for r in lines[7:])

            # Two lines for a query now: the later one counts, on every later run, and nothing is asked again.
            later = await evaluate(gateway, dataset, out, [A, B], strategy="consensus", retry_failed=True)
            assert (later.resumed, later.ran, later.answered, later.unanswered) == (7, 0, 7, 0)
            assert fake.count() == calls + 6


async def test_the_tool_path_gives_the_same_records(running: tuple[Client, Any], fake: GatedFake,
                                                   tmp_path: Path) -> None:  # fmt: skip
    client, gateway = running
    dataset = write_jsonl(
        tmp_path / "data.jsonl", [*dataset_rows(4), {"messages": [{"role": "user", "content": "hi"}]}]
    )
    options: dict[str, Any] = {"strategy": "consensus", "cache": "bypass"}
    direct = await evaluate(gateway, dataset, tmp_path / "gateway.jsonl", [A, B], **options)
    via_tool = await evaluate(gateway, dataset, tmp_path / "tool.jsonl", [A, B], tool_query(client), **options)

    assert by_key(read_records(tmp_path / "gateway.jsonl")) == by_key(read_records(tmp_path / "tool.jsonl"))
    assert direct.model_dump(include={"answered", "correct", "input_tokens"}) == via_tool.model_dump(
        include={"answered", "correct", "input_tokens"}
    )
    assert fake.count() == 20  # bypass: both runs reached the provider


# ---------------------------------------------------------------------------- interruption and resume
async def test_interrupted_run_keeps_finished_rows_and_resume_runs_only_the_rest(tmp_path: Path) -> None:
    dataset = write_jsonl(tmp_path / "data.jsonl", slow_rows())
    out = tmp_path / "out.jsonl"
    async with PromptGatedFake() as fake:
        server = build_server(Settings(_env_file=None), provider_env(fake.url))
        async with Client(server):
            gateway = lifespan_gateway(server)
            options: dict[str, Any] = {"concurrency": 2, "cache": "bypass"}  # every query reaches the fake
            run = asyncio.create_task(evaluate(gateway, dataset, out, [A], **options))
            # Workers take rows in order and write each before taking the next: once two "slow" rows
            # are held at the fake, rows 1-6 are all in the file.
            await fake.wait_until(lambda: fake.held == 2, "two slow rows held")
            run.cancel()
            with pytest.raises(asyncio.CancelledError):
                await run
            assert [r["id"] for r in read_records(out)] == [1, 2, 3, 4, 5, 6]  # default ids: line numbers

            # Simulate a write cut off mid-line: row 6's line loses its end (and its newline).
            text = out.read_text()
            out.write_text(text[: len(text) - len(text.splitlines()[-1]) // 2 - 1])
            fake.gate.set()
            before = fake.count()
            summary = await evaluate(gateway, dataset, out, [A], **options)

            assert fake.count() - before == 5  # rows 6-10: the cut line is run again, nothing else
            records = read_records(out)  # every line parses: the partial one was dropped, not kept
            assert sorted(r["id"] for r in records) == list(range(1, 11))
            assert len(by_key(records)) == 10
            assert (summary.resumed, summary.ran, summary.done, summary.answered) == (5, 5, 10, 10)

            again = await evaluate(gateway, dataset, out, [A], **options)
            assert (again.ran, again.resumed, fake.count() - before) == (0, 10, 5)


async def test_resuming_with_another_setup_is_refused(running: tuple[Client, Any], tmp_path: Path) -> None:
    _, gateway = running
    dataset = write_jsonl(tmp_path / "data.jsonl", dataset_rows(2))
    out = tmp_path / "out.jsonl"
    await evaluate(gateway, dataset, out, [A, B])
    with pytest.raises(EvalInputError, match="already holds results of another setup") as info:
        await evaluate(gateway, dataset, out, [A, B], strategy="consensus")
    assert info.value.option == "out"
    # Another dataset (no id in common) is no way around it: the file would hold two setups' answers.
    other = write_jsonl(tmp_path / "other.jsonl", [{"id": "x1", "prompt": "another question"}])
    for options in ({"strategy": "consensus"}, {"temperature": 0.5}):
        with pytest.raises(EvalInputError, match=r"another setup|was written with --temperature"):
            await evaluate(gateway, other, out, [A, B], **options)
    assert len(read_records(out)) == 2
    write_jsonl(out, ["not json at all"])
    with pytest.raises(EvalInputError, match="line 1: not valid JSON"):
        await evaluate(gateway, dataset, out, [A, B])


async def test_a_resume_of_another_setup_names_the_options_and_both_values(
    running: tuple[Client, Any], tmp_path: Path
) -> None:
    """The message showed the stored setup only: which option differed, and this run's value, were left to find
    (as for --temperature, it names both)."""
    _, gateway = running
    dataset = write_jsonl(tmp_path / "data.jsonl", dataset_rows(2))
    out = tmp_path / "out.jsonl"
    await evaluate(gateway, dataset, out, [A, B])
    cases = [
        (
            {"models": [B, A]},
            f'written with --models {A},{B} (id "q1", sample 0), this run has --models {B},{A}; rerun with '
            f"--models {A},{B} to resume",
        ),
        (
            {"models": [A, B], "strategy": "fastest"},
            'written with --strategy first_available (id "q1", sample 0), this run has --strategy fastest; rerun '
            "with --strategy first_available to resume",
        ),
        (
            {"models": [A], "strategy": "consensus"},
            f'written with --strategy first_available and --models {A},{B} (id "q1", sample 0), this run has '
            f"--strategy consensus and --models {A}; rerun with --strategy first_available --models {A},{B} to "
            "resume",
        ),
    ]
    for options, message in cases:
        with pytest.raises(EvalInputError) as info:
            await evaluate(gateway, dataset, out, **options)
        refused = f"--out: {out} already holds results of another setup: {message}, or choose another --out"
        assert str(info.value) == refused


async def test_resuming_with_a_changed_dataset_is_refused(running: tuple[Client, Any], fake: GatedFake,
                                                          tmp_path: Path) -> None:  # fmt: skip
    """A done line answers the question it recorded: if the row with its id now asks another one, the run stops
    before any call instead of counting the old answer for the new question."""
    _, gateway = running
    rows = [{"prompt": "capital of france"}, {"prompt": "capital of spain"}]
    dataset = write_jsonl(tmp_path / "data.jsonl", rows)
    out = tmp_path / "out.jsonl"
    await evaluate(gateway, dataset, out, [A])
    calls = fake.count()

    write_jsonl(dataset, [{"prompt": "capital of peru"}, *rows])  # the default ids (line numbers) all shift
    with pytest.raises(EvalInputError) as info:
        await evaluate(gateway, dataset, out, [A])
    assert info.value.option == "out"
    assert str(info.value) == (
        f'--out: {out} holds an answer to another question for id 1 (dataset line 1): prompt was "capital of '
        'france", now "capital of peru"; the dataset changed since those results were written. Rerun with the '
        "dataset the results came from, or choose another --out"
    )
    write_jsonl(dataset, [rows[0], {"messages": [{"role": "user", "content": "capital of spain"}]}])
    with pytest.raises(EvalInputError, match=r"id 2 \(dataset line 2\): prompt was .*, now none; messages was none"):
        await evaluate(gateway, dataset, out, [A])
    assert fake.count() == calls

    # Lines that do not record their question (hand-made, or trimmed) are matched by id alone, as before.
    write_jsonl(out, [{k: v for k, v in r.items() if k != "prompt"} for r in read_records(out)])
    write_jsonl(dataset, [*rows, {"prompt": "capital of peru"}])
    summary = await evaluate(gateway, dataset, out, [A])
    assert (summary.resumed, summary.ran, fake.count()) == (2, 1, calls + 1)


async def test_a_rerun_regrades_every_line_against_the_current_expected_answers(running: tuple[Client, Any],
                                                                               tmp_path: Path) -> None:  # fmt: skip
    """The lines keep the "correct" of the day they were written; the summary grades them again, overall as per
    model, so fixing gold labels and rerunning gives one consistent accuracy."""
    _, gateway = running
    rows: list[dict[str, Any]] = [
        {"id": "q1", "prompt": "paris", "expected": "lyon"},  # a wrong gold label
        {"id": "q2", "prompt": "rome"},  # none yet
        {"id": "q3", "prompt": "oslo", "expected": "Oslo."},  # right, until "fixed" the wrong way below
    ]
    dataset = write_jsonl(tmp_path / "data.jsonl", rows)
    out = tmp_path / "out.jsonl"
    first = await evaluate(gateway, dataset, out, [A])  # the fake echoes: the answers are the prompts
    assert (first.graded, first.correct, first.per_model[0].correct) == (2, 1, 1)

    write_jsonl(
        dataset, [{**rows[0], "expected": "Paris"}, {**rows[1], "expected": "rome"}, {**rows[2], "expected": "x"}]
    )
    again = await evaluate(gateway, dataset, out, [A])
    assert again.ran == 0
    assert (again.graded, again.correct, again.accuracy) == (3, 2, round(2 / 3, 4))
    assert (again.per_model[0].graded, again.per_model[0].correct) == (3, 2)
    assert {r["id"]: r["correct"] for r in read_records(out)} == {"q1": False, "q2": None, "q3": True}  # unchanged


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        # Another tool's per-sample output may have "id" and "sample" too: it is named, not read as ours.
        (
            {"id": 1, "sample": 0, "results": {"score": 0.5}},
            "field 'results' not a list of objects (one object per model)",
        ),
        ({"id": 1, "sample": 0, "results": ["pass"]}, "field 'results' not a list of objects (one object per model)"),
        ({"id": 1, "sample": 0}, "field 'results' missing (one object per model)"),
        # A "sample": 0.0 (a line edited by hand) was reported as missing.
        ({"sample": 0, "results": []}, "field 'id' missing"),
        ({"id": 1, "results": []}, "field 'sample' missing"),
        ({"id": 1, "sample": 0.0, "results": []}, "field 'sample' is 0.0, not an integer"),
        ({"id": 1, "sample": True, "results": []}, "field 'sample' is true, not an integer"),
        ({"id": [1], "sample": 0, "results": []}, "field 'id' is [1], not a string or an integer"),
        ([1, 0], "not a JSON object"),
    ],
)
def test_a_line_that_is_not_ours_is_named_as_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: Any, problem: str
) -> None:
    dataset = write_jsonl(tmp_path / "data.jsonl", [{"id": 1, "prompt": "hello"}])
    out = write_jsonl(tmp_path / "out.jsonl", [line])
    assert run_cli(cli_args(str(dataset), "--models", "mock/echo", "--out", str(out)), offline_setup, build_server) == 2
    assert capsys.readouterr().err == (
        f"ai-gateway eval: {out} line 1: {problem}; this is not a results file of ai-gateway eval (choose another "
        "--out)\n"
    )


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"my notes, with no newline at the end", id="notes"),
        pytest.param(b'{"prompt": "another dataset, one line, no newline"}', id="a dataset line"),
        pytest.param(b'{"id": 1, "sample": 0, "results": []}\nmy notes', id="notes after a results line"),
        # Python's JSON parser recurses per level: a RecursionError ended the run with a traceback, exit 1.
        pytest.param(b'{"id": 1, "x": ' + b"[" * 1000 + b"]" * 1000 + b"}", id="nested 1,000 deep, no newline"),
        pytest.param(b'{"id": 1, "x": ' + b"[" * 1000 + b"]" * 1000 + b"}\n", id="nested 1,000 deep"),
    ],
)
def test_a_file_that_is_not_ours_is_never_cut(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    """A last line without its newline was taken for our own line cut off mid-write, and cut: whatever file was
    given as --out by mistake lost it. Only a line that starts as ours do may be dropped."""
    dataset = write_jsonl(tmp_path / "data.jsonl", [{"id": 1, "prompt": "hello"}])
    out = tmp_path / "notes.txt"
    out.write_bytes(content)
    assert run_cli(cli_args(str(dataset), "--models", "mock/echo", "--out", str(out)), offline_setup, build_server) == 2
    assert out.read_bytes() == content
    assert "this is not a results file of ai-gateway eval (choose another --out)" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["fifo", "device", "directory"])
def test_an_out_that_is_no_regular_file_is_refused_before_it_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    """The results file is read to its end to resume: --out /dev/full read until the process was killed for its
    memory, and a named pipe (or a piped /dev/stdout) waited forever before the first query."""
    dataset = write_jsonl(tmp_path / "data.jsonl", [{"id": 1, "prompt": "hello"}])
    if kind == "fifo":
        out = tmp_path / "pipe"
        os.mkfifo(out)
    elif kind == "device":
        out = Path("/dev/zero")  # endless, as /dev/full reads
    else:
        out = tmp_path / "results"
        out.mkdir()
    assert run_cli(cli_args(str(dataset), "--models", "mock/echo", "--out", str(out)), offline_setup, build_server) == 2
    assert capsys.readouterr().err == (
        f"ai-gateway eval: {out}: not a regular file (a directory, a device or a pipe); the results file is read back "
        "to resume, so --out must be a file (choose another --out)\n"
    )


@pytest.mark.parametrize("tail", [b"{", b'{"', b'{"i', b'{"id"'])
def test_a_write_cut_off_within_its_first_bytes_is_dropped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tail: bytes
) -> None:
    """A full disk can cut a line after a byte or three ('{"i'): too short to start as our lines do, it was taken for
    someone else's file and the rerun refused, where the exit-3 message had said to run the same command again."""
    dataset = write_jsonl(tmp_path / "data.jsonl", [{"id": i, "prompt": f"q{i}"} for i in range(1, 4)])
    out = tmp_path / "out.jsonl"
    args = cli_args(str(dataset), "--models", "mock/echo", "--out", str(out), "--concurrency", "1")
    assert run_cli(args, offline_setup, build_server) == 0
    lines = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(lines[0] + tail)
    assert run_cli(args, offline_setup, build_server) == 0, capsys.readouterr().err
    assert [r["id"] for r in read_records(out)] == [1, 2, 3]


def test_a_whole_last_line_without_its_newline_is_kept(tmp_path: Path) -> None:
    """The file was edited or copied and lost its final newline: its last answer stands, and is not asked again."""
    dataset = write_jsonl(tmp_path / "data.jsonl", [{"id": 1, "prompt": "one"}, {"id": 2, "prompt": "two"}])
    out = tmp_path / "out.jsonl"
    args = cli_args(str(dataset), "--models", "mock/echo", "--out", str(out), "--no-progress")
    assert run_cli(args, offline_setup, build_server) == 0
    first = read_records(out)
    out.write_bytes(out.read_bytes().rstrip(b"\n"))
    data = write_jsonl(dataset, [{"id": 1, "prompt": "one"}, {"id": 2, "prompt": "two"}, {"id": 3, "prompt": "3"}])
    assert run_cli(cli_args(str(data), "--models", "mock/echo", "--out", str(out)), offline_setup, build_server) == 0
    records = read_records(out)
    assert records[:2] == first and [r["id"] for r in records] == [1, 2, 3]


async def test_two_runs_never_write_one_results_file(running: tuple[Client, Any], tmp_path: Path) -> None:
    """Both asked every row and wrote every line; now the second is refused before it asks anything, and a run
    prepared before another one wrote the file finds out instead of asking those rows again."""
    _, gateway = running
    dataset = write_jsonl(tmp_path / "data.jsonl", dataset_rows(3))
    out = tmp_path / "out.jsonl"
    config = EvalConfig(models=(A,))
    first, second, stale = (prepare(dataset, load_dataset(dataset), config, out) for _ in range(3))
    asked: list[str] = []
    first_asked, release = asyncio.Event(), asyncio.Event()
    real = gateway_query(gateway)

    async def query(args: dict[str, Any]) -> dict[str, Any]:
        asked.append(args["prompt"])
        first_asked.set()
        await release.wait()
        return await real(args)

    running_first = asyncio.create_task(execute(first, query))
    await asyncio.wait_for(first_asked.wait(), 10)
    before = len(asked)
    with pytest.raises(EvalInputError, match=f"another run is writing {out}") as info:
        await execute(second, query)
    assert info.value.option == "out" and len(asked) == before  # the second asked nothing
    release.set()
    assert (await running_first).ran == 3
    with pytest.raises(EvalInputError, match="changed while this run started"):
        await execute(stale, query)
    assert len(asked) == 3 and len(read_records(out)) == 3


# ---------------------------------------------------------------------------- replay and samples
async def test_cache_only_replays_a_run_with_the_provider_stopped(running: tuple[Client, Any], fake: GatedFake,
                                                                  tmp_path: Path) -> None:  # fmt: skip
    _, gateway = running
    dataset = write_jsonl(tmp_path / "data.jsonl", dataset_rows())
    first = await evaluate(gateway, dataset, tmp_path / "run.jsonl", [A, B], strategy="consensus", concurrency=4)
    await gateway.cache.flush()
    calls = fake.count()
    await fake.stop()

    replay = await evaluate(gateway, dataset, tmp_path / "replay.jsonl", [A, B], strategy="consensus",
                            cache="only", concurrency=4)  # fmt: skip
    records = read_records(tmp_path / "replay.jsonl")
    assert by_key(records) == by_key(read_records(tmp_path / "run.jsonl"))
    assert all(m["cached"] and m["status"] == "ok" for r in records for m in r["results"])
    assert fake.count() == calls == 20
    assert (replay.answered, replay.accuracy, replay.cache_hits) == (10, first.accuracy, 20)
    assert (replay.input_tokens, replay.saved_input_tokens) == (0, first.input_tokens)


async def test_answers_cut_off_at_max_tokens_replay_exactly(running: tuple[Client, Any], fake: GatedFake,
                                                            tmp_path: Path) -> None:  # fmt: skip
    """A cut-off answer is the complete answer to a request with that limit (max_tokens is part of its cache key):
    it is stored, so a --cache only replay of a run with --max-tokens gives every line back, with no call."""
    _, gateway = running
    dataset = write_jsonl(tmp_path / "data.jsonl", dataset_rows(4))  # "question number N": 3 tokens each
    first = await evaluate(gateway, dataset, tmp_path / "run.jsonl", [A, B], strategy="consensus", max_tokens=2)
    await gateway.cache.flush()
    calls = fake.count()
    await fake.stop()

    replay = await evaluate(gateway, dataset, tmp_path / "replay.jsonl", [A, B], strategy="consensus",
                            max_tokens=2, cache="only")  # fmt: skip
    run, replayed = read_records(tmp_path / "run.jsonl"), read_records(tmp_path / "replay.jsonl")
    assert by_key(replayed) == by_key(run) and {r["answer"] for r in run} == {"question number"}
    assert all(m["cached"] and m["finish_reason"] == "length" for r in replayed for m in r["results"])
    assert (first.truncated, replay.truncated, replay.cache_hits, fake.count()) == (8, 8, 8, calls)


async def test_a_replay_of_a_consensus_decided_early_is_exact(running: tuple[Client, Any], fake: GatedFake,
                                                              tmp_path: Path) -> None:  # fmt: skip
    """Two of three models agree and the third is cancelled, so its answer was never stored. The replay must
    not turn that into a cache_miss error: it decides early on the same two answers, and the third is
    cancelled again, exactly as in the run it replays."""
    _, gateway = running
    c = "openai/ev-c"
    fake.hold(vendor(c))  # never released: the third model's answer never comes
    dataset = write_jsonl(tmp_path / "data.jsonl", dataset_rows(4))
    first = await evaluate(gateway, dataset, tmp_path / "run.jsonl", [A, B, c], strategy="consensus", concurrency=4)
    await gateway.cache.flush()
    await fake.stop()

    replay = await evaluate(gateway, dataset, tmp_path / "replay.jsonl", [A, B, c], strategy="consensus",
                            cache="only", concurrency=4)  # fmt: skip

    def per_model(path: Path) -> dict[tuple[str, str], tuple[Any, ...]]:
        return {
            (r["id"], m["model"]): (m["status"], m["error"], m["text"])
            for r in read_records(path)
            for m in r["results"]
        }

    original, replayed = per_model(tmp_path / "run.jsonl"), per_model(tmp_path / "replay.jsonl")
    assert {k: v for k, v in original.items() if k[1] == c} == {(f"q{i}", c): ("cancelled", "cancelled", None) for i in
                                                                range(1, 5)}  # fmt: skip
    assert replayed == original
    assert by_key(read_records(tmp_path / "replay.jsonl")) == by_key(read_records(tmp_path / "run.jsonl"))
    assert [m.errors for m in replay.per_model] == [m.errors for m in first.per_model]
    assert replay.answered == first.answered == 4


async def test_cache_only_reports_misses_as_errors(running: tuple[Client, Any], fake: GatedFake, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    _, gateway = running
    dataset = write_jsonl(tmp_path / "data.jsonl", dataset_rows(3))
    summary = await evaluate(gateway, dataset, tmp_path / "out.jsonl", [A, B], cache="only")
    assert (summary.answered, summary.unanswered) == (0, 3)
    assert [m.errors for m in summary.per_model] == [{"cache_miss": 3}, {"cache_miss": 3}]
    assert fake.count() == 0
    print_summary(summary)  # the same replay again would miss again: the hint said to run it as it was
    assert "to ask the 3 with no answer again: the same command without --cache only, with --retry-failed" in (
        capsys.readouterr().out
    )


async def test_samples_are_distinct_cache_entries_and_replay_exactly(tmp_path: Path) -> None:
    dataset = write_jsonl(tmp_path / "data.jsonl", dataset_rows(4))
    async with NumberingFake() as fake:
        server = build_server(Settings(_env_file=None), provider_env(fake.url))
        async with Client(server):
            gateway = lifespan_gateway(server)
            options: dict[str, Any] = {"samples": 3, "temperature": 0.7, "concurrency": 4}
            first = await evaluate(gateway, dataset, tmp_path / "run.jsonl", [A], **options)
            await gateway.cache.flush()
            assert fake.count() == 12 and len(gateway.cache.backend) == 12  # 4 rows x 3 samples
            records = read_records(tmp_path / "run.jsonl")
            assert len({r["answer"] for r in records}) == 12  # every sample its own answer
            assert sorted((r["id"], r["sample"]) for r in records) == sorted(
                (f"q{i}", s) for i in range(1, 5) for s in range(3)
            )

            replay = await evaluate(gateway, dataset, tmp_path / "replay.jsonl", [A], cache="only", **options)
            assert by_key(read_records(tmp_path / "replay.jsonl")) == by_key(records)
            assert (fake.count(), replay.cache_hits, first.queries) == (12, 12, 12)


def test_the_sample_index_sent_depends_on_the_temperature_not_on_samples() -> None:
    def sent(samples: int, temperature: float | None) -> list[int | None]:
        config = EvalConfig(models=(A,), samples=samples, temperature=temperature)
        return [config.sample_arg(i) for i in range(samples)]

    assert sent(1, None) == sent(1, 0.0) == [None]  # the plain query
    assert sent(3, None) == sent(3, 0.0) == [None, 1, 2]  # sample 0 still the plain query
    assert (sent(1, 0.7), sent(3, 0.7)) == ([0], [0, 1, 2])  # sampled: cached only with an index


async def test_a_run_extended_to_more_samples_replays_exactly(tmp_path: Path) -> None:
    """--samples 1, then the same --out with --samples 3: sample 0 was sent without an index, and so is it by the
    replay with the final options, which finds every answer."""
    dataset = write_jsonl(tmp_path / "data.jsonl", dataset_rows(3))
    run, replay_out = tmp_path / "run.jsonl", tmp_path / "replay.jsonl"
    async with NumberingFake() as fake:
        server = build_server(Settings(_env_file=None), provider_env(fake.url))
        async with Client(server):
            gateway = lifespan_gateway(server)
            await evaluate(gateway, dataset, run, [A])
            extended = await evaluate(gateway, dataset, run, [A], samples=3)
            assert (extended.resumed, extended.ran, fake.count()) == (3, 6, 9)
            await gateway.cache.flush()

            replay = await evaluate(gateway, dataset, replay_out, [A], samples=3, cache="only")
            assert by_key(read_records(replay_out)) == by_key(read_records(run))
            assert (replay.answered, replay.cache_hits, fake.count()) == (9, 9, 9)
            # At temperature 0 sample 0 is the plain query's cache entry: a query without `sample` finds it.
            plain = await gateway_query(gateway)({"prompt": "question number 1", "models": [A], "cache": "only"})
            assert plain["answer"] == next(
                r["answer"] for r in read_records(run) if (r["id"], r["sample"]) == ("q1", 0)
            )


async def test_resuming_with_another_temperature_or_sample_index_is_refused(
    running: tuple[Client, Any], fake: GatedFake, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each line records the temperature and the sample index it was sent with; a resume, a --cache only replay
    into the same file, the CLI and run_eval all refuse a file asked otherwise, before any call."""
    client, gateway = running
    dataset = write_jsonl(tmp_path / "data.jsonl", dataset_rows(2))
    out = tmp_path / "out.jsonl"
    await evaluate(gateway, dataset, out, [A])
    assert [(r["temperature"], r["sample_index"]) for r in read_records(out)] == [(None, None)] * 2
    calls = fake.count()

    refused = (
        f'--out: {out} was written with --temperature unset (id "q1", sample 0), this run has --temperature 1.5; '
        "rerun with no --temperature to resume, or choose another --out"
    )
    for cache in ("use", "only"):
        with pytest.raises(EvalInputError) as info:
            await evaluate(gateway, dataset, out, [A], temperature=1.5, cache=cache)
        assert (info.value.option, str(info.value)) == ("out", refused)
    argv = (str(dataset), "--models", A, "--out", str(out), "--temperature", "1.5", "--cache", "only")
    assert run_cli(cli_args(*argv), offline_setup, build_server) == 2
    assert capsys.readouterr().err == f"ai-gateway eval: {refused}\n"
    with pytest.raises(ToolError) as tool_info:
        await client.call_tool("run_eval", {"path": str(dataset), "out": str(out), "models": [A], "temperature": 1.5})
    # In the tool's terms: its arguments, not the CLI's options.
    assert str(tool_info.value) == (
        f'invalid argument out: {out} was written with temperature unset (id "q1", sample 0), this run has '
        "temperature 1.5; rerun with no temperature to resume, or choose another out"
    )

    lines = read_records(out)
    write_jsonl(out, [{**lines[0], "sample_index": 0}, lines[1]])  # as if sent with an index this run does not send
    with pytest.raises(EvalInputError) as info:
        await evaluate(gateway, dataset, out, [A])
    assert str(info.value) == (
        f'--out: {out} holds a line (id "q1", sample 0) sent with sample index 0, but this run sends none for it '
        "(at --temperature unset), another cache entry; rerun with the options (and ai-gateway version) that "
        "wrote the file, or choose another --out"
    )
    assert fake.count() == calls

    # Lines that do not record them (older files) are not checked for them.
    write_jsonl(out, [{k: v for k, v in r.items() if k not in ("temperature", "sample_index")} for r in lines])
    older = await evaluate(gateway, dataset, out, [A], temperature=1.5)
    assert (older.resumed, older.ran, fake.count()) == (2, 0, calls)

    # The same temperature (read back from JSON) resumes.
    sampled = tmp_path / "sampled.jsonl"
    await evaluate(gateway, dataset, sampled, [A], temperature=0.7, samples=2)
    sent = {(r["sample"], r["temperature"], r["sample_index"]) for r in read_records(sampled)}
    assert sent == {(0, 0.7, 0), (1, 0.7, 1)}
    more = await evaluate(gateway, dataset, sampled, [A], temperature=0.7, samples=3)
    assert (more.resumed, more.ran) == (4, 2)


async def test_max_tokens_is_sent_recorded_and_a_cut_off_answer_counted(
    running: tuple[Client, Any], fake: GatedFake, tmp_path: Path
) -> None:
    """--max-tokens reaches every model (OpenAI's and Anthropic's own fields), each line records it and each
    model's finish reason, the summary counts the answers cut off at the limit, and a resume under another limit
    (or none) is refused as another experiment."""
    client, gateway = running
    short, long = "one two three", "one two three four five six"  # the fake echoes: 3 and 6 tokens
    rows = [{"id": "short", "prompt": short, "expected": short}, {"id": "long", "prompt": long, "expected": long}]
    dataset = write_jsonl(tmp_path / "data.jsonl", rows)
    out = tmp_path / "out.jsonl"
    summary = await evaluate(gateway, dataset, out, [A, B], strategy="consensus", max_tokens=4)

    for model, field in ((A, "max_completion_tokens"), (B, "max_tokens")):  # each vendor's own field
        assert [call.body[field] for call in fake.calls_for(vendor(model))] == [4, 4]
    records = {r["id"]: r for r in read_records(out)}
    assert [records[i]["max_tokens"] for i in ("short", "long")] == [4, 4]
    assert [m["finish_reason"] for m in records["short"]["results"]] == ["stop", "stop"]
    assert [m["finish_reason"] for m in records["long"]["results"]] == ["length", "length"]
    assert (records["long"]["answer"], records["long"]["correct"]) == ("one two three four", False)
    assert (summary.max_tokens, summary.truncated, summary.correct) == (4, 2, 1)
    assert [(m.model, m.truncated, m.output_tokens) for m in summary.per_model] == [(A, 1, 7), (B, 1, 7)]

    calls = fake.count()
    for other, flag in ((8, "--max-tokens 8"), (None, "--max-tokens unset")):
        with pytest.raises(EvalInputError) as info:
            await evaluate(gateway, dataset, out, [A, B], strategy="consensus", max_tokens=other)
        assert str(info.value) == (
            f'--out: {out} was written with --max-tokens 4 (id "short", sample 0), this run has {flag}; '
            "rerun with --max-tokens 4 to resume, or choose another --out"
        )
    with pytest.raises(ToolError) as tool_info:
        arguments = {"path": str(dataset), "out": str(out), "models": [A, B], "strategy": "consensus"}
        await client.call_tool("run_eval", {**arguments, "max_tokens": 5})
    assert str(tool_info.value) == (
        f'invalid argument out: {out} was written with max_tokens 4 (id "short", sample 0), this run has max_tokens 5; '
        "rerun with max_tokens 4 to resume, or choose another out"
    )
    # No version sent max_tokens without recording it: a line without one was sent none.
    write_jsonl(out, [{k: v for k, v in r.items() if k != "max_tokens"} for r in records.values()])
    with pytest.raises(EvalInputError, match="was written with --max-tokens unset"):
        await evaluate(gateway, dataset, out, [A, B], strategy="consensus", max_tokens=4)
    assert fake.count() == calls

    # The same limit through run_eval: sent, and the cut-off answers counted in its summary.
    fresh = await client.call_tool("run_eval", {**arguments, "out": str(tmp_path / "tool.jsonl"), "max_tokens": 2})
    assert (fresh.structured_content["max_tokens"], fresh.structured_content["truncated"]) == (2, 4)
    assert [call.body["max_tokens"] for call in fake.calls_for("ev-b")][-2:] == [2, 2]
    with pytest.raises(ToolError, match=r"max_tokens\s.*greater than or equal to 1"):
        await client.call_tool("run_eval", {**arguments, "max_tokens": 0})


async def test_a_model_that_thinks_past_max_tokens_is_counted_cut_off_and_billed(
    running: tuple[Client, Any], fake: GatedFake, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A reasoning model that spends the whole limit thinking answers nothing (empty_response): its line keeps the
    finish reason and the billed usage, the summary counts it cut off and does not suggest --retry-failed, which
    would fail alike under the same limit."""
    _, gateway = running
    fake.set("ev-a", Scenario(thinking=10))
    fake.set("ev-b", Scenario(thinking=10))
    dataset = write_jsonl(tmp_path / "data.jsonl", dataset_rows(2))
    plan = prepare(dataset, load_dataset(dataset), EvalConfig(models=(A, B), max_tokens=4), tmp_path / "out.jsonl")
    summary = await execute(plan, gateway_query(gateway))
    assert (plan.state.output_tokens, plan.state.unpriced) == (16, 4)  # the progress line's totals: billed, unpriced

    (record, _) = read_records(tmp_path / "out.jsonl")
    assert [(m["status"], m["error"], m["finish_reason"], m["usage"]["output_tokens"]) for m in record["results"]] == [
        ("error", "empty_response", "length", 4),
        ("error", "empty_response", "length", 4),
    ]
    assert (summary.unanswered, summary.unanswered_cut_off, summary.truncated) == (2, 2, 4)
    assert [(m.errors, m.truncated, m.output_tokens) for m in summary.per_model] == [({"empty_response": 2}, 2, 8)] * 2
    print_summary(summary)
    printed = capsys.readouterr().out
    assert "2 with no answer were cut off at the output token limit before any text" in printed
    assert "--retry-failed" not in printed
    assert "(openai/ev-a 2, anthropic/ev-b 2); a higher --max-tokens lets them finish (in another --out" in printed
    print_summary(summary.model_copy(update={"max_tokens": None}))  # the limit was a default or the model's own
    assert "no --max-tokens was set, so the limit was the provider's default" in capsys.readouterr().out

    fake.set("ev-b", Scenario(error_kind="rate_limited"))  # an outage is worth retrying; a cut-off is not
    other = await evaluate(gateway, dataset, tmp_path / "other.jsonl", [A, B], max_tokens=4)
    assert (other.unanswered, other.unanswered_cut_off) == (2, 0)
    print_summary(other)
    assert "to ask the 2 with no answer again: the same command with --retry-failed" in capsys.readouterr().out


async def test_retry_failed_still_counts_what_the_replaced_lines_were_billed(
    running: tuple[Client, Any], fake: GatedFake, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A query asked again gets a new line that replaces the old one, but the provider billed the old one's empty
    answers all the same: the summary's tokens and cost count every call billed for the dataset, in every line,
    while its answers and errors are the latest line's."""
    _, gateway = running
    fake.set("ev-a", Scenario(thinking=10))
    fake.set("ev-b", Scenario(thinking=10))
    dataset = write_jsonl(tmp_path / "data.jsonl", dataset_rows(2))
    out = tmp_path / "out.jsonl"
    first = await evaluate(gateway, dataset, out, [A, B], max_tokens=4, strategy="consensus")
    assert (first.unanswered, first.output_tokens, first.unpriced, first.superseded) == (2, 16, 4, 0)

    fake.set("ev-a", Scenario())
    fake.set("ev-b", Scenario())
    retried = await evaluate(gateway, dataset, out, [A, B], max_tokens=4, strategy="consensus", retry_failed=True)
    lines = read_records(out)
    every_billed = [r for line in lines for r in line["results"] if r["usage"] and not r["cached"]]
    assert len(lines) == 4 and len(every_billed) == 8
    assert (retried.answered, retried.superseded, retried.unpriced) == (2, 2, 8)
    assert retried.output_tokens == sum(r["usage"]["output_tokens"] for r in every_billed) > 16
    assert retried.input_tokens == sum(r["usage"]["input_tokens"] for r in every_billed)
    assert [(m.errors, m.answered, m.unpriced) for m in retried.per_model] == [({}, 2, 4)] * 2
    print_summary(retried)
    assert "(with what providers billed for 2 earlier lines of queries asked again" in capsys.readouterr().out

    # Read back from the file by a later run, the replaced lines count the same.
    again = await evaluate(gateway, dataset, out, [A, B], max_tokens=4, strategy="consensus", retry_failed=True)
    assert again.model_dump(include={"superseded", "input_tokens", "output_tokens", "unpriced"}) == (
        retried.model_dump(include={"superseded", "input_tokens", "output_tokens", "unpriced"})
    )


def test_cli_max_tokens_is_sent_and_the_summary_says_what_was_cut_off(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [{"prompt": "one two three four five", "expected": "one two three four five"}, {"prompt": "hi"}]
    dataset = write_jsonl(tmp_path / "data.jsonl", rows)

    def run(out: str, *extra: str) -> int:
        args = cli_args(str(dataset), "--models", "mock/echo", "--out", str(tmp_path / out), *extra)
        return run_cli(args, offline_setup, build_server)

    assert run("cut.jsonl", "--max-tokens", "2") == 0
    printed = capsys.readouterr().out
    assert "ai-gateway eval: first_available, 1 sample(s) per row, at most 2 tokens out" in printed
    assert "accuracy: 0.0% (0 of 1 graded queries)" in printed
    cut_off = "cut off at the output token limit: 1 answer (mock/echo 1); a higher --max-tokens lets them finish"
    assert cut_off in printed
    assert [r["answer"] for r in read_records(tmp_path / "cut.jsonl")] == ["one two", "hi"]

    assert run("cut.jsonl", "--max-tokens", "9") == 2
    assert "was written with --max-tokens 2 (id 1, sample 0), this run has --max-tokens 9" in capsys.readouterr().err
    assert run("other.jsonl", "--max-tokens", "0") == 2
    assert capsys.readouterr().err == "ai-gateway eval: --max-tokens: must be 1 or more; got 0\n"
    assert run("whole.jsonl") == 0
    printed = capsys.readouterr().out
    assert "accuracy: 100.0% (1 of 1 graded queries)" in printed and "cut off" not in printed


def test_several_samples_give_pass_at_k_and_majority_at_k() -> None:
    """Over the rows with an expected answer and every sample done: pass@k (one sample right) and majority@k
    (the most common normalised answer right; no answer does not vote; a tie goes to the lowest sample, whatever
    order the lines are in)."""
    answers = {  # row: (expected, {sample: chosen answer}), in the order the lines were written
        "r1": ("Paris", {0: "Lyon", 1: "Paris", 2: "Paris"}),  # pass, majority
        "r2": ("4", {0: "5", 1: "4", 2: "6"}),  # pass; a three-way tie goes to sample 0: wrong
        "r3": ("4", {2: "5", 1: None, 0: "4"}),  # pass; "4" and "5" tie, sample 0's "4" wins: right
        "r4": ("x", {0: "x", 1: "x"}),  # a sample not done yet: left out of both
        "r5": (None, {0: "a", 1: "b", 2: "c"}),  # not graded
        "r6": ("yes", {0: None, 1: None, 2: None}),  # no answer at all: neither
        "r7": ("blue", {0: "**Blue.**", 1: "red", 2: "red"}),  # pass (normalised); majority says red
        "r8": ("blue", {0: "...", 1: "**", 2: "blue"}),  # answers of nothing do not vote: pass, majority
    }
    records, expected = [], {}
    for row, (want, by_sample) in answers.items():
        for sample, answer in by_sample.items():
            key = (json.dumps(row), sample)
            records.append((key, {"answer": answer, "results": []}))
            expected[key] = want
    fields = {"dataset": "d", "results_path": "r", "strategy": "first_available", "cache": "use", "concurrency": 4,
              "rows": 7, "queries": 21, "resumed": 0, "ran": 20, "elapsed_s": 1.0}  # fmt: skip
    summary = summarise(records, expected, models=[A], samples=3, **fields)
    assert (summary.graded, summary.correct) == (20, 8)
    assert (summary.k_rows, summary.pass_at_k, summary.majority_at_k) == (6, round(5 / 6, 4), 0.5)

    single = summarise([(("1", 0), {"answer": "a", "results": []})], {("1", 0): "a"}, models=[A], samples=1, **fields)
    assert (single.k_rows, single.pass_at_k, single.majority_at_k, single.accuracy) == (0, None, None, 1.0)


def test_each_model_gets_pass_at_k_and_majority_at_k_over_the_rows_it_was_asked_every_sample() -> None:
    """A consensus run compares models: each one's pass@k and majority@k, taken over its own answers. A sample the
    strategy cancelled (or skipped) says nothing of the model, so its row is left out of that model's figures; a
    sample it failed counts, as a sample with no answer."""
    B = "mock/other"

    def ok(model: str, text: str) -> dict[str, Any]:
        return {"model": model, "status": "ok", "text": text}

    lines = {  # (row, sample): (expected, results)
        ("r1", 0): ("Paris", [ok(A, "Paris"), ok(B, "Lyon")]),
        ("r1", 1): ("Paris", [ok(A, "Lyon"), {"model": B, "status": "cancelled"}]),  # B: r1 left out
        ("r2", 0): ("4", [{"model": A, "status": "error", "error": "timeout"}, ok(B, "4")]),
        ("r2", 1): ("4", [ok(A, "5"), ok(B, "**4.**")]),
        ("r3", 0): (None, [ok(A, "x"), ok(B, "x")]),  # not graded
        ("r3", 1): (None, [ok(A, "x"), ok(B, "x")]),
    }
    records = [(key, {"answer": None, "results": results}) for key, (_, results) in lines.items()]
    expected = {key: want for key, (want, _) in lines.items()}
    fields = {"dataset": "d", "results_path": "r", "strategy": "consensus", "cache": "use", "concurrency": 4,
              "rows": 3, "queries": 6, "resumed": 0, "ran": 6, "elapsed_s": 1.0}  # fmt: skip
    summary = summarise(records, expected, models=[A, B], samples=2, **fields)
    a, b = summary.per_model
    # A: r1 "Paris" once (pass), tied with "Lyon": sample 0's wins (majority right); r2 failed then "5": neither.
    assert (a.k_rows, a.pass_at_k, a.majority_at_k) == (2, 0.5, 0.5)
    assert (b.k_rows, b.pass_at_k, b.majority_at_k) == (1, 1.0, 1.0)
    single = summarise(records, expected, models=[A, B], samples=1, **fields)
    assert [(m.k_rows, m.pass_at_k, m.majority_at_k) for m in single.per_model] == [(0, None, None)] * 2


def test_the_summary_prints_a_model_id_as_written_and_a_slow_rate_as_a_fraction(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A model id is the caller's text: read as rich markup, "[/x]" failed the summary after the run had paid for
    every row, and "[bold]" vanished from the table. Two queries in 5 s ran at 0.4 a second, not 0."""
    models = ["mock/fixed:[/x]", "mock/fixed:[bold]y"]
    records = [((json.dumps("r1"), 0), {"answer": "x", "results": [{"model": m, "status": "ok", "text": "x"}
                                                                      for m in models]})]  # fmt: skip
    fields = {"dataset": "d", "results_path": "r", "strategy": "consensus", "cache": "use", "concurrency": 4,
              "rows": 2, "queries": 2, "resumed": 0, "ran": 2, "elapsed_s": 5.03}  # fmt: skip
    print_summary(summarise(records, {}, models=models, samples=1, **fields))
    printed = capsys.readouterr().out
    assert "mock/fixed:[/x]" in printed and "mock/fixed:[bold]y" in printed
    assert "time: 5.03s, 0.4 queries/s" in printed


def test_the_running_cost_is_the_summary_cost() -> None:
    """The bar adds costs as rows finish; the summary adds them model by model. As float sums in two orders they
    differed in the last digits, and a total on a rounding boundary showed another cent on the bar than in the
    table. Both now sum exact 1e-12 USD units."""
    costs = [round(0.1 + 0.7 * ((i * 7919) % 101) / 101, 12) for i in range(60)]  # 12 digits, as in results
    records = []
    state = runner_module.RunState(total=30, done=0)
    for i in range(30):
        results = [
            {"model": model, "status": "ok", "usage": {"input_tokens": 1, "output_tokens": 1}, "cost_usd": cost}
            for model, cost in ((A, costs[2 * i]), ("mock/other", costs[2 * i + 1]))
        ]
        record = {"answer": "x", "results": results}
        records.append(((str(i), 0), record))
        state.add(record)
    fields = {"dataset": "d", "results_path": "r", "strategy": "consensus", "cache": "use", "concurrency": 4,
              "rows": 30, "queries": 30, "resumed": 0, "ran": 30, "elapsed_s": 1.0, "samples": 1}  # fmt: skip
    summary = summarise(records, {}, models=[A, "mock/other"], **fields)
    assert summary.cost_usd == state.cost_usd == round(sum(costs), 12)


def test_cli_prints_pass_at_k_and_majority_at_k(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [{"prompt": "2+2", "expected": "2+2"}, {"prompt": "3+3", "expected": "6"}, {"prompt": "no answer key"}]
    dataset = write_jsonl(tmp_path / "data.jsonl", rows)
    argv = (str(dataset), "--models", "mock/echo", "--out", str(tmp_path / "o.jsonl"), "--samples", "3")
    assert run_cli(cli_args(*argv, "--temperature", "0.7"), offline_setup, build_server) == 0
    printed = capsys.readouterr().out
    assert "accuracy: 50.0% (3 of 6 graded queries)" in printed
    assert "pass@3: 50.0% · majority@3: 50.0% (over 2 rows with an expected answer and all 3 samples done)" in printed
    table = printed.split("accuracy: ")[0]
    assert "pass@3/maj@3" in table and "50.0%/50.0% of 2" in table  # the model's own, in its row


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "line 2: not valid JSON"),
        ('["a list"]', 'line 2: expected a JSON object, got list; write one object per line, such as {"id": 1, '),
        # A RecursionError from Python's parser ended the run with a traceback, exit 1.
        ('{"prompt": "a", "x": ' + "[" * 1000 + "]" * 1000 + "}", "line 2: nested too deeply to read"),
        ('{"id": 5}', "line 2: field 'prompt' (a string) or 'messages'"),
        ('{"prompt": "  "}', "line 2: field 'prompt' must be a non-empty string"),
        ('{"prompt": "a", "messages": [{"role": "user", "content": "b"}]}', "line 2: field 'prompt': give"),
        ('{"messages": [{"role": "robot", "content": "b"}]}', "line 2: field 'messages[0].role' must be one of"),
        ('{"messages": [{"role": "system", "content": "b"}]}', "line 2: field 'messages' must contain"),
        ('{"prompt": "a", "expected": true}', "line 2: field 'expected' must be a string (or a number), got bool"),
        ('{"prompt": "a", "expected": ["4", "four"]}', "line 2: field 'expected' must be a string (or a number)"),
        ('{"prompt": "a", "id": true}', "line 2: field 'id' must be"),
        ('{"prompt": "a", "id": "  "}', "line 2: field 'id' must be a non-empty string"),
        (
            '{"prompt": "a", "id": 1}',
            "line 2: field 'id': 1 repeats the id of line 1, which has no field 'id' (its id is its line number); "
            "give line 2 another id, or line 1 an 'id' of its own",
        ),
        # Line 3 has no id: its id is its line number, and the message said its "field 'id'" repeated line 2's.
        (
            '{"prompt": "a", "id": 3}',
            "line 3: no field 'id', so its id is its line number, 3, which line 2 gives as its 'id'; give line 3 an "
            "'id' of its own (or line 2 another one)",
        ),
        # A key given twice was resolved without a word (the last won): the row was graded against "5".
        (
            '{"prompt": "2+2?", "expected": "4", "expected": "5"}',
            "line 2: field 'expected' is given twice; JSON readers keep one of the two without a word",
        ),
        ('{"messages": [{"role": "user", "content": "a", "content": "b"}]}', "field 'messages[0].content' is given"),
        ('{"prompt": "a", "source": {"page": 1, "page": 2}}', "line 2: field 'source.page' is given twice"),
        # A lone surrogate (half of an emoji cut off) would fail the run at its cache key or its results line.
        ('{"prompt": "smile \\ud83d please"}', "line 2: field 'prompt' is not valid Unicode (a lone surrogate"),
        ('{"messages": [{"role": "user", "content": "\\udc00"}]}', "line 2: field 'messages[0].content' is not valid"),
        ('{"prompt": "a", "id": "q\\ud83d"}', "line 2: field 'id' is not valid Unicode (a lone surrogate, \\ud83d"),
        ('{"prompt": "a", "expected": "\\ude00!"}', "line 2: field 'expected' is not valid Unicode"),
        # Nothing to compare with: every answer would be graded wrong, or right if it normalised to nothing too.
        ('{"prompt": "a", "expected": ""}', "line 2: field 'expected' is \"\", which leaves nothing to compare"),
        ('{"prompt": "a", "expected": " **. "}', "line 2: field 'expected' is \" **. \", which leaves nothing"),
        ('{"prompt": "a", "system": ""}', "line 2: field 'system' must be a non-empty string"),
        ('{"prompt": "a", "system": ["be brief"]}', "line 2: field 'system' must be a non-empty string"),
        ('{"prompt": "a", "system": "\\ud83d"}', "line 2: field 'system' is not valid Unicode"),
        # A per-row query option would be silently unused: the run's options apply to every row.
        ('{"prompt": "a", "temperature": 0.2}', "line 2: field 'temperature' is a query option, not a dataset field"),
        (
            '{"prompt": "a", "max_tokens": 5}',
            "line 2: field 'max_tokens' is a query option, not a dataset field: "
            "every row is asked with the run's options (set it for the whole run with --max-tokens)",
        ),
        ('{"prompt": "a", "models": ["x/y"]}', "line 2: field 'models' is a query option"),
        # The output limit under a vendor's own name is still the run's --max-tokens, not a column to keep.
        (
            '{"prompt": "a", "max_completion_tokens": 5}',
            "field 'max_completion_tokens' is a query option, not a "
            "dataset field: every row is asked with the run's options (set it for the whole run with --max-tokens)",
        ),
        ('{"prompt": "a", "num_predict": 5}', "field 'num_predict' is a query option"),
        (
            '{"prompt": "a", "top_p": 0.9}',
            "field 'top_p' is a query option, not a dataset field: every row is asked "
            "with the run's options (the run sends none)",
        ),
        # Kept as meta these looked applied, and were not (found in a review): seed, stop sequences, a per-row model.
        ('{"prompt": "a", "seed": 7}', "field 'seed' is a query option, not a dataset field"),
        ('{"prompt": "a", "stop": ["\\n"]}', "field 'stop' is a query option"),
        ('{"prompt": "a", "reasoning_effort": "low"}', "field 'reasoning_effort' is a query option"),
        (
            '{"prompt": "a", "model": "x/y"}',
            "field 'model' is a query option, not a dataset field: every row is "
            "asked with the run's options (set it for the whole run with --models)",
        ),
        # Python reads NaN; copied into a results line's meta, it would make the line unreadable to other tools.
        ('{"prompt": "a", "score": NaN}', "line 2: not valid JSON (NaN is not a JSON value; write null or a string)"),
        ('{"prompt": "a", "w": -Infinity}', "line 2: not valid JSON (-Infinity is not a JSON value"),
        # A number past a double's range reads as inf: the results line said Infinity, which no JSON reader takes.
        (
            '{"prompt": "a", "score": 1e400}',
            "line 2: field 'score' is 1e400, beyond the range of a double (about 1.8e308): copied to the results line "
            'it would read Infinity, which is not JSON; write it as a string ("1e400") or within that range',
        ),
        ('{"prompt": "a", "source": {"scores": [0.5, -1E+999]}}', "field 'source.scores[1]' is -1E+999, beyond"),
        # Valid JSON Python will not read: the message was "not valid JSON" with Python's advice to raise a limit.
        (
            '{"prompt": "a", "id": ' + "9" * 5000 + "}",
            "line 2: a number of 5,000 digits, more than can be read (4,300); write it as a string (in quotes)",
        ),
        ('{"prompt": "a", "expected": -' + "1" * 4301 + "}", "line 2: a number of 4,301 digits, more than can be"),
        # Another file's byte-order mark, where two files were joined: "Unexpected UTF-8 BOM (decode using utf-8-sig)"
        ('\ufeff{"prompt": "a"}', "line 2: starts with a byte-order mark (U+FEFF, the bytes EF BB BF), as where a"),
    ],
)
def test_bad_dataset_lines_are_named(tmp_path: Path, line: str, message: str) -> None:
    dataset = write_jsonl(tmp_path / "data.jsonl", ['{"prompt": "fine"}', line, '{"prompt": "also fine"}'])
    with pytest.raises(EvalInputError) as info:
        load_dataset(dataset)
    assert message in str(info.value) and str(dataset) in str(info.value)


def test_a_dataset_that_is_not_utf8_is_named_by_its_line(tmp_path: Path) -> None:
    """The message gave a byte offset of the whole file only."""
    dataset = tmp_path / "data.jsonl"
    dataset.write_bytes(b'{"prompt": "fine"}\n{"prompt": "also fine"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(EvalInputError) as info:
        load_dataset(dataset)
    assert str(info.value) == (
        f"{dataset} line 3: not UTF-8 text (invalid continuation byte at byte 58 of the file); save the file as UTF-8"
    )


def test_integers_are_read_whatever_the_interpreters_digit_limit(tmp_path: Path) -> None:
    """With the limit lifted (PYTHONINTMAXSTRDIGITS=0, which Python reports as a limit of 0) every integer was
    refused as too long."""
    dataset = write_jsonl(tmp_path / "data.jsonl", ['{"id": 7, "prompt": "a", "expected": 12}'])
    limit = sys.get_int_max_str_digits()
    try:
        sys.set_int_max_str_digits(0)
        assert [(row.id, row.expected) for row in load_dataset(dataset)] == [(7, "12")]
    finally:
        sys.set_int_max_str_digits(limit)


def test_a_dataset_with_old_mac_line_ends_is_told_so(tmp_path: Path) -> None:
    """Lines ended by a lone "\r" are one line to a JSON reader, whose "Extra data" named no cause."""
    dataset = tmp_path / "data.jsonl"
    dataset.write_bytes(b'{"prompt": "a"}\r{"prompt": "b"}\r')
    with pytest.raises(EvalInputError) as info:
        load_dataset(dataset)
    assert str(info.value) == (
        f"{dataset} line 1: not valid JSON (Extra data: line 1 column 17 (char 16)); its lines end with a lone \\r "
        "(old Mac line ends): save it with \\n (or \\r\\n) line ends"
    )
    dataset.write_bytes(b'{"prompt": "a"} {"prompt": "b"}\n')  # no \r: no word of line ends
    with pytest.raises(EvalInputError, match=r"Extra data: line 1 column 17 \(char 16\)\)$"):
        load_dataset(dataset)


def test_lone_carriage_returns_and_numbers_as_expected_answers_are_read_as_written(tmp_path: Path) -> None:
    """JSON allows "\r" between tokens and only "\n" ends a line (read as text, universal newlines split there too);
    a number as the expected answer is graded as its text ("4", which "4.0" and "four" match)."""
    dataset = tmp_path / "data.jsonl"
    dataset.write_bytes(b'{"prompt":\r"2+2?", "expected": 4}\n{"prompt": "pi?",\r"expected": 3.14}\n')
    assert [(row.prompt, row.expected) for row in load_dataset(dataset)] == [("2+2?", "4"), ("pi?", "3.14")]


def test_a_number_as_expected_keeps_its_digits_and_form(tmp_path: Path) -> None:
    """Read as a float and written back, 3.141592653589793238 lost three digits and 1e3 became "1000.0": an
    answer exactly as the dataset wrote it was graded wrong; -0, read as an int, was reported as "0". The number's
    own text is graded; a number elsewhere in the row stays the number it was."""
    rows = [
        '{"prompt": "3.141592653589793238", "expected": 3.141592653589793238, "weight": 0.5}',
        '{"prompt": "10000000000000000.5", "expected": 10000000000000000.5}',
        '{"prompt": "1e3", "expected": 1e3}',
        '{"prompt": "4.0", "expected": 4}',
        '{"prompt": "-0", "expected": -0, "offset": -0}',
    ]
    dataset = write_jsonl(tmp_path / "data.jsonl", rows)
    loaded = load_dataset(dataset)
    assert [row.expected for row in loaded] == ["3.141592653589793238", "10000000000000000.5", "1e3", "4", "-0"]
    assert loaded[0].meta == {"weight": 0.5} and json.dumps(loaded[0].meta) == '{"weight": 0.5}'
    assert loaded[4].meta == {"offset": 0} and json.dumps(loaded[4].meta) == '{"offset": 0}'
    out = tmp_path / "o.jsonl"
    assert run_cli(cli_args(str(dataset), "--models", "mock/echo", "--out", str(out)), offline_setup, build_server) == 0
    assert [(r["expected"], r["correct"]) for r in read_records(out)] == [
        ("3.141592653589793238", True), ("10000000000000000.5", True), ("1e3", True), ("4", True), ("-0", True)
    ]  # fmt: skip


def test_a_lone_surrogate_in_an_extra_field_or_an_answer_is_written_escaped_and_read_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Half an emoji outside the fields a query uses (a note, a category), or in a model's answer, cannot be
    encoded as UTF-8: the run crashed at that line after paying for it, on every rerun. Escaped, it is lossless."""
    dataset = tmp_path / "data.jsonl"
    dataset.write_text('{"prompt": "fine"}\n{"prompt": "b", "note": "half \\ud83d emoji"}\n', encoding="utf-8")
    out = tmp_path / "o.jsonl"
    assert run_cli(cli_args(str(dataset), "--models", "mock/echo", "--out", str(out)), offline_setup, build_server) == 0
    records = read_records(out)
    assert [r["meta"]["note"] for r in records if r["id"] == 2] == ["half \ud83d emoji"]
    assert "ran 0" not in capsys.readouterr().out
    # A resume reads the escaped line back as the same row's: nothing is asked again.
    assert run_cli(cli_args(str(dataset), "--models", "mock/echo", "--out", str(out), "--json-summary"),
                   offline_setup, build_server) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["resumed"] == 2


async def test_unicode_line_separators_inside_strings_do_not_end_a_line(running: tuple[Client, Any],
                                                                        tmp_path: Path) -> None:  # fmt: skip
    """JSON lets U+2028, U+2029 and U+0085 stand raw in a string (ensure_ascii=False writes them so), and a results
    line may hold a "\r" between tokens: only "\n" ends a line, in the dataset and in the results file."""
    _, gateway = running
    prompts = [f"first line{sep}second line" for sep in ("\u2028", "\u2029", "\x85")]
    dataset = tmp_path / "data.jsonl"
    dataset.write_text("".join(json.dumps({"prompt": p}, ensure_ascii=False) + "\r\n" for p in prompts), "utf-8")
    assert [row.prompt for row in load_dataset(dataset)] == prompts
    out = tmp_path / "out.jsonl"
    await evaluate(gateway, dataset, out, [A])
    assert sorted((r["id"], r["prompt"]) for r in read_records(out)) == list(enumerate(prompts, start=1))
    assert "\u2028" in out.read_text(encoding="utf-8")  # written raw, so a reader must not split there

    out.write_bytes(out.read_bytes().replace(b',"sample":', b',\r"sample":'))  # JSON whitespace inside a line
    again = await evaluate(gateway, dataset, out, [A])
    assert (again.resumed, again.ran, again.done) == (3, 0, 3)


async def test_a_rows_system_prompt_is_sent_and_its_other_fields_are_kept(
    running: tuple[Client, Any], fake: GatedFake, tmp_path: Path
) -> None:
    """Nothing a row gives is dropped: ``system`` is sent with its question, every other field is copied to its
    results lines (``meta``), so results can be sliced by a dataset's own columns."""
    _, gateway = running
    rows = [
        {"id": "s1", "prompt": "capital of France", "system": "Answer in one word.", "category": "geo", "level": 2},
        {"id": "s2", "prompt": "capital of Spain", "source": {"book": "atlas", "page": 7}},
    ]
    dataset = write_jsonl(tmp_path / "data.jsonl", rows)
    out = tmp_path / "out.jsonl"
    await evaluate(gateway, dataset, out, [A])

    sent = {call.body["messages"][-1]["content"]: call.body["messages"] for call in fake.calls_for("ev-a")}
    assert sent["capital of France"] == [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "capital of France"},
    ]
    assert sent["capital of Spain"] == [{"role": "user", "content": "capital of Spain"}]
    records = {r["id"]: r for r in read_records(out)}
    assert (records["s1"]["system"], records["s1"]["meta"]) == ("Answer in one word.", {"category": "geo", "level": 2})
    assert "system" not in records["s2"] and records["s2"]["meta"] == {"source": {"book": "atlas", "page": 7}}

    # The system prompt is part of the question: another one is another question, not a resume.
    rows[0]["system"] = "Answer in French."
    write_jsonl(dataset, rows)
    with pytest.raises(EvalInputError) as info:
        await evaluate(gateway, dataset, out, [A])
    assert 'system was "Answer in one word.", now "Answer in French."; the dataset changed' in str(info.value)

    # A line asked without a system prompt (its row had none, or a version that sent none): refused, and said so;
    # it blamed an older version alone, when a row given a system prompt since is as likely (found in a review).
    write_jsonl(out, [{k: v for k, v in r.items() if k != "system"} for r in read_records(out)])
    with pytest.raises(EvalInputError) as info:
        await evaluate(gateway, dataset, out, [A])
    assert (
        'system was none, now "Answer in French."; the line was asked with no system prompt (its row had none, or '
        "an older version sent none)"
    ) in str(info.value)


def test_a_byte_order_mark_is_not_part_of_the_first_line(tmp_path: Path) -> None:
    """Windows editors save UTF-8 with a byte-order mark; it must not make line 1 bad JSON."""
    dataset = tmp_path / "data.jsonl"
    dataset.write_bytes(b"\xef\xbb\xbf" + b'{"id": "first", "prompt": "hi"}\n{"prompt": "there"}\n')
    assert [(row.id, row.prompt) for row in load_dataset(dataset)] == [("first", "hi"), (2, "there")]


def test_an_escaped_surrogate_pair_is_one_character(tmp_path: Path) -> None:
    dataset = write_jsonl(tmp_path / "data.jsonl", ['{"prompt": "smile \\ud83d\\ude00", "expected": "\\ud83d\\ude00"}'])
    assert [(row.prompt, row.expected) for row in load_dataset(dataset)] == [("smile \U0001f600", "\U0001f600")]


def cli_args(*argv: str) -> Any:
    return build_parser().parse_args(["eval", *argv, "--no-progress"])


def offline_setup(args: Any) -> tuple[Settings, dict[str, str]]:
    return Settings(_env_file=None), {}


def test_cli_bad_line_exits_2_before_any_call(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dataset = write_jsonl(tmp_path / "data.jsonl", ['{"prompt": "fine"}', "", '{"messages": [{"role": "user"}]}'])
    built: list[Any] = []
    code = run_cli(cli_args(str(dataset), "--models", "mock/echo", "--out", str(tmp_path / "o.jsonl")),
                   offline_setup, lambda *a: built.append(a))  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "line 3: field 'messages[0].content' must be a non-empty string" in err
    assert built == [] and not (tmp_path / "o.jsonl").exists()  # no server was even built


def test_cli_a_results_file_that_cannot_be_written_is_named_with_what_was_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk ended the run with a traceback and exit 1 (which means "some query unanswered")."""
    import ai_gateway.evaluation.runner as runner

    dataset = write_jsonl(tmp_path / "data.jsonl", [{"id": i, "prompt": f"q{i}"} for i in range(1, 6)])
    out = tmp_path / "out.jsonl"
    written = 0
    real = runner._dumps

    def dumps(record: dict[str, Any]) -> str:
        nonlocal written
        if written == 2:
            raise OSError(28, "No space left on device")
        written += 1
        return real(record)

    monkeypatch.setattr(runner, "_dumps", dumps)
    args = cli_args(str(dataset), "--models", "mock/echo", "--out", str(out), "--no-progress", "--concurrency", "1")
    assert run_cli(args, offline_setup, build_server) == 3
    err = capsys.readouterr().err
    assert err == (
        f"ai-gateway eval: cannot write {out} (No space left on device); 2 of 5 queries done and kept there; free the "
        "space (or fix the permission) and run the same command again to resume\n"
    )
    assert len(read_records(out)) == 2


def test_a_results_file_of_another_dataset_is_refused_and_one_of_an_edited_dataset_resumed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run of another dataset was appended to the file without a word (found in a review), and so was a dataset
    whose ids changed from 1 to "1", which asked and billed every row again."""
    math = write_jsonl(tmp_path / "math.jsonl", [{"id": "m1", "prompt": "2+2"}, {"id": "m2", "prompt": "3+3"}])
    trivia = write_jsonl(tmp_path / "trivia.jsonl", [{"id": "t1", "prompt": "capital of France"}])
    out = tmp_path / "out.jsonl"

    def run(dataset: Path, results: Path = out) -> int:
        args = cli_args(str(dataset), "--models", "mock/echo", "--out", str(results), "--no-progress")
        return run_cli(args, offline_setup, build_server)

    assert run(math) == 0
    before = out.read_bytes()
    capsys.readouterr()
    assert run(trivia) == 2
    assert capsys.readouterr().err == (
        f"ai-gateway eval: --out: {out} holds 2 results line(s), none for an id of this dataset (e.g. id \"m1\"), so "
        "they are another dataset's: choose another --out, or delete it to start over\n"
    )
    assert out.read_bytes() == before

    numbered = write_jsonl(tmp_path / "numbered.jsonl", [{"id": 1, "prompt": "hi"}])
    named = write_jsonl(tmp_path / "named.jsonl", [{"id": "1", "prompt": "hi"}])
    assert run(numbered, tmp_path / "numbered-out.jsonl") == 0
    capsys.readouterr()
    assert run(named, tmp_path / "numbered-out.jsonl") == 2
    assert 'an id written as a number (1) and as a string ("1") are two ids' in capsys.readouterr().err

    # The same dataset with a row dropped: it resumes, and says what it leaves aside.
    assert run(write_jsonl(tmp_path / "trimmed.jsonl", [{"id": "m1", "prompt": "2+2"}])) == 0
    err = capsys.readouterr().err
    assert f"1 line(s) of {out} are for ids not in this dataset: left as they are, and not in this summary" in err
    assert out.read_bytes() == before


def test_cli_exit_codes_and_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Offline through the mock provider: 0 when every row is answered, 1 when one is not, 2 for a bad model."""
    dataset = write_jsonl(tmp_path / "data.jsonl", [{"prompt": "2+2?", "expected": "4"}, {"prompt": "hi"}])

    def run(models: str, out: str, *extra: str) -> int:
        return run_cli(cli_args(str(dataset), "--models", models, "--out", str(tmp_path / out), *extra),
                       offline_setup, build_server)  # fmt: skip

    assert run("mock/fixed:4", "ok.jsonl") == 0
    printed = capsys.readouterr().out
    assert "mock/fixed:4" in printed and "accuracy: 100.0% (1 of 1 graded queries)" in printed
    assert f"results: {tmp_path / 'ok.jsonl'}" in printed
    assert "cost: 2 answers with no known price; saved by the cache: $0" in printed  # mock has no price
    one_row = write_jsonl(tmp_path / "one.jsonl", [{"prompt": "hi"}])
    args = cli_args(str(one_row), "--models", "mock/echo", "--out", str(tmp_path / "one-out.jsonl"))
    assert run_cli(args, offline_setup, build_server) == 0
    assert "cost: 1 answer with no known price; saved" in capsys.readouterr().out  # not "1 answers"
    assert run("mock/fail:auth", "fail.jsonl", "--json-summary") == 1
    summary = json.loads(capsys.readouterr().out)
    assert (summary["answered"], summary["unanswered"], summary["per_model"][0]["errors"]) == (0, 2, {"auth": 2})
    assert run("mock/fail:auth", "fail.jsonl") == 1
    assert "to ask the 2 with no answer again: the same command with --retry-failed" in capsys.readouterr().out
    assert run("mock/fixed:4", "fail.jsonl", "--retry-failed") == 2  # another setup: refused, as any resume
    capsys.readouterr()
    # A new process's embedded cache is empty: a replay from it could only miss every query.
    assert run("mock/fixed:4", "replay.jsonl", "--cache", "only") == 2
    assert "--cache only replays answers from a cache that outlives a process, and AI_GATEWAY_REDIS_URL is not set" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "replay.jsonl").exists()
    # ... but a file with nothing left to ask is only summarised, as with any other --cache.
    assert run("mock/fixed:4", "ok.jsonl", "--cache", "only") == 0
    assert "2 of 2 queries answered (0 run now, 2 from an earlier run)" in capsys.readouterr().out
    assert run("mock/fail:auth", "fail.jsonl", "--retry-failed", "--samples", "1001") == 2
    assert "--samples: must lie between 1 and 1,000; got 1,001" in capsys.readouterr().err
    assert run("nope/model", "bad.jsonl") == 2
    assert "--models: models[0]: 'nope/model'" in capsys.readouterr().err


def test_a_ctrl_c_outside_the_runs_own_handling_exits_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """While the command starts (imports, settings) or after the summary, Ctrl-C is Python's KeyboardInterrupt:
    it printed a traceback and the process died by SIGINT (-2 to a script), where the docs promise 130."""
    from ai_gateway import cli
    from ai_gateway.evaluation import console

    def interrupted(*args: Any) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(console, "run_cli", interrupted)
    assert cli.main(["eval", "data.jsonl", "--models", "mock/echo", "--out", "o.jsonl"]) == 130
    assert capsys.readouterr().err == "ai-gateway: interrupted\n"


def test_cli_progress_is_shown_on_stderr_unless_turned_off(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dataset = write_jsonl(tmp_path / "data.jsonl", [{"prompt": "2+2?", "expected": "4"}, {"prompt": "hi"}])
    argv = ["eval", str(dataset), "--models", "mock/fixed:4", "--out", str(tmp_path / "o.jsonl")]

    assert run_cli(build_parser().parse_args(argv), offline_setup, build_server) == 0
    err = capsys.readouterr().err  # not a terminal: plain lines (see the next test)
    assert "2/2" in err and "cache hits 0 · tokens" in err

    argv[-1] = str(tmp_path / "quiet.jsonl")
    assert run_cli(build_parser().parse_args([*argv, "--no-progress"]), offline_setup, build_server) == 0
    assert capsys.readouterr().err == ""

    # Bad input is its message alone: the bar (drawn, or its final state printed) comes only once queries start.
    argv[3], argv[-1] = "mock/fixed:4,nope/model", str(tmp_path / "bad.jsonl")
    assert run_cli(build_parser().parse_args(argv), offline_setup, build_server) == 2
    err = capsys.readouterr().err
    assert err.startswith("ai-gateway eval: --models: models[1]: 'nope/model'") and err.count("\n") == 1, err


def test_cli_progress_in_a_log_is_written_as_the_run_goes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where stderr is no terminal (a CI log), rich printed the bar's final state only, when the run ended: a long
    run left the log silent, and CI runners end a job silent for ~10 minutes. Now a line comes at each tenth of the
    queries done, with the rate and the totals so far, and the final line when the run ends."""
    from ai_gateway.evaluation import console

    dataset = write_jsonl(tmp_path / "data.jsonl", [{"id": i, "prompt": f"q{i}"} for i in range(1, 21)])
    seen: list[str] = []  # what stderr got before each results line was written
    real = runner_module._dumps

    def dumps(record: dict[str, Any]) -> str:
        seen.append(capsys.readouterr().err)
        return real(record)

    monkeypatch.setattr(runner_module, "_dumps", dumps)
    argv = ["eval", str(dataset), "--models", "mock/echo", "--concurrency", "1", "--out", str(tmp_path / "o.jsonl")]
    assert run_cli(build_parser().parse_args(argv), offline_setup, build_server) == 0
    during = "".join(seen).splitlines()
    assert [line.split(" · ")[0] for line in during] == [f"eval {n}/20 queries ({n * 5}%)" for n in range(2, 20, 2)]
    line = r"eval {done}/20 queries \({pct}%\) · [\d.,]+ q/s · \d+:\d\d:\d\d · cache hits 0 · tokens \d+ in / \d+ out"
    line += " · cost "
    assert re.fullmatch(line.format(done=2, pct=10) + r"\$0 \+ 2 unpriced \(saved \$0\)", during[0]), during[0]
    final = capsys.readouterr().err.splitlines()
    assert len(final) == 1 and re.fullmatch(line.format(done=20, pct=100) + r".*20 unpriced.*", final[0]), final

    # A slow run writes a line on the first query done _LOG_EVERY_S after the last line (0 here: every one).
    monkeypatch.setattr(console, "_LOG_EVERY_S", 0.0)
    seen.clear()
    argv[-1] = str(tmp_path / "again.jsonl")
    assert run_cli(build_parser().parse_args(argv), offline_setup, build_server) == 0
    during = "".join(seen).splitlines()
    assert [line.split(" · ")[0] for line in during] == [f"eval {n}/20 queries ({n * 5}%)" for n in range(1, 20)]


# ---------------------------------------------------------------------------- the run_eval tool
async def test_run_eval_tool_reports_progress(make_server: Callable[..., FastMCP], fake: GatedFake, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)  # paths are relative to the server's working directory
    write_jsonl(tmp_path / "data.jsonl", dataset_rows())
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total, message))

    dollar_a_token = {"openai/*": {"input_per_mtok": 1e6, "output_per_mtok": 0}}
    async with Client(make_server(model_prices=dollar_a_token), progress_handler=on_progress) as client:
        result = await client.call_tool("run_eval", {"path": "data.jsonl", "models": [A, B], "concurrency": 3})

    summary = result.structured_content
    assert [p[:2] for p in progress] == [(float(i), 10.0) for i in range(1, 11)]
    assert summary["cost_usd"] == summary["input_tokens"] > 0  # A answers every row: $1 per input token
    assert progress[-1][2] == f"10/10 queries, cache hits 0, cost {usd(summary['cost_usd'])}"
    assert (summary["rows"], summary["answered"], summary["accuracy"]) == (10, 10, 0.75)
    assert summary["results_path"] == str(tmp_path / "data.results.jsonl")  # absolute: a client cannot know our cwd
    assert len(read_records(tmp_path / "data.results.jsonl")) == 10
    assert [m["model"] for m in summary["per_model"]] == [A, B]

    # retry_failed reaches the runner: the queries no model answered are asked again, and only they.
    fake.set("ev-a", Scenario.error("auth"))
    fake.set("ev-b", Scenario.error("auth"))
    write_jsonl(tmp_path / "more.jsonl", [{"prompt": "one"}, {"prompt": "two"}])
    async with Client(make_server()) as client:
        failed = (await client.call_tool("run_eval", {"path": "more.jsonl", "models": [A, B]})).structured_content
        fake.set("ev-a", None)
        retry = {"path": "more.jsonl", "models": [A, B], "retry_failed": True}
        retried = (await client.call_tool("run_eval", retry)).structured_content
    assert (failed["unanswered"], retried["ran"], retried["answered"]) == (2, 2, 2)


async def test_run_eval_never_asks_more_at_once_than_the_gateway_takes(
    make_server: Callable[..., FastMCP], fake: GatedFake, tmp_path: Path
) -> None:
    """Past its concurrency limits the gateway fails the extra provider calls at once (overloaded): a run asking more
    at once had queries the provider never saw written as unanswered and graded wrong (172 of 300 in a review).
    Here two slots per provider and two models of one provider per consensus query: one query at a time."""
    write_jsonl(tmp_path / "data.jsonl", dataset_rows(6))
    other = "openai/ev-c"
    release = fake.hold(vendor(A), vendor(other))
    logged: list[str] = []

    async def log_handler(message: Any) -> None:
        logged.append(str(message.data))

    server = make_server(eval_dir=str(tmp_path), max_concurrency_per_provider=2)
    async with Client(server, log_handler=log_handler) as client:
        call = asyncio.create_task(client.call_tool(
            "run_eval", {"path": "data.jsonl", "models": [A, other], "strategy": "consensus", "concurrency": 50}
        ))  # fmt: skip
        await fake.wait_for_calls(2)  # the first query's two models hold both slots; nothing else may be shed
        release.set()
        summary = (await call).structured_content

    assert (summary["answered"], summary["unanswered"], summary["concurrency"]) == (6, 0, 1)
    assert [m["errors"] for m in summary["per_model"]] == [{}, {}]
    assert fake.count() == 12
    assert any("concurrency 50 lowered to 1" in line for line in logged), logged


def test_a_gold_answer_under_another_name_is_pointed_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A dataset from elsewhere keeps its gold answer as 'answer' or 'target': the run graded nothing and said
    nothing about why. It is not graded (GSM8K's 'answer' is worked reasoning, not the answer) but named."""
    rows = [{"prompt": "2+2?", "answer": "4"}, {"prompt": "3+3?", "answer": "6"}, {"prompt": "hi"}]
    dataset = write_jsonl(tmp_path / "data.jsonl", rows)
    argv = (str(dataset), "--models", "mock/fixed:4", "--out", str(tmp_path / "o.jsonl"))
    assert run_cli(cli_args(*argv), offline_setup, build_server) == 0
    captured = capsys.readouterr()
    assert (
        "ai-gateway eval: no row has 'expected', so no answer is graded; 2 of 3 rows have 'answer' (kept in the "
        "results as given): if it holds the gold answer, rename it 'expected' to grade\n"
    ) in captured.err

    # One row with 'expected' is a graded dataset: the others are ungraded on purpose.
    write_jsonl(dataset, [*rows, {"prompt": "5?", "expected": "5"}])
    assert run_cli(cli_args(*argv[:-1], str(tmp_path / "p.jsonl")), offline_setup, build_server) == 0
    assert "no row has 'expected'" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("rows", "said"),
    [
        ([{"prompt": "2+2?", "Expected": "4"}, {"prompt": "3+3?", "Expected": "6"}],
         "2 of 2 rows have 'Expected' (kept in the results as given): field names are case-sensitive, rename it "
         "'expected' to grade"),
        ([{"prompt": "2+2?", "Answer": "4"}, {"prompt": "3+3?", "ANSWER": "6"}, {"prompt": "x", "Answer": "7"}],
         "3 of 3 rows have 'Answer' (kept in the results as given): if it holds the gold answer, rename it"),
    ],
)  # fmt: skip
def test_a_gold_answer_under_another_case_is_pointed_out(
    rows: list[dict[str, str]], said: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """'Expected' and 'Answer' went unremarked (the names were matched as written): the run ended with no accuracy
    and nothing to say why (found by a review)."""
    dataset = write_jsonl(tmp_path / "data.jsonl", rows)
    assert run_cli(cli_args(str(dataset), "--models", "mock/echo", "--out", str(tmp_path / "o.jsonl")),
                   offline_setup, build_server) == 0  # fmt: skip
    assert f"ai-gateway eval: no row has 'expected', so no answer is graded; {said}" in capsys.readouterr().err


async def test_run_eval_points_out_a_gold_answer_under_another_name(
    make_server: Callable[..., FastMCP], fake: GatedFake, tmp_path: Path
) -> None:
    write_jsonl(tmp_path / "data.jsonl", [{"prompt": "2+2?", "target": "4"}])
    logged: list[str] = []

    async def log_handler(message: Any) -> None:
        logged.append(str(message.data))

    async with Client(make_server(eval_dir=str(tmp_path)), log_handler=log_handler) as client:
        summary = (await client.call_tool("run_eval", {"path": "data.jsonl", "models": [A]})).structured_content
    assert (summary["answered"], summary["graded"]) == (1, 0)
    assert any("1 of 1 rows have 'target'" in line for line in logged), logged


def test_cli_concurrency_is_fitted_to_the_gateway_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A first_available query has one model in flight at a time: the limit per provider is the bound."""
    dataset = write_jsonl(tmp_path / "data.jsonl", dataset_rows(3))
    settings = Settings(_env_file=None, max_concurrency=100, max_concurrency_per_provider=16)
    args = cli_args(str(dataset), "--models", "mock/echo", "-c", "40", "--out", str(tmp_path / "o.jsonl"),
                    "--json-summary")  # fmt: skip
    assert run_cli(args, lambda _: (settings, {}), build_server) == 0
    out, err = capsys.readouterr()
    assert "ai-gateway eval: --concurrency 40 lowered to 16: the gateway takes at most 100 provider calls" in err
    assert json.loads(out)["concurrency"] == 16
    args = cli_args(str(dataset), "--models", "mock/echo", "-c", "16", "--out", str(tmp_path / "o2.jsonl"))
    assert run_cli(args, lambda _: (settings, {}), build_server) == 0
    assert "lowered" not in capsys.readouterr().err

    # Hedging: a slow model is joined by the next, so a first_available query may have all its models in flight
    # (it was fitted as one, and the hedges were shed: 8 of 20 queries unanswered in a review).
    hedging = Settings(_env_file=None, max_concurrency=100, max_concurrency_per_provider=16, hedge_after_s=0.5)
    args = cli_args(str(dataset), "--models", "mock/echo,mock/fixed:4", "-c", "40", "--out", str(tmp_path / "h.jsonl"),
                    "--json-summary")  # fmt: skip
    assert run_cli(args, lambda _: (hedging, {}), build_server) == 0
    out, err = capsys.readouterr()
    assert "--concurrency 40 lowered to 8" in err and json.loads(out)["concurrency"] == 8


def test_a_vote_that_alone_passes_the_gateways_limits_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A consensus or fastest query calls every model at once: with two slots per provider, a three-model vote ran
    every row as a two-model one, the third model failing 'overloaded', under a note that the concurrency had been
    lowered to fit (found by a review). No concurrency fits it: the run is refused, naming the setting to raise."""
    dataset = write_jsonl(tmp_path / "data.jsonl", dataset_rows(2))
    models = "mock/fixed:a@50ms,mock/fixed:a@60ms,mock/echo"
    out = tmp_path / "o.jsonl"
    tight = Settings(_env_file=None, max_concurrency_per_provider=2)
    for strategy in ("consensus", "fastest"):
        args = cli_args(str(dataset), "--models", models, "-s", strategy, "--out", str(out))
        assert run_cli(args, lambda _: (tight, {}), build_server) == 2
        assert capsys.readouterr().err == (
            f"ai-gateway eval: --models: a {strategy} query calls its 3 models at once, 3 of them to 'mock', and the "
            "gateway takes at most 2 calls in flight to one provider: the rest would fail 'overloaded' in every row; "
            "set AI_GATEWAY_MAX_CONCURRENCY_PER_PROVIDER to at least 3, or ask fewer models of 'mock'\n"
        )
        assert not out.exists()
    overall = Settings(_env_file=None, max_concurrency=2)
    args = cli_args(str(dataset), "--models", models, "-s", "consensus", "--out", str(out))
    assert run_cli(args, lambda _: (overall, {}), build_server) == 2
    assert "set AI_GATEWAY_MAX_CONCURRENCY to at least 3, or ask fewer models\n" in capsys.readouterr().err
    # One model at a time (first_available, unhedged): the same limits fit it.
    args = cli_args(str(dataset), "--models", models, "--out", str(out))
    assert run_cli(args, lambda _: (overall, {}), build_server) == 0


async def test_run_eval_refuses_a_vote_that_alone_passes_the_gateways_limits(
    make_server: Callable[..., FastMCP], tmp_path: Path
) -> None:
    write_jsonl(tmp_path / "data.jsonl", dataset_rows(2))
    models = ["mock/fixed:a@50ms", "mock/fixed:a@60ms", "mock/echo"]
    async with Client(make_server(eval_dir=str(tmp_path), max_concurrency_per_provider=2)) as client:
        with pytest.raises(ToolError, match=r"^invalid argument models: a consensus query calls its 3 models at once"):
            await client.call_tool("run_eval", {"path": "data.jsonl", "models": models, "strategy": "consensus",
                                                "out": "tool.jsonl"})  # fmt: skip
    assert not (tmp_path / "tool.jsonl").exists()


async def test_run_eval_tool_names_the_bad_argument(running: tuple[Client, Any], tmp_path: Path) -> None:
    client, _ = running
    dataset = write_jsonl(tmp_path / "data.jsonl", ['{"prompt": "ok"}', '{"prompt": 7}'])
    cases = [
        ({"path": str(tmp_path / "missing.jsonl")}, "invalid argument path: "),
        ({"path": str(dataset), "out": str(tmp_path / "no" / "out.jsonl")}, "invalid argument out: directory"),
        ({"path": str(dataset)}, "invalid argument path: " + f"{dataset} line 2: field 'prompt'"),
    ]
    for arguments, message in cases:
        with pytest.raises(ToolError, match="^" + message.replace("(", r"\(")):
            await client.call_tool("run_eval", {"models": [A], **arguments})
    write_jsonl(dataset, ['{"prompt": "ok"}'])
    with pytest.raises(ToolError, match=r"^invalid argument models: models\[0\]"):
        await client.call_tool("run_eval", {"path": str(dataset), "models": ["nope/x"]})
    # Anthropic's API takes 0 to 1: told before any row, not as every row's 400.
    with pytest.raises(ToolError) as info:
        await client.call_tool("run_eval", {"path": str(dataset), "models": [A, B], "temperature": 1.5})
    assert str(info.value) == f"invalid argument temperature: {B!r} accepts 0 to 1; got 1.5 (ask it separately)"
    with pytest.raises(ToolError, match=r"samples\s.*less than or equal to 1000"):
        await client.call_tool("run_eval", {"path": str(dataset), "models": [A], "samples": 1001})
    for name in ("samples", "concurrency", "max_tokens", "temperature", "timeout_s"):  # true is no number (not 1)
        with pytest.raises(ToolError, match=rf"{name}\s.*expected a number, got true"):
            await client.call_tool("run_eval", {"path": str(dataset), "models": [A], name: True})
    # Options are named as the tool's arguments; a path that merely contains "--out" is left as it is.
    odd = write_jsonl(tmp_path / "rows--out.jsonl", ['{"prompt": "ok", "max_tokens": 5}'])
    with pytest.raises(ToolError) as info:
        await client.call_tool("run_eval", {"path": str(odd), "models": [A]})
    assert str(info.value) == (
        f"invalid argument path: {odd} line 1: field 'max_tokens' is a query option, not a dataset field: every row "
        "is asked with the run's options (set it for the whole run with max_tokens); remove it from the dataset, or "
        "split the rows that need another value into their own dataset and run"
    )


async def test_run_eval_names_a_path_no_file_can_have(
    running: tuple[Client, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """A NUL byte, a name over 255 bytes or the home of no user raised ValueError, OSError or RuntimeError past the
    path checks: the caller got fastmcp's bare "Error calling tool 'run_eval'" and the server logged a traceback."""
    client, _ = running
    write_jsonl(tmp_path / "data.jsonl", dataset_rows(1))
    long, nobody = "a" * 300, "~no-such-user-of-ai-gateway"
    cases = [
        ("path", "data\0.jsonl", "it holds a NUL byte, which no file name can"),
        ("path", long, "File name too long"),
        ("out", f"{long}/o.jsonl", "File name too long"),
        ("out", f"{nobody}/o.jsonl", f"{nobody} is the home of no user on the server; write the path without ~"),
    ]
    for argument, given, why in cases:
        with pytest.raises(ToolError) as info:
            await client.call_tool("run_eval", {"path": "data.jsonl", "models": [A], argument: given})
        assert str(info.value) == f"invalid argument {argument}: {given!r} is not a usable path ({why})"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert not (tmp_path / "data.results.jsonl").exists()

    # The CLI: a directory of --out whose name is too long ended in a traceback (exit 1).
    out = tmp_path / long / "o.jsonl"
    args = cli_args(str(tmp_path / "data.jsonl"), "--models", "mock/echo", "--out", str(out))
    assert run_cli(args, offline_setup, build_server) == 2
    err = capsys.readouterr().err
    assert err == f"ai-gateway eval: --out: {str(out)!r} is not a usable path (File name too long)\n"


async def test_run_eval_tool_reads_and_writes_only_inside_its_directory(
    make_server: Callable[..., FastMCP], fake: GatedFake, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A client of an HTTP deployment is not the server's user: run_eval refuses files outside AI_GATEWAY_EVAL_DIR,
    however they are named (absolute, ``..``, a symbolic link inside that leads out), and touches nothing."""
    root, outside = tmp_path / "evals", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    write_jsonl(root / "data.jsonl", dataset_rows(2))
    write_jsonl(outside / "secret.jsonl", dataset_rows(2))
    (outside / "notes.txt").write_text("keep\n")
    (root / "link.jsonl").symlink_to(outside / "secret.jsonl")
    (root / "out-link.jsonl").symlink_to(outside / "notes.txt")
    (root / "away").symlink_to(outside, target_is_directory=True)
    refused = {
        "path": [str(outside / "secret.jsonl"), "../elsewhere/secret.jsonl", "link.jsonl", "away/secret.jsonl"],
        "out": [str(outside / "o.jsonl"), "../elsewhere/o.jsonl", "out-link.jsonl", "away/o.jsonl"],
    }
    async with Client(make_server(eval_dir=str(root))) as client:
        for argument, names in refused.items():
            for name in names:
                arguments = {"path": "data.jsonl", "models": [A], argument: name}
                with pytest.raises(ToolError) as info:
                    await client.call_tool("run_eval", arguments)
                assert str(info.value) == (
                    f"invalid argument {argument}: {name!r} lies outside the evaluation directory {str(root)!r}; "
                    "give a path inside it (or start the server with AI_GATEWAY_EVAL_DIR set to the directory "
                    "you need)"
                ), name
        assert fake.count() == 0
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []  # the caller's mistake
        assert sorted(p.name for p in outside.iterdir()) == ["notes.txt", "secret.jsonl"]
        assert (outside / "notes.txt").read_text() == "keep\n"

        # Inside: relative to the directory (not the server's working directory), absolute, or through ``..``
        # that stays inside.
        (root / "sub").mkdir()
        for path, out in (("data.jsonl", "sub/a.jsonl"), (str(root / "data.jsonl"), str(root / "b.jsonl")),
                          ("sub/../data.jsonl", None)):  # fmt: skip
            result = await client.call_tool("run_eval", {"path": path, "out": out, "models": [A]})
            assert result.structured_content["answered"] == 2
        assert sorted(p.name for p in root.rglob("*.jsonl") if not p.is_symlink()) == [
            "a.jsonl", "b.jsonl", "data.jsonl", "data.results.jsonl"
        ]  # fmt: skip


async def test_run_eval_refuses_a_default_results_file_that_links_outside_and_reports_a_failed_write(
    make_server: Callable[..., FastMCP], fake: GatedFake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no ``out``, the results file is the dataset's name + .results.jsonl: a symbolic link of that name led
    run_eval to append outside its directory. And a write that fails (disk full) reached the caller as a bare
    "Error calling tool" (fastmcp masks unexpected errors); the CLI's message says what happened and what is kept."""
    root, outside = tmp_path / "evals", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    write_jsonl(root / "data.jsonl", dataset_rows(2))
    (outside / "victim.jsonl").write_text("keep\n")
    (root / "data.results.jsonl").symlink_to(outside / "victim.jsonl")
    async with Client(make_server(eval_dir=str(root))) as client:
        with pytest.raises(ToolError) as info:
            await client.call_tool("run_eval", {"path": "data.jsonl", "models": [A]})
        assert str(info.value) == (
            f"invalid argument out: the default results file {str(root / 'data.results.jsonl')!r} (beside the "
            f"dataset) leads outside the evaluation directory {str(root)!r}; give out, a path inside it"
        )
        assert (outside / "victim.jsonl").read_text() == "keep\n" and fake.count() == 0

        def disk_full(record: Any) -> str:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(runner_module, "_dumps", disk_full)
        with pytest.raises(ToolError) as info:
            await client.call_tool("run_eval", {"path": "data.jsonl", "models": [A], "out": "o.jsonl"})
        assert str(info.value) == (
            f"cannot write {root / 'o.jsonl'} (No space left on device); 0 of 2 queries done and kept there; call "
            "run_eval again to resume once it can be written"
        )


def test_an_eval_dir_that_is_not_a_directory_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(_env_file=None, eval_dir=str(tmp_path / "missing"))
    assert describe_settings_error(info.value).startswith("AI_GATEWAY_EVAL_DIR: Value error, ")
    assert Settings(_env_file=None, eval_dir="").eval_dir is None  # empty in a .env: unset


# ---------------------------------------------------------------------------- the CLI as a process
async def _stderr_line(proc: asyncio.subprocess.Process, needle: str) -> str:
    """Lines of the process's stderr up to the first holding ``needle`` (all of them, for the assertion)."""
    assert proc.stderr is not None
    seen = ""
    async with asyncio.timeout(30):
        while needle not in seen:
            line = await proc.stderr.readline()
            assert line, f"stderr ended before {needle!r}: {seen}"
            seen += line.decode()
    return seen


@pytest.mark.parametrize(
    ("signals", "code", "word", "kept", "view"),
    [
        ([signal.SIGINT], 130, "interrupted", 8, []),
        ([signal.SIGINT, signal.SIGINT], 130, "interrupted", 6, ["--no-progress"]),
        ([signal.SIGTERM], 143, "terminated", 6, []),
        # SIGHUP (a terminal closed, an SSH session dropped) killed the run before its cache writes were done.
        ([signal.SIGHUP], 129, "hung up (SIGHUP: the terminal closed)", 6, ["--no-progress"]),
    ],
    ids=["ctrl-c", "ctrl-c-twice", "sigterm", "sighup"],
)
async def test_cli_interrupted_keeps_finished_rows_and_a_rerun_resumes(
    tmp_path: Path, signals: list[signal.Signals], code: int, word: str, kept: int, view: list[str]
) -> None:
    """A first Ctrl-C starts no new query and lets the two in flight finish: a provider bills a query cut off
    too, and the resume would have paid for it again. A second Ctrl-C, or SIGTERM (a scheduler, a container
    stopping: its grace period may be shorter than a query), cancels them. SIGTERM used to kill the process with
    no word, before the cache writes of the lines already written were done (a later replay missed them)."""
    write_jsonl(tmp_path / "data.jsonl", slow_rows())
    argv = ["eval", "data.jsonl", "--models", A, "--concurrency", "2", "--cache", "bypass", "--out", "out.jsonl"]
    async with PromptGatedFake() as fake:
        env = subprocess_env(fake.url)
        proc = await asyncio.create_subprocess_exec(
            *CLI, *argv, *view, env=env, cwd=tmp_path, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            await fake.wait_until(lambda: fake.held == 2, "two slow rows held", timeout=30)
            err = ""
            for signum in signals:
                proc.send_signal(signum)
                if signum == signal.SIGINT and not err:
                    err = await _stderr_line(proc, "Ctrl-C again to stop now")
                    assert "stopping: no new query starts; waiting for the 2 in flight to finish" in err
            if kept == 8:
                fake.gate.set()  # the two in flight answer; nothing else may be asked
            async with asyncio.timeout(30):
                out, rest = await proc.communicate()
            err += rest.decode()
        finally:
            await stop_process(proc)
        assert proc.returncode == code, err
        assert f"{word}; {kept} of 10 queries done and kept in out.jsonl" in err
        assert "Traceback" not in err
        # Sorted: two queries run at once, and their lines are written as they finish, in either order.
        assert sorted(r["id"] for r in read_records(tmp_path / "out.jsonl")) == list(range(1, kept + 1))
        assert fake.count() == 8  # six fast rows, and the two slow ones asked before the signal
        # Drained, the run ends with the summary of what it did (stopped at once, with none).
        assert (b"8 of 10 queries answered, 2 not run" in out) == (kept == 8), out.decode()

        fake.gate.set()
        before = fake.count()
        code, stdout, err2 = await run_cli_process(*argv, "--json-summary", env=env, cwd=tmp_path)
        assert code == 0, err2
        assert fake.count() - before == 10 - kept
        summary = json.loads(stdout)
        assert (summary["resumed"], summary["ran"], summary["done"], summary["answered"]) == (kept, 10 - kept, 10, 10)
        records = read_records(tmp_path / "out.jsonl")
        assert sorted(r["id"] for r in records) == list(range(1, 11)) and len(by_key(records)) == 10


@pytest.mark.parametrize("view", [[], ["--no-progress"]], ids=["progress-bar", "no-progress"])
async def test_cli_whose_terminal_closes_keeps_its_lines_and_their_cache_entries(
    tmp_path: Path, redis_target: RedisTarget, view: list[str]
) -> None:
    """The terminal the run writes to closes (an SSH session drops): the kernel sends SIGHUP, which killed the run
    before the cache writes of the lines already written were done, so a replay missed some of them. Handled as
    SIGTERM is, and the writes to the terminal that is gone (EIO) do not turn the end into another error."""
    write_jsonl(tmp_path / "data.jsonl", slow_rows())
    argv = ["eval", "data.jsonl", "--models", A, "--concurrency", "2", "--out", "out.jsonl", *view]

    def own_terminal() -> None:  # in the child, a session leader (start_new_session): the pty becomes its terminal
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    async with PromptGatedFake() as fake:
        env = subprocess_env(
            fake.url, AI_GATEWAY_REDIS_URL=redis_target.url, AI_GATEWAY_CACHE_NAMESPACE=redis_target.namespace
        )
        terminal, device = os.openpty()
        proc = await asyncio.create_subprocess_exec(
            *CLI, *argv, env=env, cwd=tmp_path, stdin=device, stdout=device, stderr=device,
            start_new_session=True, preexec_fn=own_terminal,
        )  # fmt: skip
        os.close(device)
        loop = asyncio.get_running_loop()
        os.set_blocking(terminal, False)
        shown = bytearray()  # read as it comes: a terminal nobody reads fills up, and the run's writes would block
        loop.add_reader(terminal, lambda: shown.extend(os.read(terminal, 65536)))
        try:
            await fake.wait_until(lambda: fake.held == 2, "two slow rows held", timeout=30)
            loop.remove_reader(terminal)
            os.close(terminal)  # the terminal closes: the kernel hangs it up, and sends SIGHUP
            terminal = -1
            async with asyncio.timeout(30):
                await proc.wait()
        finally:
            if terminal >= 0:
                loop.remove_reader(terminal)
                os.close(terminal)
            fake.gate.set()
            await stop_process(proc)
    assert proc.returncode == 129, shown.decode(errors="replace")
    assert sorted(r["id"] for r in read_records(tmp_path / "out.jsonl")) == [1, 2, 3, 4, 5, 6]
    assert len([k for k in redis_target.stored_keys() if k.count(b":") == 2]) == 6  # each written line's answer


def test_cli_replay_from_a_redis_that_does_not_answer_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every query would have been a cache_miss line, and a rerun, once Redis was back, took them all for done."""
    with socket.socket() as probe:  # a port nothing listens on: taken and let go
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"redis://:hunter2@127.0.0.1:{port}/0"
    dataset = write_jsonl(tmp_path / "data.jsonl", dataset_rows(2))
    out = tmp_path / "replay.jsonl"
    args = cli_args(str(dataset), "--models", "mock/echo", "--out", str(out), "--cache", "only")
    assert run_cli(args, lambda _: (Settings(_env_file=None, redis_url=url), {}), build_server) == 2
    err = capsys.readouterr().err
    assert (
        f"--cache only replays from the Redis at redis://:****@127.0.0.1:{port}/0, which failed a PING "
        f"(ConnectionError: Error 111 connecting to 127.0.0.1:{port}."
    ) in err
    assert "); start it (or fix AI_GATEWAY_REDIS_URL) and run again. Nothing was written" in err
    assert "hunter2" not in err and not out.exists()


def test_cli_replay_from_a_redis_that_refuses_the_url_says_what_it_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], private_redis: RedisProcess
) -> None:
    """A wrong password or database number was reported as the error's type alone, under advice to start a Redis
    that was running (found by a review): Redis's own words say which part of the URL to fix."""
    with private_redis.client() as r:
        r.config_set("requirepass", "s3cretpw")
    dataset = write_jsonl(tmp_path / "data.jsonl", dataset_rows(2))
    out = tmp_path / "replay.jsonl"
    args = cli_args(str(dataset), "--models", "mock/echo", "--out", str(out), "--cache", "only")
    for url, said in [
        (f"redis://:wr0ngpass@127.0.0.1:{private_redis.port}/0", "(AuthenticationError: invalid username-password"),
        (f"redis://:s3cretpw@127.0.0.1:{private_redis.port}/99", "(ResponseError: DB index is out of range)"),
    ]:
        assert run_cli(args, lambda _, url=url: (Settings(_env_file=None, redis_url=url), {}), build_server) == 2
        err = capsys.readouterr().err
        assert f"127.0.0.1:{private_redis.port}/{url.rsplit('/', 1)[1]}, which failed a PING {said}" in err
        assert "wr0ngpass" not in err and "s3cretpw" not in err and not out.exists()


async def test_cli_replays_offline_from_a_shared_cache(fake: GatedFake, redis_target: RedisTarget,
                                                       tmp_path: Path) -> None:  # fmt: skip
    """The embedded cache dies with its process: a replay by another process needs Redis."""
    write_jsonl(tmp_path / "data.jsonl", dataset_rows())
    env = subprocess_env(
        fake.url, AI_GATEWAY_REDIS_URL=redis_target.url, AI_GATEWAY_CACHE_NAMESPACE=redis_target.namespace
    )
    argv = ["eval", "data.jsonl", "--models", f"{A},{B}", "--strategy", "consensus", "--json-summary"]
    code, out, err = await run_cli_process(*argv, "--out", "run.jsonl", env=env, cwd=tmp_path)
    assert code == 0, err
    first = json.loads(out)
    calls = fake.count()
    assert len([k for k in redis_target.stored_keys() if k.count(b":") == 2]) == 20  # 10 rows x 2 models
    await fake.stop()  # a replay must not need the provider at all

    code, out, err = await run_cli_process(*argv, "--cache", "only", "--out", "replay.jsonl", env=env, cwd=tmp_path)
    assert code == 0, err
    replay = json.loads(out)
    assert by_key(read_records(tmp_path / "replay.jsonl")) == by_key(read_records(tmp_path / "run.jsonl"))
    assert fake.count() == calls == 20
    assert (replay["cache_hits"], replay["input_tokens"], replay["accuracy"]) == (20, 0, first["accuracy"])
    assert replay["saved_input_tokens"] == first["input_tokens"] > 0


async def test_a_later_eval_process_prices_from_the_memo_without_loading_the_table(
    fake: GatedFake, tmp_path: Path
) -> None:
    """price_memo.py: the first process loads genai-prices and remembers the prices of its models; the next one
    with the same models does not import it at all (~0.1 s of its start), and reports the same costs."""
    write_jsonl(tmp_path / "data.jsonl", dataset_rows(2))
    models = "openai/gpt-4o-mini,gemini/gemini-2.5-pro"  # flat and tiered; two of two: both always answer
    env = subprocess_env(fake.url, XDG_CACHE_HOME=str(tmp_path / "cache"), PYTHONPROFILEIMPORTTIME="1")
    argv = ["eval", "data.jsonl", "--models", models, "--strategy", "consensus", "--cache", "bypass", "--json-summary"]
    runs = []
    for out in ("first.jsonl", "second.jsonl"):
        code, stdout, err = await run_cli_process(*argv, "--no-progress", "--out", out, env=env, cwd=tmp_path)
        assert code == 0, err
        runs.append((json.loads(stdout), "genai_prices" in err))  # -X importtime lists every module imported
    (first, first_loaded), (second, second_loaded) = runs
    assert first_loaded and not second_loaded
    costs = [(m["model"], m["cost_usd"]) for m in first["per_model"]]
    assert [(m["model"], m["cost_usd"]) for m in second["per_model"]] == costs
    assert costs[0][1] > 0 and costs[1][1] > 0
    assert [p.name for p in (tmp_path / "cache" / "ai-gateway").iterdir()] == [f"prices-{table_build()}.json"]


def test_cli_via_tool_writes_the_same_records_as_the_default_path(tmp_path: Path) -> None:
    """--via tool runs each row through the query_models tool of an in-memory server; the default path runs
    Gateway.query on a gateway with no server. Same dataset, same answers and grading, record for record."""
    dataset = write_jsonl(tmp_path / "data.jsonl", [{"id": "a", "prompt": "2+2?", "expected": "4"},
                                                     {"id": "b", "prompt": "hi", "expected": "5"}])  # fmt: skip
    built: list[Any] = []

    def build(settings: Settings, environ: dict[str, str]) -> Any:
        built.append(settings)
        return build_server(settings, environ)

    def run(out: str, *extra: str) -> list[dict[str, Any]]:
        args = cli_args(str(dataset), "--models", "mock/fixed:4", "--out", str(tmp_path / out), *extra)
        assert run_cli(args, offline_setup, build) == 0  # every row answered (a wrong answer is graded, not failed)
        return read_records(tmp_path / out)

    direct = run("direct.jsonl")
    assert built == []  # the default path built no MCP server
    via_tool = run("tool.jsonl", "--via", "tool")
    assert len(built) == 1

    def essentials(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return sorted((r["id"], r["answer"], r["correct"]) for r in records)

    assert essentials(direct) == essentials(via_tool) == [("a", "4", True), ("b", "4", False)]
