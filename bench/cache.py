"""Cache costs: a hit (embedded and Redis) next to a raw Redis GET, through MCP, and the miss penalty.

Prints figures and ratios from one run, never a pass/fail exit code:
1. a raw ``redis.asyncio`` GET of a stored envelope (the floor);
2. a cache hit inside the gateway (``Gateway.query`` answered from the cache), embedded and Redis;
3. a hit through fastmcp's in-memory Client next to a trivial tool on the same server (``ping``, and one that
   returns a stored hit's result under query_models' output schema);
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
from typing import Any

os.environ.setdefault("FASTMCP_CHECK_FOR_UPDATES", "off")
os.environ.setdefault("FASTMCP_SHOW_SERVER_BANNER", "false")
os.environ.setdefault("FASTMCP_LOG_ENABLED", "false")

import eval_replay
import redis.asyncio as aioredis
from benchlib import Figures, rotated, start_child, summary_ms
from fastmcp import Client, FastMCP
from fastmcp.tools import Tool
from fastmcp.utilities.json_schema_type import json_schema_to_type_adapter

from ai_gateway.cache.key import answer_prefix
from ai_gateway.evaluation.console import lifespan_gateway
from ai_gateway.gateway import Gateway
from ai_gateway.http import SharedClient
from ai_gateway.registry import Registry
from ai_gateway.schemas import QueryResult
from ai_gateway.server import build_server
from ai_gateway.settings import Settings

PROMPT = "What is the capital of France? Answer in one word."
TOOLS = ("query_models", "ping")


async def interleaved(kinds: dict[str, Callable[[], Awaitable[object]]], n: int) -> dict[str, list[float]]:
    """``n`` timed calls of each kind, taken in turns (one call of each, in an order rotated every turn).

    This machine's speed drifts over seconds; timing the kinds in blocks let a drift land on one kind and
    not another (a "difference" of -0.2 ms was seen). In turns, every kind sees the same machine.
    """
    names = list(kinds)
    for _ in range(min(50, n)):
        for name in names:
            await kinds[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for turn in range(n):
        for name in rotated(names, turn):
            started = time.perf_counter()
            await kinds[name]()
            samples[name].append(time.perf_counter() - started)
    return samples


def settings(redis_url: str | None, namespace: str, near: bool = True) -> Settings:
    # Without a near cache, a namespace of its own: its writes must not send the other gateway's near cache
    # messages, whose handling would land on whichever call is being timed.
    if not near:
        return Settings(_env_file=None, redis_url=redis_url, cache_namespace=f"{namespace}-far", cache_near_entries=0)
    return Settings(_env_file=None, redis_url=redis_url, cache_namespace=namespace)


# Three caches: the embedded one; Redis with its near cache (the default: a repeated hit stays in the process);
# Redis without it ("far": what a first read from Redis costs, e.g. another process's answer or a replay).
BACKENDS = (("embedded", None, True), ("redis", "redis", True), ("redis_far", "redis", False))


async def near_ready(gateway: Gateway) -> None:
    """Time a near cache only once its tracking is up (it starts on the first lookup)."""
    near = getattr(gateway.cache.backend, "near", None)
    if near is not None:
        async with asyncio.timeout(10):
            await near.wait_live()


async def main(ns: argparse.Namespace) -> Figures:
    # Every model gives the same answer at once: "Paris" for every row, or (--answer echo) the row's own prompt,
    # as a real run's answers differ from row to row. The fake counts its requests (GET /_admin/calls).
    scenario = [] if ns.answer == "echo" else ["--scenario", "*=" + json.dumps({"text": ns.answer})]
    fake, url = await start_child("-m", "tests.fake_provider", "--port", "0", *scenario)
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
        if "compare" in fig["eval"]:
            eval_replay.report_compare(fig["eval"]["compare"])
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
            if ns.compare:
                fig["compare"] = await eval_replay.compare(setup, ns.compare)
            if ns.profile:
                py_spy = eval_replay.find_py_spy(ns.py_spy)
                fig["profile"] = await eval_replay.profile_replay(setup, py_spy, ns.profile_dir)
    finally:
        async for key in raw.scan_iter(f"{namespace}*", count=1000):
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
        for _, redis, near in BACKENDS:
            s = settings(redis and redis_url, namespace, near)
            client = SharedClient(s)
            gateway = Gateway(s, Registry.from_settings(s, environ), client)
            gateways.append((gateway, client))
            await gateway.query(prompt=PROMPT, models=["openai/gpt-4o-mini"])  # fill the entry
            await gateway.cache.flush()
            await near_ready(gateway)
        keys = [k async for k in raw.scan_iter(f"{answer_prefix(namespace)}*")]
        value = await raw.get(keys[0])
        in_process: dict[str, Callable[[], Awaitable[object]]] = {
            f"hit_{label}": lambda g=gateway: g.query(prompt=PROMPT, models=["openai/gpt-4o-mini"])
            for (label, _, _), (gateway, _) in zip(BACKENDS, gateways, strict=True)
        }
        fig |= await interleaved(in_process | {"raw_get": lambda: raw.get(keys[0])}, n)

        # Through MCP: a hit (embedded and Redis) next to a trivial tool, each server with its own client.
        # call_tool is what fastmcp users call: it also turns the structured result into typed objects.
        # call_tool_mcp returns the protocol's result as is (what any MCP host gets; the mcp SDK still
        # validates it against the tool's output schema): the two apart show what that parsing costs.
        servers = {label: build_server(settings(redis and redis_url, namespace, near), environ)
                   for label, redis, near in BACKENDS}  # fmt: skip
        for server in servers.values():

            @server.tool
            async def ping() -> str:  # async: a sync tool runs in a worker thread, a hop query_models never pays
                return "pong"

        gc.freeze()
        async with (
            Client(servers["embedded"]) as embedded,
            Client(servers["redis"]) as shared,
            Client(servers["redis_far"]) as far,
        ):
            args = {"prompt": PROMPT, "models": ["openai/gpt-4o-mini"]}
            for client in (embedded, shared, far):
                hit = await client.call_tool("query_models", args)  # the embedded one fills its own entry
            await add_same_shape_tool(servers["embedded"], hit.structured_content)

            @servers["embedded"].tool
            async def ping_get() -> str:
                """ping, after one raw GET of the stored value: the floor for any hit read from Redis via MCP."""
                await raw.get(keys[0])
                return "pong"

            for server in servers.values():
                await near_ready(lifespan_gateway(server))
            client_schema = {name: await client_schema_lookup(servers["embedded"], name) for name in TOOLS}
            fig |= await interleaved(
                {
                    "client_schema_qm": client_schema["query_models"],
                    "client_schema_ping": client_schema["ping"],
                    "mcp_trivial": lambda: embedded.call_tool("ping", {}),
                    "mcp_trivial_shaped": lambda: embedded.call_tool("same_shape", {}),
                    "mcp_trivial_get": lambda: embedded.call_tool("ping_get", {}),
                    "mcp_hit_embedded": lambda: embedded.call_tool("query_models", args),
                    "mcp_hit_redis": lambda: shared.call_tool("query_models", args),
                    "mcp_hit_redis_far": lambda: far.call_tool("query_models", args),
                    "mcp_trivial_raw": lambda: embedded.call_tool_mcp("ping", {}),
                    "mcp_hit_embedded_raw": lambda: embedded.call_tool_mcp("query_models", args),
                    "mcp_hit_redis_far_raw": lambda: far.call_tool_mcp("query_models", args),
                },
                n,
            )

        # The miss penalty: unique prompts, cache on (Redis) against bypass, interleaved. A Redis round trip
        # between provider calls costs more than one in a tight loop of GETs (Redis, woken for each, and
        # the provider share two cores): "bypass + GET" makes a raw GET of the same value in each call,
        # so the penalty can be set against a GET made under the same conditions.
        # "use far": the same with the near cache off, so its cost on a miss (Redis's message about the
        # answer just stored, read and applied by this process) shows apart.
        near_gateway, far_gateway = gateways[1][0], gateways[2][0]
        counter = iter(range(10**9))

        async def miss(mode: str) -> None:
            if mode == "bypass+get":
                await raw.get(keys[0])
            prompt = f"unique {next(counter)} {uuid.uuid4().hex}"
            gateway = far_gateway if mode == "use+far" else near_gateway
            await gateway.query(prompt=prompt, models=["openai/gpt-4o-mini"], cache=mode.partition("+")[0])

        modes = ("use", "use+far", "bypass", "bypass+get")
        fig |= await interleaved({f"miss_{mode.replace('+', '_')}": lambda m=mode: miss(m) for mode in modes}, n)
        fig["value_bytes"] = len(value or b"")
    finally:
        for gateway, client in gateways:
            await gateway.aclose()
            await client.aclose()
        async for key in raw.scan_iter(f"{namespace}*"):
            await raw.delete(key)
        await raw.aclose()
    return report(fig)


async def client_schema_lookup(server: FastMCP, tool: str) -> Callable[[], Awaitable[object]]:
    """What fastmcp's client does with a tool's output schema on every ``call_tool``, before validating the
    result: it normalises and hashes the schema to find the TypeAdapter it cached for it (fastmcp 4.1.2,
    ``_parse_call_tool_result``). The cost grows with the schema, not the result."""
    schema = (await server.get_tool(tool)).output_schema or {}
    if schema.get("x-fastmcp-wrap-result"):  # as the client does: the wrapped result's own schema
        schema = schema.get("properties", {}).get("result", schema)

    async def lookup() -> object:
        return json_schema_to_type_adapter(schema)

    return lookup


async def add_same_shape_tool(server: FastMCP, structured: dict[str, Any] | None) -> None:
    """A trivial tool that returns a stored hit's result as is, under query_models' own output schema.

    Every MCP client validates a result against the tool's output schema, and fastmcp's ``call_tool`` also
    turns it into typed objects: costs that grow with the result's shape, paid by any tool that returns it.
    Next to this tool, a hit's excess is what the gateway itself adds (arguments, the lookup, building the
    result); next to ``ping``, it also holds the client's work on a richer result.
    """
    canned = QueryResult.model_validate(structured)

    async def same_shape() -> QueryResult:
        return canned

    tool = Tool.from_function(same_shape)
    tool.output_schema = (await server.get_tool("query_models")).output_schema
    server.add_tool(tool)


def report(fig: Figures) -> Figures:
    out: Figures = {k: summary_ms(v) for k, v in fig.items() if isinstance(v, list)}
    out["value_bytes"] = fig["value_bytes"]
    med = {name: figures["median_ms"] for name, figures in out.items() if isinstance(figures, dict)}
    get = med["raw_get"]
    for name, figures in out.items():
        if isinstance(figures, dict):
            print(f"   {name:<20} median {figures['median_ms']:7.3f} ms   p99 {figures['p99_ms']:7.3f} ms")
    trivial = med["mcp_trivial"]
    penalty = med["miss_use"] - med["miss_bypass"]
    get_in_context = med["miss_bypass_get"] - med["miss_bypass"]
    rows = [
        ("a hit in-process (embedded) <= 3 x raw Redis GET", med["hit_embedded"] <= 3 * get,
         f"{med['hit_embedded']:.3f} ms vs {3 * get:.3f} ms"),
        ("a hit in-process (Redis, repeated: near cache) <= 3 x raw Redis GET", med["hit_redis"] <= 3 * get,
         f"{med['hit_redis']:.3f} ms vs {3 * get:.3f} ms"),
        ("a hit in-process (Redis, first read: no near cache) <= 3 x raw Redis GET", med["hit_redis_far"] <= 3 * get,
         f"{med['hit_redis_far']:.3f} ms vs {3 * get:.3f} ms"),
    ]  # fmt: skip
    for label, what in (("embedded", "embedded"), ("redis", "Redis, repeated"), ("redis_far", "Redis, first read")):
        extra = med[f"mcp_hit_{label}"] - trivial
        rows.append((f"a hit through MCP ({what}) <= trivial tool + 3 x raw GET", extra <= 3 * get,
                     f"+{extra:.3f} ms vs +{3 * get:.3f} ms"))  # fmt: skip
    shaped = med["mcp_trivial_shaped"]
    for label, what in (("embedded", "embedded"), ("redis", "Redis, repeated"), ("redis_far", "Redis, first read")):
        extra = med[f"mcp_hit_{label}"] - shaped
        rows.append((f"a hit through MCP ({what}) <= a trivial tool returning the same result + 3 x raw GET",
                     extra <= 3 * get, f"+{extra:.3f} ms vs +{3 * get:.3f} ms"))  # fmt: skip
    rows.append(("miss penalty (Redis on vs bypass) <= 2 x a raw GET made between provider calls",
                 penalty <= 2 * get_in_context, f"{penalty:+.3f} ms vs {2 * get_in_context:.3f} ms"))  # fmt: skip
    rows.append(("miss penalty (Redis on vs bypass) <= 2 x raw GET in a tight loop", penalty <= 2 * get,
                 f"{penalty:+.3f} ms vs {2 * get:.3f} ms"))  # fmt: skip
    raw_extra = med["mcp_hit_embedded_raw"] - med["mcp_trivial_raw"]
    out["hit_ratios"] = "\n".join([
        f"hit / raw GET: embedded {med['hit_embedded'] / get:.1f}x, redis repeated (near cache) "
        f"{med['hit_redis'] / get:.1f}x, redis first read {med['hit_redis_far'] / get:.1f}x",
        f"through MCP with call_tool_mcp (no typed parsing by fastmcp's client): hit (embedded) - trivial = "
        f"+{raw_extra:.3f} ms (Redis, first read: +{med['mcp_hit_redis_far_raw'] - med['mcp_trivial_raw']:.3f} ms); "
        f"the typed parsing adds {med['mcp_hit_embedded'] - med['mcp_hit_embedded_raw']:.3f} ms "
        f"to the hit and {trivial - med['mcp_trivial_raw']:.3f} ms to the trivial tool",
        f"a trivial tool returning the same result under the same output schema: +{shaped - trivial:.3f} ms over "
        "ping (the client's validation and typed parsing of that result, and its serialisation); of that, "
        f"fastmcp's client finding the TypeAdapter for query_models' output schema, which it re-normalises and "
        f"re-hashes on every call: {med['client_schema_qm']:.3f} ms (ping's: {med['client_schema_ping']:.3f} ms)",
        f"a trivial tool making one raw GET of the same value: +{med['mcp_trivial_get'] - trivial:.3f} ms over ping "
        f"({(med['mcp_trivial_get'] - trivial) / get:.1f}x a raw GET in a tight loop); the first read from Redis "
        f"(a hit with no near cache) costs +{med['mcp_hit_redis_far'] - med['mcp_hit_embedded']:.3f} ms over the "
        "embedded hit",
        f"a raw GET made between provider calls: {get_in_context:.3f} ms ({get_in_context / get:.1f}x one in a tight "
        f"loop); the miss penalty is {penalty / get_in_context:.1f}x it",
        f"the miss penalty without the near cache: {med['miss_use_far'] - med['miss_bypass']:+.3f} ms (the near "
        f"cache's share: {med['miss_use'] - med['miss_use_far']:+.3f} ms)",
    ])  # fmt: skip
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
    parser.add_argument(
        "--answer",
        default="Paris",
        help="what every model answers: one text for every row (default Paris), or echo: the prompt",
    )
    parser.add_argument("--compare", metavar="REV",
                        help="eval: also replay with git revision REV, alternating with this checkout")  # fmt: skip
    ns = parser.parse_args()
    if ns.compare and ns.section == "hits":
        parser.error("--compare measures the eval replay: use it with --section eval or all")
    if ns.compare:
        ns.compare = eval_replay.check_revision(ns.compare)[:12]
    figures = asyncio.run(main(ns))
    if ns.json:
        Path(ns.json).write_text(json.dumps(figures, indent=2) + "\n")
