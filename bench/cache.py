"""Cache costs: a hit (embedded and Redis) next to a raw Redis GET, through MCP, and the miss penalty.

Prints figures and ratios from one run, never a pass/fail exit code:
1. a raw ``redis.asyncio`` GET of a stored envelope (the floor);
2. a cache hit inside the gateway (``Gateway.query`` answered from the cache), embedded and Redis;
3. a hit through fastmcp's in-memory Client next to a trivial tool on the same server;
4. the miss penalty: unique prompts with the cache on (Redis) against ``cache: bypass``;
5. (section ``eval``, bench/eval_replay.py) rows/s of ``ai-gateway eval`` replaying a fully cached
   dataset with ``--cache only``: new processes, and the runner in this process; ``--profile``
   also profiles one replay (py-spy if found, else cProfile).
Needs Redis on 127.0.0.1:6379 (or ``--redis URL``); the fake provider runs as its own process.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

os.environ.setdefault("FASTMCP_CHECK_FOR_UPDATES", "off")
os.environ.setdefault("FASTMCP_SHOW_SERVER_BANNER", "false")
os.environ.setdefault("FASTMCP_LOG_ENABLED", "false")

import eval_replay
import redis.asyncio as aioredis
from benchlib import Figures, rotated, start_child, summary_ms
from fastmcp import Client

from ai_gateway.gateway import Gateway
from ai_gateway.http import SharedClient
from ai_gateway.registry import Registry
from ai_gateway.server import build_server
from ai_gateway.settings import Settings

PROMPT = "What is the capital of France? Answer in one word."


async def timed(fn: Callable[[], Awaitable[object]], n: int) -> list[float]:
    for _ in range(min(50, n)):
        await fn()
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - started)
    return samples


def settings(redis_url: str | None, namespace: str) -> Settings:
    return Settings(_env_file=None, redis_url=redis_url, cache_namespace=namespace)


async def main(ns: argparse.Namespace) -> Figures:
    # Every model answers "Paris" at once; the fake counts its requests (GET /_admin/calls).
    fake, url = await start_child("-m", "tests.fake_provider", "--port", "0", "--scenario", '*={"text": "Paris"}')
    fig: Figures = {}
    try:
        if ns.section in ("all", "hits"):
            fig |= await hits(url, ns.redis, 300 if ns.quick else 1500)
        if ns.section in ("all", "eval"):
            fig["eval"] = await eval_section(url, ns)
    finally:
        fake.terminate()
        await fake.wait()
    targets = fig.pop("_targets", [])
    if "eval" in fig:
        targets += eval_replay.report(fig["eval"])
    print("\n== summary ==" + (f" (stored value {fig['value_bytes']} bytes; a peer gateway's hit: ~51x a raw GET, "
                                 "3.3 ms)" if "value_bytes" in fig else ""))  # fmt: skip
    if "hit_ratios" in fig:
        print(fig["hit_ratios"])
    for name, met, detail in targets:
        print(f"[{'met' if met else 'NOT met':>7}] {name}: {detail}")
    fig["targets"] = {name: met for name, met, _ in targets}
    return fig


async def eval_section(url: str, ns: argparse.Namespace) -> Figures:
    """Fill Redis and replay through ``ai-gateway eval`` (bench/eval_replay.py); keys deleted after."""
    namespace = f"bench-eval-{uuid.uuid4().hex[:8]}"
    raw = aioredis.Redis.from_url(ns.redis)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
            setup = eval_replay.Setup(
                url=url,
                redis_url=ns.redis,
                namespace=namespace,
                tmp=Path(tmp),
                rows=ns.rows or (500 if ns.quick else 2000),
                rounds=1 if ns.quick else ns.rounds,
                high=ns.high_concurrency,
                op_timeout_s=ns.cache_op_timeout,
            )
            fig = await eval_replay.replay(setup)
            if ns.profile:
                py_spy = eval_replay.find_py_spy(ns.py_spy)
                fig["profile"] = await eval_replay.profile_replay(setup, py_spy, ns.profile_dir)
    finally:
        async for key in raw.scan_iter(f"{namespace}:*", count=1000):
            await raw.delete(key)
        await raw.aclose()
    return fig


async def hits(url: str, redis_url: str, n: int) -> Figures:
    environ = {"OPENAI_API_KEY": "sk-bench", "OPENAI_BASE_URL": f"{url}/v1"}
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    raw = aioredis.Redis.from_url(redis_url)
    fig: Figures = {}
    gateways: list[tuple[Gateway, SharedClient]] = []
    try:
        for label, redis in (("embedded", None), ("redis", redis_url)):
            s = settings(redis, namespace)
            client = SharedClient(s)
            gateway = Gateway(s, Registry.from_settings(s, environ), client)
            gateways.append((gateway, client))
            await gateway.query(prompt=PROMPT, models=["openai/gpt-4o-mini"])  # fill the entry
            await gateway.cache.flush()
            ask = lambda g=gateway: g.query(prompt=PROMPT, models=["openai/gpt-4o-mini"])  # noqa: E731
            fig[f"hit_{label}"] = await timed(ask, n)
        keys = [k async for k in raw.scan_iter(f"{namespace}:*")]
        value = await raw.get(keys[0])
        fig["raw_get"] = await timed(lambda: raw.get(keys[0]), n)

        # Through MCP: a hit next to a trivial tool on the same server and client.
        mcp = build_server(settings(None, namespace), environ)

        @mcp.tool
        def ping() -> str:
            return "pong"

        gc.freeze()
        async with Client(mcp) as mcp_client:
            args = {"prompt": PROMPT, "models": ["openai/gpt-4o-mini"]}
            await mcp_client.call_tool("query_models", args)
            kinds = {"mcp_hit": ("query_models", args), "mcp_trivial": ("ping", {})}
            for round_no in range(3):
                for kind in rotated(list(kinds), round_no):
                    name, arguments = kinds[kind]
                    fig.setdefault(kind, []).extend(
                        await timed(lambda n_=name, a=arguments: mcp_client.call_tool(n_, a), n // 3)
                    )

        # The miss penalty: unique prompts, cache on (Redis) against bypass, interleaved.
        gateway = gateways[1][0]
        counter = iter(range(10**9))
        for round_no in range(3):
            for mode in rotated(["use", "bypass"], round_no):
                fig.setdefault(f"miss_{mode}", []).extend(
                    await timed(
                        lambda m=mode: gateway.query(
                            prompt=f"unique {next(counter)} {uuid.uuid4().hex}", models=["openai/gpt-4o-mini"], cache=m
                        ),
                        n // 3,
                    )
                )
        fig["value_bytes"] = len(value or b"")
    finally:
        for gateway, client in gateways:
            await gateway.aclose()
            await client.aclose()
        async for key in raw.scan_iter(f"{namespace}:*"):
            await raw.delete(key)
        await raw.aclose()
    return report(fig)


def report(fig: Figures) -> Figures:
    out: Figures = {k: summary_ms(v) for k, v in fig.items() if isinstance(v, list)}
    out["value_bytes"] = fig["value_bytes"]
    get = out["raw_get"]["median_ms"]
    for name, figures in out.items():
        if isinstance(figures, dict):
            print(f"   {name:<14} median {figures['median_ms']:7.3f} ms   p99 {figures['p99_ms']:7.3f} ms")
    penalty = out["miss_use"]["median_ms"] - out["miss_bypass"]["median_ms"]
    mcp_extra = out["mcp_hit"]["median_ms"] - out["mcp_trivial"]["median_ms"]
    rows = [
        ("a hit in-process (embedded) <= 3 x raw Redis GET", out["hit_embedded"]["median_ms"] <= 3 * get,
         f"{out['hit_embedded']['median_ms']:.3f} ms vs {3 * get:.3f} ms"),
        ("a hit in-process (Redis) <= 3 x raw Redis GET", out["hit_redis"]["median_ms"] <= 3 * get,
         f"{out['hit_redis']['median_ms']:.3f} ms vs {3 * get:.3f} ms"),
        ("a hit through MCP <= trivial tool + 3 x raw GET", mcp_extra <= 3 * get,
         f"+{mcp_extra:.3f} ms vs +{3 * get:.3f} ms"),
        ("miss penalty (Redis on vs bypass) <= 2 x raw GET", penalty <= 2 * get,
         f"{penalty:+.3f} ms vs {2 * get:.3f} ms"),
    ]  # fmt: skip
    out["hit_ratios"] = (f"hit / raw GET: embedded {out['hit_embedded']['median_ms'] / get:.1f}x, "
                         f"redis {out['hit_redis']['median_ms'] / get:.1f}x")  # fmt: skip
    out["_targets"] = rows
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15", help="Redis URL (default: local DB 15)")
    parser.add_argument("--quick", action="store_true", help="fewer iterations, 500 eval rows, one round")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--section", choices=("all", "hits", "eval"), default="all",
                        help="hits: figures 1-4; eval: the eval replay throughput (default: both)")  # fmt: skip
    parser.add_argument("--rows", type=int, help="eval dataset rows (default 2000, 500 with --quick)")
    parser.add_argument("--rounds", type=int, default=3, help="eval replay rounds (default 3, 1 with --quick)")
    parser.add_argument("--high-concurrency", type=int, default=16, help="the eval's higher --concurrency (16)")
    parser.add_argument("--cache-op-timeout", type=float, metavar="S",
                        help="eval: set AI_GATEWAY_CACHE_OP_TIMEOUT_S (default: the gateway's own)")  # fmt: skip
    parser.add_argument("--profile", action="store_true", help="eval: also profile the consensus replay over Redis")
    parser.add_argument("--profile-dir", type=Path, metavar="DIR", help="keep the profiles there (py-spy raw stacks)")
    parser.add_argument("--py-spy", metavar="PATH", help="py-spy executable (default: next to python, or on PATH)")
    ns = parser.parse_args()
    figures = asyncio.run(main(ns))
    if ns.json:
        Path(ns.json).write_text(json.dumps(figures, indent=2) + "\n")
