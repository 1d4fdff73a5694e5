"""The eval section of bench/cache.py: rows/s of ``ai-gateway eval`` replaying a fully cached dataset.

Writes a JSONL dataset of unique prompts, fills Redis with ``ai-gateway eval`` subprocesses against
the fake provider, then replays it with ``--cache only`` in new processes (and in this process, to
separate start-up from the per-row cost). Optionally profiles one replay (``profile_replay``).
Figures only: nothing here decides an exit code. See bench/README.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchlib import REPO, Figures, rotated

ONE = ("openai/gpt-4o-mini",)
THREE = ("openai/gpt-4o-mini", "openai/gpt-4o", "openai/gpt-4.1-mini")
TARGET_ROWS_S = 2000.0
FASTMCP_ENV = {
    "FASTMCP_CHECK_FOR_UPDATES": "off",
    "FASTMCP_SHOW_SERVER_BANNER": "false",
    "FASTMCP_LOG_ENABLED": "false",
}


def write_dataset(path: Path, rows: int) -> None:
    """Unique prompts; every 10th row expects a wrong answer, so grading sees both outcomes."""
    with path.open("w", encoding="utf-8") as f:
        for i in range(rows):
            expected = "Lyon" if i % 10 == 9 else "Paris"
            prompt = f"Question {i}: what is the capital of France? Answer in one word."
            f.write(json.dumps({"id": f"q{i:05d}", "prompt": prompt, "expected": expected}) + "\n")


def cli_argv() -> list[str]:
    """The project's console script, run by this interpreter (so a profiler can wrap it)."""
    script = Path(sys.executable).with_name("ai-gateway")
    return [sys.executable, str(script)] if script.exists() else [sys.executable, "-m", "ai_gateway.cli"]


@dataclass(frozen=True, slots=True)
class Setup:
    url: str  # the fake provider
    redis_url: str
    namespace: str  # every key of this run starts with it (deleted by the caller)
    tmp: Path  # dataset, results files, HOME and working directory of the CLI runs
    rows: int
    rounds: int
    high: int  # the higher --concurrency
    op_timeout_s: float | None = None  # AI_GATEWAY_CACHE_OP_TIMEOUT_S; None: the gateway's default

    @property
    def dataset(self) -> Path:
        return self.tmp / "dataset.jsonl"

    def env(self, code: Path | None = None) -> dict[str, str]:
        """A clean environment: no inherited keys or AI_GATEWAY_* settings; the fake, Redis and a namespace.

        ``code``: a checkout whose ``ai_gateway`` and ``providers`` are imported instead of the installed ones
        (PYTHONPATH comes before the editable install's finder).
        """
        env = {k: v for k in ("PATH", "LANG", "LC_ALL", "TMPDIR") if (v := os.environ.get(k))}
        if code is not None:
            env["PYTHONPATH"] = str(code)
        env |= FASTMCP_ENV | {"HOME": str(self.tmp), "OPENAI_BASE_URL": f"{self.url}/v1", "OPENAI_API_KEY": "sk-bench"}
        env |= {"AI_GATEWAY_REDIS_URL": self.redis_url, "AI_GATEWAY_CACHE_NAMESPACE": self.namespace}
        if self.op_timeout_s is not None:
            env["AI_GATEWAY_CACHE_OP_TIMEOUT_S"] = str(self.op_timeout_s)
        return env

    async def cli(
        self, args: list[str], rows: int | None = None, wrapper: tuple[str, ...] = (), code: Path | None = None
    ) -> Run:
        """``ai-gateway <args>`` in a new process, in ``tmp``; timed from spawn to exit."""
        command = cli_argv()
        if wrapper[:1] == (sys.executable,):  # python -m cProfile ...: the script, not a second interpreter
            command = command[1:]
        argv = [*wrapper, *command, *args]
        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            *argv, env=self.env(code), cwd=self.tmp, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await proc.communicate()
        wall = time.perf_counter() - started
        if proc.returncode not in (0, 1):  # 1: some row got no answer; its errors are counted
            raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {err.decode()[-2000:]}")
        return Run(self.rows if rows is None else rows, wall, parse_summary(out.decode()))


def tree_state() -> str:
    """The commit and a digest of uncommitted changes under ai_gateway/: others may edit the checkout between runs."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False).stdout

    head = git("rev-parse", "--short", "HEAD").strip() or "?"
    changed = git("status", "--porcelain", "--", "ai_gateway").splitlines()
    if not changed:
        return head
    digest = hashlib.sha256((git("diff", "HEAD", "--", "ai_gateway") + "\n".join(changed)).encode()).hexdigest()
    return f"{head} + {len(changed)} uncommitted file(s) under ai_gateway/ (digest {digest[:8]})"


def provider_calls(url: str) -> int:
    """Requests the fake provider has received so far (all models)."""
    with urllib.request.urlopen(f"{url}/_admin/calls", timeout=5) as resp:
        return int(json.load(resp)["total"])


@dataclass(frozen=True, slots=True)
class Kind:
    """One replay setup."""

    label: str
    models: tuple[str, ...]
    strategy: str
    concurrency: int
    via: str = "gateway"

    def eval_args(self, dataset: Path, out: Path, cache: str = "only") -> list[str]:
        args = ["eval", str(dataset), "--models", ",".join(self.models), "--strategy", self.strategy]
        args += ["--concurrency", str(self.concurrency), "--cache", cache, "--out", str(out)]
        return [*args, "--via", self.via, "--no-progress", "--json-summary"]


@dataclass(slots=True)
class Run:
    rows: int
    wall_s: float  # the whole process (or, in-process: dataset load to summary)
    summary: dict[str, Any]

    @property
    def loop_rate(self) -> float:
        return float(self.summary.get("queries_per_s") or 0.0)

    @property
    def wall_rate(self) -> float:
        return self.rows / self.wall_s

    @property
    def errors(self) -> dict[str, int]:
        """Failed model answers by error code (cache_miss: the entry was not found)."""
        out: dict[str, int] = {}
        for m in self.summary["per_model"]:
            for code, n in m["errors"].items():
                out[code] = out.get(code, 0) + n
        return out

    @property
    def misses(self) -> int:
        return sum(self.errors.values())


def parse_summary(stdout: str) -> dict[str, Any]:
    """The ``--json-summary`` object (anything a wrapper printed before it is skipped)."""
    start = stdout.find("{\n")
    if start < 0:
        raise RuntimeError(f"no JSON summary in the output: {stdout[-500:]!r}")
    summary: dict[str, Any] = json.JSONDecoder().raw_decode(stdout[start:])[0]
    return summary


@dataclass(slots=True)
class Samples:
    loop: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def add(self, run: Run) -> None:
        self.loop.append(run.loop_rate)
        self.wall.append(run.wall_rate)
        for code, n in run.errors.items():
            self.errors[code] = self.errors.get(code, 0) + n

    def figures(self) -> Figures:
        return {"loop": spread(self.loop), "wall": spread(self.wall), "errors": self.errors}


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


async def replay(setup: Setup) -> Figures:
    """Fill Redis through the CLI, then replay fully cached: new processes, and in this process."""
    tmp, rows, high, url = setup.tmp, setup.rows, setup.high, setup.url
    dataset = setup.dataset
    write_dataset(dataset, rows)
    one_row = tmp / "one-row.jsonl"
    one_row.write_text(dataset.read_text().splitlines()[0] + "\n")
    fig: Figures = {"rows": rows, "rounds": setup.rounds, "models_one": list(ONE), "models_three": list(THREE)}
    fig["cache_op_timeout_s"] = setup.op_timeout_s
    fig["loadavg_1m"] = [os.getloadavg()[0]]  # others' work on this machine skews every rate
    fig["tree"] = tree_state()

    # Fill: one run per model (first_available, --cache use). A consensus run would not do:
    # once two models agree it cancels the third, whose answer is never stored (~1-2 % of them).
    fills, calls0 = [], provider_calls(url)
    for i, model in enumerate(THREE):
        kind = Kind("fill", (model,), "first_available", 4)
        fills.append(await setup.cli(kind.eval_args(dataset, tmp / f"fill-{i}.jsonl", "use")))
    fig["fill"] = {
        "provider_calls": provider_calls(url) - calls0,
        "entries": await count_entries(setup.redis_url, setup.namespace),
        "loop_rows_s": [r.loop_rate for r in fills],
        "wall_rows_s": [r.wall_rate for r in fills],
    }
    print(f"   fill: {len(THREE)} runs (one per model, first_available, --cache use): "
          f"{fig['fill']['provider_calls']:,} provider calls, {fig['fill']['entries']:,} entries in Redis "
          f"(of {rows * len(THREE):,}); {statistics.median(fig['fill']['loop_rows_s']):,.0f} rows/s each "
          "(run loop, every row a miss)")  # fmt: skip

    kinds = [
        Kind("CLI first_available x1", ONE, "first_available", 4),
        Kind("CLI first_available x1", ONE, "first_available", high),
        Kind("CLI consensus x3", THREE, "consensus", 4),
        Kind("CLI consensus x3", THREE, "consensus", high),
        Kind("CLI consensus x3 --via tool", THREE, "consensus", 4, "tool"),
    ]
    cli: dict[Kind, Samples] = {k: Samples() for k in kinds}
    startup: list[float] = []
    misses = 0
    calls0 = provider_calls(url)
    for round_no in range(setup.rounds):
        for kind in rotated(kinds, round_no):
            run = await setup.cli(kind.eval_args(dataset, tmp / f"replay-{kinds.index(kind)}-{round_no}.jsonl"))
            cli[kind].add(run)
            misses += run.misses
        out = tmp / f"startup-{round_no}.jsonl"
        startup.append((await setup.cli(kinds[0].eval_args(one_row, out), rows=1)).wall_s)
    replay_calls = provider_calls(url) - calls0

    inproc = await in_process(setup)
    misses += inproc.pop("_misses")
    replay_calls += inproc.pop("_calls")
    fig["startup_s"] = spread(startup)
    fig["cli"] = {f"{k.label} -c {k.concurrency}": s.figures() for k, s in cli.items()}
    fig["in_process"] = inproc
    fig["loadavg_1m"].append(os.getloadavg()[0])
    fig["provider_calls_during_replays"] = replay_calls
    fig["cache_miss_errors"] = misses
    return fig


async def count_entries(redis_url: str, namespace: str) -> int:
    import redis.asyncio as aioredis

    from ai_gateway.cache.key import answer_prefix

    raw = aioredis.Redis.from_url(redis_url)
    try:
        return sum([1 async for _ in raw.scan_iter(f"{answer_prefix(namespace)}*", count=1000)])
    finally:
        await raw.aclose()


async def in_process(setup: Setup) -> Figures:
    """The runner inside this (warm) process: no interpreter start-up or imports, same per-row work.

    The Redis gateway reads the entries the CLI stored; the embedded one gets a copy of them first.
    Wall time here runs from loading the dataset to the summary (what ``run_eval`` would do).
    """
    import pybreaker  # noqa: F401  # imported now, not by the lifespan's warm-up thread mid-run
    import redis.asyncio as aioredis
    from fastmcp import Client

    import ai_gateway.transport  # noqa: F401
    from ai_gateway.cache.key import answer_prefix
    from ai_gateway.evaluation.console import lifespan_gateway
    from ai_gateway.evaluation.dataset import load_dataset
    from ai_gateway.evaluation.runner import EvalConfig, execute, gateway_query, prepare, tool_query
    from ai_gateway.server import build_server
    from ai_gateway.settings import Settings

    url, namespace, tmp, dataset, rows = setup.url, setup.namespace, setup.tmp, setup.dataset, setup.rows
    environ = {"OPENAI_API_KEY": "sk-bench", "OPENAI_BASE_URL": f"{url}/v1"}
    with contextlib.suppress(ImportError):  # the CLI loads the price table before its run loop: so do we
        from ai_gateway.pricing import preload

        preload()
    timeout = {} if setup.op_timeout_s is None else {"cache_op_timeout_s": setup.op_timeout_s}
    servers = {
        "embedded": build_server(Settings(_env_file=None, cache_namespace=namespace), environ),
        "Redis": build_server(
            Settings(_env_file=None, redis_url=setup.redis_url, cache_namespace=namespace, **timeout), environ
        ),
    }
    kinds = [
        ("embedded", Kind("in-process first_available x1", ONE, "first_available", 4)),
        ("embedded", Kind("in-process consensus x3", THREE, "consensus", 4)),
        ("embedded", Kind("in-process consensus x3 --via tool", THREE, "consensus", 4, "tool")),
        ("Redis", Kind("in-process first_available x1", ONE, "first_available", 4)),
        ("Redis", Kind("in-process consensus x3", THREE, "consensus", 4)),
        ("Redis", Kind("in-process consensus x3", THREE, "consensus", setup.high)),
    ]
    samples = {k: Samples() for k in kinds}
    misses = 0
    calls0 = provider_calls(url)
    async with Client(servers["embedded"]) as emb_client, Client(servers["Redis"]) as redis_client:
        clients = {"embedded": emb_client, "Redis": redis_client}
        gateways = {name: lifespan_gateway(server) for name, server in servers.items()}
        raw = aioredis.Redis.from_url(setup.redis_url)
        try:  # the embedded cache gets a copy of every stored answer
            backend, ttl = gateways["embedded"].cache.backend, gateways["embedded"].cache.ttl_s
            async for key in raw.scan_iter(f"{answer_prefix(namespace)}*", count=1000):
                if (value := await raw.get(key)) is not None:
                    await backend.set(key.decode(), value, ttl)
        finally:
            await raw.aclose()
        for round_no in range(setup.rounds):
            for backend_name, kind in rotated(kinds, round_no):
                out = tmp / f"inproc-{kinds.index((backend_name, kind))}-{round_no}.jsonl"
                gc.collect()
                started = time.perf_counter()
                config = EvalConfig(kind.models, kind.strategy, concurrency=kind.concurrency, cache="only")
                plan = prepare(dataset, load_dataset(dataset), config, out)
                gateway, client = gateways[backend_name], clients[backend_name]
                query = tool_query(client) if kind.via == "tool" else gateway_query(gateway)
                summary = (await execute(plan, query)).model_dump()
                run = Run(rows, time.perf_counter() - started, summary)
                samples[(backend_name, kind)].add(run)
                misses += run.misses
    figures: Figures = {
        f"{kind.label} ({name}) -c {kind.concurrency}": s.figures() for (name, kind), s in samples.items()
    }
    return figures | {"_misses": misses, "_calls": provider_calls(url) - calls0}


def report(fig: Figures) -> list[tuple[str, bool, str]]:
    """Print the rates; return the target rows (name, met, detail) for the summary block."""

    def cell(s: dict[str, float]) -> str:
        return f"{s['median']:7,.0f} [{s['min']:,.0f}-{s['max']:,.0f}]"

    print(f"\n== eval replay: {fig['rows']:,} rows, every answer cached, --cache only; "
          f"rows/s, median [min-max] of {fig['rounds']} round(s) ==")  # fmt: skip

    def line(name: str, s: Figures) -> str:
        failed = ", ".join(f"{code} {n}" for code, n in s["errors"].items()) or "-"
        return f"   {name:<52} {cell(s['loop']):>22} {cell(s['wall']):>22}   {failed}"

    print(f"   {'path':<52} {'run loop (summary)':>22} {'whole process':>22}   failed answers")
    for name, s in fig["cli"].items():
        print(line(name, s))
    print(f"   {'':<52} {'':>22} {'(dataset load..summary)':>22}")
    for name, s in fig["in_process"].items():
        print(line(name, s))
    timeout = fig["cache_op_timeout_s"]
    print(f"   cpus {os.cpu_count()}, load average (1 min) at start / end: "
          f"{fig['loadavg_1m'][0]:.1f} / {fig['loadavg_1m'][1]:.1f}; AI_GATEWAY_CACHE_OP_TIMEOUT_S "
          f"{'unset (the gateway default)' if timeout is None else timeout}")  # fmt: skip
    print(f"   code measured: {fig['tree']}")
    st = fig["startup_s"]
    print(f"   start-up: a 1-row replay process takes {st['median']:.2f} s [{st['min']:.2f}-{st['max']:.2f}]")
    print(f"   provider calls during the replays: {fig['provider_calls_during_replays']}; "
          f"failed model answers (cache_miss...): {fig['cache_miss_errors']}")  # fmt: skip
    rows = []
    for group in ("cli", "in_process"):
        for name, s in fig[group].items():
            if "--via tool" in name:
                continue  # the slow fidelity path: shown above, not held to the target
            whole = "whole process" if group == "cli" else "load..summary"
            failed = sum(s["errors"].values())
            for measure, label in (("loop", "run loop"), ("wall", whole)):
                value = s[measure]["median"]
                detail = f"{value:,.0f} rows/s"
                if failed:  # answers that did not come from the cache: not a full replay, whatever the rate
                    detail += f" (but {failed:,} failed answers: not a full replay)"
                rows.append((f"eval replay >= {TARGET_ROWS_S:,.0f} rows/s: {name}, {label}",
                             value >= TARGET_ROWS_S and not failed, detail))  # fmt: skip
    return rows


# -- A/B against another revision ---------------------------------------------------------------

COMPARED = (Kind("consensus x3", THREE, "consensus", 4), Kind("first_available x1", ONE, "first_available", 4))


def check_revision(rev: str) -> str:
    """The commit ``rev`` names, or SystemExit with the reason (before anything is started)."""
    found = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
                           cwd=REPO, capture_output=True, text=True, check=False)  # fmt: skip
    if found.returncode != 0:
        raise SystemExit(f"--compare {rev}: not a commit of this repository (try a hash, a tag or HEAD~1)")
    return found.stdout.strip()


async def compare(setup: Setup, rev: str) -> Figures:
    """Replay the filled dataset with this checkout and with ``rev``, alternating, in the same Redis entries.

    On a machine whose speed drifts by tens of percent between runs, only rates taken side by side in one run
    say whether a change helped. ``rev`` runs from a temporary git worktree (its bytecode compiled first, as the
    checkout's is); the installed dependencies and entry points are this checkout's.
    """
    import compileall

    tree = setup.tmp / "compare-tree"
    git = ["git", "-C", str(REPO), "worktree"]
    await asyncio.to_thread(subprocess.run, [*git, "add", "--detach", "--quiet", str(tree), rev], check=True)
    try:
        for package in ("ai_gateway", "providers"):
            compileall.compile_dir(tree / package, quiet=1)
        sides: dict[str, Path | None] = {"this checkout": None, rev: tree}
        samples = {(kind.label, side): Samples() for kind in COMPARED for side in sides}
        one_row = setup.tmp / "one-row.jsonl"
        for code in sides.values():  # warm the page cache (and any missing bytecode) for each side
            await setup.cli(COMPARED[0].eval_args(one_row, setup.tmp / "compare-warm.jsonl"), rows=1, code=code)
        rounds = max(2 * setup.rounds, 4)
        for round_no in range(rounds):
            for kind in COMPARED:
                for side in rotated(list(sides), round_no):
                    out = setup.tmp / f"compare-{round_no}-{kind.strategy}-{list(sides).index(side)}.jsonl"
                    samples[kind.label, side].add(await setup.cli(kind.eval_args(setup.dataset, out), code=sides[side]))
    finally:
        await asyncio.to_thread(subprocess.run, [*git, "remove", "--force", str(tree)], check=False)
    fig: Figures = {"rev": rev, "rounds": rounds, "tree": tree_state()}
    for kind in COMPARED:
        fig[kind.label] = {side: samples[kind.label, side].figures() for side in sides}
    return fig


def report_compare(fig: Figures) -> None:
    rev = fig["rev"]
    print(f"\n== A/B: this checkout ({fig['tree']}) against {rev}, same Redis entries, {fig['rounds']} alternating "
          "rounds; rows/s, medians: run loop / whole process ==")  # fmt: skip
    print(f"   {'replay, -c 4':<20} {'this checkout':>18} {rev[:12]:>18} {'this / ' + rev[:12]:>22}")
    for label, sides in fig.items():
        if not isinstance(sides, dict):
            continue
        this, other = sides.values()
        loop, wall = (this[m]["median"] / other[m]["median"] for m in ("loop", "wall"))
        failed = sum(this["errors"].values()) + sum(other["errors"].values())
        print(f"   {label:<20} {_rates(this):>18} {_rates(other):>18} {f'{loop:.2f}x / {wall:.2f}x':>22}"
              + (f"   ({failed} failed answers: not a full replay)" if failed else ""))  # fmt: skip


def _rates(s: Figures) -> str:
    return f"{s['loop']['median']:,.0f} / {s['wall']['median']:,.0f}"


# -- profile ------------------------------------------------------------------------------------

PROFILE_RATE_HZ = 250


def find_py_spy(given: str | None) -> str | None:
    if given:
        return given
    here = Path(sys.executable).with_name("py-spy")
    return str(here) if here.exists() else shutil.which("py-spy")


async def profile_replay(setup: Setup, py_spy: str | None, keep: Path | None = None) -> Figures:
    """Profile the consensus replay over Redis (default path and --via tool) in a new CLI process.

    The profiles (py-spy raw stacks, or pstats) are written to ``keep`` if given, else to the temporary directory.
    """
    where = keep or setup.tmp
    where.mkdir(parents=True, exist_ok=True)
    out: Figures = {}
    for kind in (Kind("consensus", THREE, "consensus", 4), Kind("consensus", THREE, "consensus", 4, "tool")):
        args = kind.eval_args(setup.dataset, setup.tmp / f"profile-{kind.via}.jsonl")
        name = f"consensus x3, Redis, -c 4, --via {kind.via}"
        if py_spy is None:
            out[name] = await cprofile(setup, args, where / f"profile-{kind.via}.pstats")
            continue
        raw = where / f"profile-{kind.via}.txt"
        argv = (py_spy, "record", "--idle", "--threads", "-r", str(PROFILE_RATE_HZ), "-f", "raw", "-o", str(raw), "--")
        run = await setup.cli(args, wrapper=argv)
        out[name] = breakdown(raw, run, name)
    return out


async def cprofile(setup: Setup, args: list[str], path: Path) -> Figures:
    """Fallback without py-spy: cProfile (deterministic, so it inflates many small calls)."""
    import pstats

    run = await setup.cli(args, wrapper=(sys.executable, "-m", "cProfile", "-o", str(path)))
    print(f"\n   cProfile (py-spy not found), {run.loop_rate:,.0f} rows/s under the profiler, "
          f"{run.misses} failed answers; the gateway's and redis-py's functions by cumulative time, "
          "then every function by own time:")  # fmt: skip
    stats = pstats.Stats(str(path))
    stats.sort_stats("cumulative").print_stats(r"ai_gateway/(cache|dispatch|gateway|evaluation)|redis/asyncio", 20)
    stats.sort_stats("tottime").print_stats(20)
    return {"loop_rows_s_profiled": run.loop_rate, "wall_s": run.wall_s}


# Categories of the main thread's samples, in order: the first whose test matches a stack wins.
# A frame is (function, file, line); tests look at the whole stack (root first).
LOOP_CATEGORIES: list[tuple[str, str]] = [
    ("redis", "Redis: redis-py client work (command, pool, pack, parse)"),
    ("redis_io", "Redis: socket reads/writes in the event loop"),
    ("key", "cache: key (canonical JSON + sha256)"),
    ("cache", "cache: lookup glue, envelope decode, timeouts"),
    ("mcp", "MCP tool path (fastmcp client + server, JSON-RPC, validation)"),
    ("dispatch", "dispatch + strategy (tasks, single-flight, voting)"),
    ("gateway", "Gateway.query: request, resolve, result, model_dump"),
    ("record", "runner: make_record (incl. grading)"),
    ("json", "runner: JSON line encode"),
    ("write", "runner: file write + flush"),
    ("runner", "runner: worker, state, progress"),
    ("idle", "event loop: idle in epoll (waiting for Redis)"),
    ("loop", "event loop: scheduling, task steps, timers"),
]
OTHER_CATEGORIES: list[tuple[str, str]] = [
    ("startup_imports", "start-up: imports (interpreter, ai_gateway, fastmcp)"),
    ("startup_other", "start-up: settings, server build, dataset load, plan"),
    ("lifespan", "start-up/teardown: MCP client connect, server lifespan"),
    ("summary", "summary: summarise + print"),
]


LIFESPAN = frozenset(
    {"_enter_server_lifespan", "Client.__aenter__", "Client.__aexit__", "Client._connect", "Client._disconnect"}
)


def _frames(stack: str) -> tuple[str, list[tuple[str, str, int]]]:
    parts = stack.split(";")
    frames = []
    for part in parts[1:]:
        func, _, where = part.partition(" (")
        file, _, line = where.rstrip(")").rpartition(":")
        frames.append((func, file, int(line) if line.isdigit() else 0))
    return parts[0], frames


_LINES: dict[str, list[str]] = {}


def _source(file: str, line: int) -> str:
    if file not in _LINES:
        _LINES[file] = []
        for base in ("", *sys.path):  # py-spy shortens paths under sys.path
            path = Path(base, file)
            if path.is_file():
                _LINES[file] = path.read_text().splitlines()
                break
    lines = _LINES[file]
    return lines[line - 1] if 0 < line <= len(lines) else ""


def _in(files: list[str], *packages: str) -> bool:
    """Whether a frame comes from one of ``packages`` (py-spy shortens paths under sys.path)."""
    return any(f.startswith(p) or f"/{p}" in f for f in files for p in packages)


def classify(frames: list[tuple[str, str, int]]) -> str:
    funcs = [f for f, _, _ in frames]
    files = [f for _, f, _ in frames]
    if "Runner.run" not in funcs:
        if any(f.startswith(("_find_and_load", "_call_with_frames_removed")) for f in funcs) or not funcs:
            return "startup_imports"
        if any(f in ("print_summary", "BaseModel.model_dump_json") for f in funcs):
            return "summary"
        return "startup_other"
    if any(f.startswith("_find_and_load") for f in funcs):
        return "startup_imports"
    if any(f in ("summary_of", "summarise") for f in funcs):
        return "summary"
    if any(f in LIFESPAN for f in funcs):
        return "lifespan"
    if _in(files, "redis/"):
        return "redis"
    if any(f.startswith("_SelectorSocketTransport") for f in funcs):
        return "redis_io"
    if any(f in ("ResponseCache.key_for", "cache_key") for f in funcs):
        return "key"
    if _in(files, "ai_gateway/cache/"):
        return "cache"
    if _in(files, "fastmcp/", "mcp/"):
        return "mcp"
    if "make_record" in funcs:  # before the strategies: grading calls their normalise()
        return "record"
    if _in(files, "ai_gateway/dispatch.py", "ai_gateway/strategies/"):
        return "dispatch"
    if _in(files, "ai_gateway/gateway.py", "ai_gateway/schemas.py") or "gateway_query.<locals>.query" in funcs:
        return "gateway"
    if "execute.<locals>.worker" in funcs:
        i = funcs.index("execute.<locals>.worker")
        if any(f.startswith("JSONEncoder") for f in funcs[i:]):
            return "json"
        code = _source(frames[i][1], frames[i][2])
        if i == len(frames) - 1 and ("out.write" in code or "out.flush" in code):
            return "write"
        return "runner"
    if any(f in ("ProgressView.update", "RunState.add") for f in funcs):
        return "runner"
    if funcs[-1] in ("select", "EpollSelector.select") or funcs[-1].endswith(".poll"):
        return "idle"
    return "loop"


def breakdown(raw: Path, run: Run, name: str) -> Figures:
    """µs per row for each category, from py-spy's raw stacks (main thread; wall time incl. idle)."""
    counts: dict[str, int] = {}
    other_threads: dict[str, int] = {}
    for text in raw.read_text().splitlines():
        stack, _, n = text.rpartition(" ")
        thread, frames = _frames(stack)
        if "MainThread" not in thread and thread.count("(") == 1 and ":" in thread:
            if any(f == "import_module" for f, _, _ in frames):  # the lifespan's warm-up thread
                key = f"{thread.split(': ', 1)[1]}: importing"
                other_threads[key] = other_threads.get(key, 0) + int(n)
            continue
        category = classify(frames)
        counts[category] = counts.get(category, 0) + int(n)
    loop_samples = sum(counts.get(c, 0) for c, _ in LOOP_CATEGORIES)
    elapsed = float(run.summary["elapsed_s"])
    per_sample_us = elapsed / loop_samples / run.rows * 1e6 if loop_samples else 0.0
    total = sum(counts.values())
    failed = f", {run.misses:,} FAILED answers (not a full replay)" if run.misses else ""
    print(f"\n   profile: {name}: "
          f"{run.loop_rate:,.0f} rows/s under py-spy ({PROFILE_RATE_HZ} Hz), process wall {run.wall_s:.2f} s, "
          f"{total:,} main-thread samples{failed}")  # fmt: skip
    per_row: dict[str, float] = {}
    print(f"   {'run loop, per row':<64} {'µs/row':>8} {'share':>6}")
    for key, label in LOOP_CATEGORIES:
        us = counts.get(key, 0) * per_sample_us
        per_row[key] = us
        print(f"   {label:<64} {us:8.0f} {counts.get(key, 0) / max(loop_samples, 1):6.1%}")
    print(f"   {'total (= 1 / run-loop rate)':<64} {sum(per_row.values()):8.0f}")
    print(f"   {'outside the run loop, whole process':<64} {'ms':>8} {'share':>6}")
    ms_per_sample = run.wall_s / total * 1e3 if total else 0.0
    other: dict[str, float] = {}
    for key, label in OTHER_CATEGORIES:
        other[key] = counts.get(key, 0) * ms_per_sample
        print(f"   {label:<64} {other[key]:8.0f} {counts.get(key, 0) / max(total, 1):6.1%}")
    for thread, n in sorted(other_threads.items()):
        print(f"   another thread, {thread} (holding or waiting for the GIL): {n * ms_per_sample:8.0f} ms")
    return {
        "loop_rows_s_profiled": run.loop_rate,
        "wall_s": run.wall_s,
        "us_per_row": per_row,
        "ms_outside_loop": other,
        "other_threads_ms": {k: v * ms_per_sample for k, v in other_threads.items()},
    }
