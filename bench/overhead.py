"""What the gateway costs on top of a bare HTTP call, its stdio start-up and its peak memory.

Run ``python bench/overhead.py`` (``--quick`` for a smoke run, ``--json PATH`` to save the
figures). The fake provider runs as its own process with no added latency; the gateway is
built in this process and reached through fastmcp's in-memory client. Prints figures and
ratios only: the exit code never says pass/fail. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from importlib.metadata import version
from pathlib import Path

# Before fastmcp is imported: no update check (no network), no banner, no rich logging.
FASTMCP_ENV = {
    "FASTMCP_CHECK_FOR_UPDATES": "off",
    "FASTMCP_SHOW_SERVER_BANNER": "false",
    "FASTMCP_LOG_ENABLED": "false",
}
os.environ.update({k: os.environ.get(k, v) for k, v in FASTMCP_ENV.items()})

import aiohttp  # noqa: E402
import httpx  # noqa: E402
from benchlib import Figures, pct, rotated, start_child, summary_ms  # noqa: E402
from fastmcp import Client, FastMCP  # noqa: E402
from fastmcp.client.transports import StdioTransport  # noqa: E402

from ai_gateway.server import build_server  # noqa: E402
from ai_gateway.settings import Settings  # noqa: E402

HTTP_KINDS = ("query_models", "echo_tool")

MODEL = "gpt-4o-mini"
PROMPT = "What is 2+2? Answer with one number."
RACE = {"race-20": 20, "race-80": 80, "race-150": 150}  # fake scenarios: model name -> delay_ms
INFLIGHT = 32
Call = Callable[[], Awaitable[object]]


async def start_fake() -> tuple[asyncio.subprocess.Process, str]:
    args = ["-m", "tests.fake_provider", "--port", "0", "--scenario", '*={"text": "4"}']
    args += [a for model, ms in RACE.items() for a in ("--scenario", f'{model}={{"delay_ms": {ms}, "text": "4"}}')]
    return await start_child(*args)


def make_calls(client: Client, session: aiohttp.ClientSession, bare: httpx.AsyncClient, url: str) -> dict[str, Call]:
    """The four kinds: the gateway tool, the MCP floor, and the two bare-HTTP floors."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]}
    headers = {"authorization": "Bearer sk-bench", "content-type": "application/json"}
    endpoint = f"{url}/v1/chat/completions"
    # cache bypass: every call asks the provider, as the bare calls do (a repeated prompt would be a cache hit;
    # bench/cache.py measures those).
    query = {"prompt": PROMPT, "models": [f"openai/{MODEL}"], "cache": "bypass"}

    async def query_models() -> object:
        result = await client.call_tool("query_models", query)
        assert result.structured_content and result.structured_content["answer"] == "4", result
        return result

    async def ping() -> object:
        return await client.call_tool("ping", {})

    async def bare_aiohttp() -> object:
        async with session.post(endpoint, json=body, headers=headers) as resp:
            resp.raise_for_status()
            return await resp.json()

    async def bare_httpx() -> object:
        resp = await bare.post(endpoint, json=body, headers=headers)
        resp.raise_for_status()
        return resp.json()

    return {"query_models": query_models, "trivial_tool": ping, "bare_aiohttp": bare_aiohttp, "bare_httpx": bare_httpx}


async def timed(call: Call, samples: list[float]) -> None:
    t0 = time.perf_counter()
    await call()
    samples.append(time.perf_counter() - t0)


async def sequential_latency(calls: dict[str, Call], per_kind: int, rounds: int = 3) -> Figures:
    for call in calls.values():  # warm-up: imports, pools, caches
        for _ in range(30):
            await call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for r in range(rounds):
        for name in rotated(list(calls), r):
            for _ in range(per_kind // rounds):
                await timed(calls[name], samples[name])
    return {name: summary_ms(s) for name, s in samples.items()}


async def in_flight(call: Call, total: int, samples: list[float]) -> float:
    """Run ``total`` calls with INFLIGHT workers; returns the wall time."""
    left = total

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await timed(call, samples)

    t0 = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for _ in range(INFLIGHT):
            tg.create_task(worker())
    return time.perf_counter() - t0


async def throughput(calls: dict[str, Call], per_kind: int, rounds: int = 3) -> Figures:
    for call in calls.values():  # open INFLIGHT connections in every pool first
        await in_flight(call, 2 * INFLIGHT, [])
    samples: dict[str, list[float]] = {name: [] for name in calls}
    wall = dict.fromkeys(calls, 0.0)
    for r in range(rounds):
        for name in rotated(list(calls), r):
            wall[name] += await in_flight(calls[name], per_kind // rounds, samples[name])
    return {
        name: {"rps": len(s) / wall[name], "p99_ms": pct(s, 0.99) * 1e3, "median_ms": statistics.median(s) * 1e3}
        for name, s in samples.items()
    }


async def fastest_race(client: Client, n: int) -> Figures:
    race = {"prompt": PROMPT, "models": [f"openai/{m}" for m in RACE], "strategy": "fastest", "cache": "bypass"}
    alone = {"prompt": PROMPT, "models": ["openai/race-20"], "cache": "bypass"}
    samples: dict[str, list[float]] = {"fastest_3": [], "race_20_alone": []}
    for _ in range(3):
        await client.call_tool("query_models", race)
        await client.call_tool("query_models", alone)
    for i in range(n):
        pair = [("fastest_3", race), ("race_20_alone", alone)]
        for name, args in pair if i % 2 else pair[::-1]:
            t0 = time.perf_counter()
            result = await client.call_tool("query_models", args)
            samples[name].append(time.perf_counter() - t0)
            assert result.structured_content["model"] == "openai/race-20", result.structured_content
    figures = {name: summary_ms(s) for name, s in samples.items()}
    figures["excess_median_ms"] = figures["fastest_3"]["median_ms"] - figures["race_20_alone"]["median_ms"]
    figures["excess_p99_ms"] = figures["fastest_3"]["p99_ms"] - figures["race_20_alone"]["p99_ms"]
    return figures


def server_env(url: str, home: str) -> dict[str, str]:
    """A clean environment: no inherited keys or AI_GATEWAY_* settings, only the fake's."""
    env = {k: v for k in ("PATH", "LANG", "LC_ALL", "TMPDIR") if (v := os.environ.get(k))}
    return env | FASTMCP_ENV | {"HOME": home, "OPENAI_BASE_URL": f"{url}/v1", "OPENAI_API_KEY": "sk-bench"}


def stdio_client(env: dict[str, str], cwd: str) -> Client:
    args = ["-m", "ai_gateway.cli", "serve"]
    return Client(StdioTransport(sys.executable, args, env=env, cwd=cwd, keep_alive=False), timeout=30)


def server_pid() -> int:
    """The pid of our child running ``ai_gateway.cli serve`` (the SDK does not expose it)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() and b"ai_gateway.cli" in cmdline:
            return int(stat.parent.name)
    raise RuntimeError("stdio server process not found")


def mem_mib(pid: int) -> dict[str, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmHWM", "VmRSS")}


async def wall_of(*argv: str, env: dict[str, str], cwd: str) -> float:
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(*argv, env=env, cwd=cwd)
    if await proc.wait() != 0:
        raise RuntimeError(f"{argv} failed")
    return time.perf_counter() - t0


async def startup(url: str, runs: int) -> Figures:
    with tempfile.TemporaryDirectory() as cwd:  # no stray .env in the server's working directory
        env = server_env(url, cwd)
        times, tools = [], 0
        for _ in range(runs):
            client = stdio_client(env, cwd)
            t0 = time.perf_counter()
            async with client:
                tools = len(await client.list_tools())
                times.append(time.perf_counter() - t0)
        bare = [await wall_of(sys.executable, "-c", "pass", env=env, cwd=cwd) for _ in range(runs)]
        imp = [await wall_of(sys.executable, "-c", "import ai_gateway.server", env=env, cwd=cwd) for _ in range(runs)]
    figures = {"spawn_to_tools_list_s": times, "python_startup_s": bare, "import_ai_gateway_server_s": imp}
    return {k: statistics.median(v) for k, v in figures.items()} | {"max_s": max(times), "runs": runs, "tools": tools}


async def stdio_memory(url: str, total: int) -> Figures:
    query = {"prompt": PROMPT, "models": [f"openai/{MODEL}"], "cache": "bypass"}  # every call a provider call
    with tempfile.TemporaryDirectory() as cwd:
        client = stdio_client(server_env(url, cwd), cwd)
        async with client:
            await client.list_tools()
            pid = server_pid()
            idle = mem_mib(pid)
            samples: list[float] = []
            wall = await in_flight(lambda: client.call_tool("query_models", query), total, samples)
            loaded = mem_mib(pid)
    return {
        "idle_rss_mib": idle["VmRSS"],
        "peak_hwm_mib": loaded["VmHWM"],
        "rss_after_mib": loaded["VmRSS"],
        "calls": total,
        "stdio_rps": total / wall,
        "stdio_p99_ms": pct(samples, 0.99) * 1e3,
    }


def bench_server(url: str) -> FastMCP:
    """The gateway on the fake, plus the trivial tools every MCP-relative figure is measured against."""
    mcp = build_server(Settings(_env_file=None), {"OPENAI_BASE_URL": f"{url}/v1", "OPENAI_API_KEY": "sk-bench"})

    # async, like query_models: fastmcp runs a sync tool in a worker thread, and that hop (~0.24 ms
    # here) would raise the MCP floor every figure is measured against.
    @mcp.tool
    async def ping() -> str:
        return "pong"

    @mcp.tool
    async def echo(text: str) -> str:
        """Over HTTP: a call with an argument takes the SDK's Mcp-Param header check, as query_models' does."""
        return text

    return mcp


async def serve_http_child(url: str) -> None:
    """``--serve-http URL``: the bench server over streamable HTTP, as ``ai-gateway serve --transport http`` runs
    it; prints ``READY <mcp url>`` once bound."""
    from ai_gateway.drain import serve_http

    mcp = bench_server(url)
    gc.freeze()

    def listening(port: int) -> None:
        print(f"READY http://127.0.0.1:{port}/mcp", flush=True)

    await serve_http(
        mcp, 1.0, listening, transport="http", host="127.0.0.1", port=0, show_banner=False,
        uvicorn_config={"log_config": None, "access_log": False},
    )  # fmt: skip


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def over_http(url: str, per_kind: int, rounds: int = 3) -> Figures:
    """query_models and a trivial tool with one argument, through the official mcp SDK client over streamable HTTP
    to a server process of their own; with that process's CPU time per call."""
    import httpx2
    from mcp import Client as SdkClient
    from mcp.client.streamable_http import streamable_http_client

    server, endpoint = await start_child("bench/overhead.py", "--serve-http", url)
    query = {"prompt": PROMPT, "models": [f"openai/{MODEL}"], "cache": "bypass"}
    arguments = {"query_models": query, "echo_tool": {"text": "4"}}
    try:
        async with (
            httpx2.AsyncClient(timeout=30) as http,
            SdkClient(streamable_http_client(endpoint, http_client=http)) as client,
        ):

            async def call(kind: str) -> None:
                result = await client.call_tool("query_models" if kind == "query_models" else "echo", arguments[kind])
                assert not result.is_error, result.content

            for kind in HTTP_KINDS:  # warm-up: the server's warm-up thread, pools, the client's schema cache
                for _ in range(30):
                    await call(kind)
            samples: dict[str, list[float]] = {kind: [] for kind in HTTP_KINDS}
            cpu = dict.fromkeys(HTTP_KINDS, 0.0)
            for r in range(rounds):
                for kind in rotated(list(HTTP_KINDS), r):
                    before = cpu_s(server.pid)
                    for _ in range(per_kind // rounds):
                        t0 = time.perf_counter()
                        await call(kind)
                        samples[kind].append(time.perf_counter() - t0)
                    cpu[kind] += cpu_s(server.pid) - before
    finally:
        server.terminate()
        await server.wait()
    return {
        kind: summary_ms(samples[kind]) | {"server_cpu_ms": cpu[kind] / len(samples[kind]) * 1e3} for kind in HTTP_KINDS
    }


def machine() -> Figures:
    pkgs = ("fastmcp", "mcp", "httpx", "httpx-aiohttp", "aiohttp", "pydantic")
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {p: version(p) for p in pkgs},
    }


def report(fig: Figures) -> None:
    m, lat, thr, race, st, mem = (fig[k] for k in ("machine", "latency", "throughput", "fastest", "startup", "memory"))
    print(
        f"machine: {m['cpu_count']} cpus ({m['cpus_usable']} usable), python {m['python']}, "
        + ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    )
    print(f"\n1. sequential latency, one call in flight ({lat['query_models']['n']} calls per kind, 3 rounds)")
    for name, s in lat.items():
        print(f"   {name:<14} median {s['median_ms']:7.3f} ms   p99 {s['p99_ms']:7.3f} ms")
    print(f"\n2. throughput at {INFLIGHT} in flight")
    for name, s in thr.items():
        print(f"   {name:<14} {s['rps']:8.0f} req/s   median {s['median_ms']:7.2f} ms   p99 {s['p99_ms']:7.2f} ms")
    print("\n3. fastest over race-20/80/150 (delays in ms) vs race-20 alone, through the gateway")
    for name in ("fastest_3", "race_20_alone"):
        print(f"   {name:<14} median {race[name]['median_ms']:7.2f} ms   p99 {race[name]['p99_ms']:7.2f} ms")
    print(f"   excess         median {race['excess_median_ms']:+7.2f} ms   p99 {race['excess_p99_ms']:+7.2f} ms")
    print(
        f"\n4. stdio start-up, spawn -> first tools/list result ({st['tools']} tools): median "
        f"{st['spawn_to_tools_list_s']:.3f} s, max {st['max_s']:.3f} s over {st['runs']} runs"
    )
    print(
        f"   for context: python -c pass {st['python_startup_s']:.3f} s; "
        f"python -c 'import ai_gateway.server' {st['import_ai_gateway_server_s']:.3f} s"
    )
    print(
        f"\n5. stdio server memory: idle RSS {mem['idle_rss_mib']:.1f} MiB; after {mem['calls']} query_models "
        f"({INFLIGHT} in flight, {mem['stdio_rps']:.0f} req/s, p99 {mem['stdio_p99_ms']:.1f} ms) "
        f"VmHWM {mem['peak_hwm_mib']:.1f} MiB, VmRSS {mem['rss_after_mib']:.1f} MiB"
    )

    print(
        f"\n6. over streamable HTTP: the mcp SDK client to a server process, one call in flight "
        f"({fig['http']['query_models']['n']} calls per kind, 3 rounds); server CPU per call from /proc"
    )
    for name, s in fig["http"].items():
        print(
            f"   {name:<14} median {s['median_ms']:7.3f} ms   p99 {s['p99_ms']:7.3f} ms   "
            f"server CPU {s['server_cpu_ms']:6.3f} ms/call"
        )

    qm, tool, aio, hx = (lat[k] for k in ("query_models", "trivial_tool", "bare_aiohttp", "bare_httpx"))
    thr_qm, thr_aio = thr["query_models"]["rps"], thr["bare_aiohttp"]["rps"]
    med_limit, p99_limit = tool["median_ms"] + 2 * aio["median_ms"], tool["p99_ms"] + 2 * aio["p99_ms"]
    race_limit = max(1.0, 2 * aio["median_ms"])
    rows = [  # (target, met, what was measured against what limit)
        (
            "query_models median <= trivial tool + 2 x aiohttp",
            qm["median_ms"] <= med_limit,
            f"{qm['median_ms']:.3f} ms vs {med_limit:.3f} ms",
        ),
        (
            "query_models p99 <= trivial tool p99 + 2 x aiohttp p99",
            qm["p99_ms"] <= p99_limit,
            f"{qm['p99_ms']:.3f} ms vs {p99_limit:.3f} ms",
        ),
        (
            f"throughput at {INFLIGHT} in flight >= 0.5 x bare aiohttp",
            thr_qm >= 0.5 * thr_aio,
            f"{thr_qm:.0f} vs {0.5 * thr_aio:.0f} req/s",
        ),
        (
            "fastest median within max(1 ms, 2 x aiohttp) of the 20 ms model",
            race["excess_median_ms"] <= race_limit,
            f"{race['excess_median_ms']:+.2f} ms vs {race_limit:.2f} ms",
        ),
        ("stdio start-up <= 1 s", st["spawn_to_tools_list_s"] <= 1.0, f"{st['spawn_to_tools_list_s']:.3f} s"),
        ("peak memory (VmHWM) <= 115 MiB", mem["peak_hwm_mib"] <= 115, f"{mem['peak_hwm_mib']:.1f} MiB"),
    ]
    fig["targets"] = {name: met for name, met, _ in rows}
    own = qm["median_ms"] - tool["median_ms"]
    print("\n== summary ==")
    print(
        f"query_models / bare aiohttp: median {qm['median_ms'] / aio['median_ms']:.1f}x, "
        f"p99 {qm['p99_ms'] / aio['p99_ms']:.1f}x (a peer Python gateway: ~30x); "
        f"/ bare httpx: median {qm['median_ms'] / hx['median_ms']:.1f}x"
    )
    print(
        f"gateway's own cost (query_models - trivial tool): median {own:.3f} ms = {own / aio['median_ms']:.1f}x aiohttp"
    )
    print(
        f"throughput / bare aiohttp: query_models {thr_qm / thr_aio:.2f}x, trivial tool (MCP floor) "
        f"{thr['trivial_tool']['rps'] / thr_aio:.2f}x; query_models / bare httpx "
        f"{thr_qm / thr['bare_httpx']['rps']:.2f}x"
    )
    http_qm, http_echo = fig["http"]["query_models"], fig["http"]["echo_tool"]
    print(
        f"over HTTP, query_models - echo tool: median {http_qm['median_ms'] - http_echo['median_ms']:+.3f} ms, "
        f"server CPU {http_qm['server_cpu_ms'] - http_echo['server_cpu_ms']:+.3f} ms/call (no target set)"
    )
    for name, met, detail in rows:
        print(f"[{'met' if met else 'NOT met':>7}] {name}: {detail}")


async def main(quick: bool) -> Figures:
    seq_n, thr_n, race_n, runs, mem_n, http_n = (120, 240, 10, 2, 64, 120) if quick else (1002, 1500, 50, 5, 500, 600)
    fake, url = await start_fake()
    fig: Figures = {"machine": machine(), "quick": quick}
    try:
        mcp = bench_server(url)
        gc.freeze()  # as `ai-gateway serve` does once it is built (see ai_gateway/cli.py)
        async with AsyncExitStack() as stack:
            client = await stack.enter_async_context(Client(mcp))
            session = await stack.enter_async_context(aiohttp.ClientSession())
            bare = await stack.enter_async_context(httpx.AsyncClient())
            calls = make_calls(client, session, bare, url)
            fig["latency"] = await sequential_latency(calls, seq_n)
            fig["throughput"] = await throughput(calls, thr_n)
            fig["fastest"] = await fastest_race(client, race_n)
        fig["http"] = await over_http(url, http_n)
        fig["startup"] = await startup(url, runs)
        fig["memory"] = await stdio_memory(url, mem_n)
    finally:
        fake.terminate()
        await fake.wait()
    report(fig)
    return fig


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (CI smoke run, < 20 s)")
    parser.add_argument("--json", metavar="PATH", help="also write every figure as JSON to PATH")
    parser.add_argument("--serve-http", metavar="FAKE_URL", help=argparse.SUPPRESS)  # the section 6 child
    ns = parser.parse_args()
    if ns.serve_http:
        asyncio.run(serve_http_child(ns.serve_http))
        sys.exit(0)
    figures = asyncio.run(main(ns.quick))
    if ns.json:
        Path(ns.json).write_text(json.dumps(figures, indent=2) + "\n")
