"""Tail latency and the cost of failure through the gateway: hedging, fail-over, open circuits.

Run ``python bench/tail_latency.py`` (``--quick`` for a smoke run, ``--json PATH`` to save the
figures). Two upstreams run as their own processes: a heavy-tailed OpenAI-compatible server
defined here (``--serve-tail PORT``) and ``tests.fake_provider`` for the failing providers.
The gateway is built in this process and called through ``Gateway.query``. Prints figures and
ratios only: the exit code never says pass/fail. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import platform
import random
import signal
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from benchlib import Figures, rotated, start_child, summary_ms

from ai_gateway.gateway import Gateway
from ai_gateway.http import SharedClient
from ai_gateway.registry import Registry
from ai_gateway.schemas import QueryResult
from ai_gateway.settings import CustomProvider, Settings

SCRIPT = Path(__file__).resolve()
PROMPT = "What is 2+2? Answer with one number."
# The heavy tail: lognormal (median 40 ms, sigma 0.5), and with probability 3 % a 2 s stall.
MEDIAN_S, SIGMA, STALL_P, STALL_S, SEED = 0.040, 0.5, 0.03, 2.0, 7
TAIL_A, TAIL_B = "tail/tail-a", "tail/tail-b"
# The distribution's own p95 (stalls are above it): the fixed hedge delay.
P95_S = MEDIAN_S * math.exp(SIGMA * statistics.NormalDist().inv_cdf(0.95 / (1 - STALL_P)))
DEAD, LIMITED, HEALTHY = "dead/dead-500", "limited/limited-429", "live/healthy"
FAKE_SCENARIOS = {
    "dead-500": {"error_kind": "server_error"},
    "limited-429": {"error_kind": "rate_limited", "retry_after": "30"},
    "healthy": {"text": "4"},
}
WORKERS = 8  # calls in flight in the heavy-tail and steady-traffic phases
RESET_S = 2.0  # breaker_reset_s of the open-circuit phase


# ---------------------------------------------------------------------------- the heavy-tailed upstream
def tail_delay(rng: random.Random) -> float:
    return STALL_S if rng.random() < STALL_P else rng.lognormvariate(math.log(MEDIAN_S), SIGMA)


async def serve_tail(port: int) -> None:
    """An OpenAI-compatible server; each model has its own seeded draw of delays."""
    rngs: dict[str, random.Random] = {}
    counts: dict[str, int] = {}

    async def chat(request: web.Request) -> web.Response:
        model = (await request.json())["model"]
        counts[model] = counts.get(model, 0) + 1
        await asyncio.sleep(tail_delay(rngs.setdefault(model, random.Random(f"{SEED}:{model}"))))
        message = {"role": "assistant", "content": "4"}
        return web.json_response({
            "id": "chatcmpl-tail", "object": "chat.completion", "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 8, "completion_tokens": 1, "total_tokens": 9},
        })  # fmt: skip

    async def calls(request: web.Request) -> web.Response:
        return web.json_response({"total": sum(counts.values()), "counts": counts})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/_admin/calls", calls)
    # handler_cancellation: a cancelled hedge stops its handler, as a real server's would.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    print(f"READY http://127.0.0.1:{runner.addresses[0][1]}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


# ---------------------------------------------------------------------------- helpers
def make_gateway(url: str, providers: tuple[str, ...], **overrides: Any) -> tuple[Gateway, SharedClient]:
    """A gateway whose providers are keyless OpenAI-compatible hosts at ``url`` (one breaker each)."""
    custom = {name: CustomProvider(base_url=f"{url}/v1") for name in providers}
    settings = Settings(_env_file=None, custom_providers=custom, **overrides)
    client = SharedClient(settings)
    return Gateway(settings, Registry.from_settings(settings, {}), client), client


async def upstream_counts(session: aiohttp.ClientSession, url: str) -> dict[str, int]:
    async with session.get(f"{url}/_admin/calls") as resp:
        return dict((await resp.json())["counts"])


async def query(gw: Gateway, samples: list[float] | None = None, **kwargs: Any) -> QueryResult:
    # Every call asks the provider: the same prompt again would be a cache hit (the default since the response
    # cache), and the figures would time the cache, not hedging, fail-over and circuits.
    kwargs.setdefault("cache", "bypass")
    t0 = time.perf_counter()
    result = await gw.query(prompt=PROMPT, **kwargs)
    if samples is not None:
        samples.append(time.perf_counter() - t0)
    assert result.answer == "4", result
    return result


async def in_flight(call: Callable[[], Awaitable[object]], total: int, workers: int = WORKERS) -> None:
    left = total

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await call()

    async with asyncio.TaskGroup() as tg:
        for _ in range(workers):
            tg.create_task(worker())


# ---------------------------------------------------------------------------- the three phases
async def tail_phase(url: str, session: aiohttp.ClientSession, n: int, rounds: int = 3) -> Figures:
    gw, client = make_gateway(url, ("tail",))
    pair = [TAIL_A, TAIL_B]
    arms: dict[str, Figures] = {
        "single tail-a": {"models": [TAIL_A]},
        "first_available": {"models": pair, "hedge_after_s": "off"},
        "hedged fixed": {"models": pair, "hedge_after_s": round(P95_S, 3)},
        "hedged auto": {"models": pair, "hedge_after_s": "auto"},
        "fastest": {"models": pair, "strategy": "fastest"},
    }
    samples: dict[str, list[float]] = {name: [] for name in arms}
    requests = dict.fromkeys(arms, 0)
    try:
        for model in pair:  # warm-up: pools, and enough latencies for "auto" (hedge_min_samples)
            await in_flight(lambda m=model: query(gw, models=[m]), 3 * gw.settings.hedge_min_samples)
        auto_before = gw.resilience.health.latency_percentile(TAIL_A, 95, gw.settings.hedge_min_samples)
        for r in range(rounds):
            for name in rotated(list(arms), r):
                before = sum((await upstream_counts(session, url)).values())
                await in_flight(lambda a=arms[name], s=samples[name]: query(gw, s, **a), n // rounds)
                await asyncio.sleep(0.05)  # a cancelled hedge's request may still be in the socket
                requests[name] += sum((await upstream_counts(session, url)).values()) - before
        auto_after = gw.resilience.health.latency_percentile(TAIL_A, 95, gw.settings.hedge_min_samples)
    finally:
        await client.aclose()
    figures: Figures = {
        name: summary_ms(s) | {"extra_requests_pct": 100 * (requests[name] / len(s) - 1)} for name, s in samples.items()
    }
    figures["hedge_fixed_ms"] = round(P95_S, 3) * 1e3
    figures["hedge_auto_ms"] = [None if v is None else v * 1e3 for v in (auto_before, auto_after)]
    return figures


async def failover_phase(url: str, session: aiohttp.ClientSession, n: int, rounds: int = 3) -> Figures:
    """Time to an answer behind a 500 and behind a 429 with Retry-After: 30, breakers kept closed."""
    gw, client = make_gateway(url, ("dead", "limited", "live"), breaker_fail_max=10**9)
    endpoint = f"{url}/v1/chat/completions"
    last: dict[str, QueryResult] = {}

    def via_gateway(name: str, models: list[str]) -> Callable[[list[float]], Awaitable[None]]:
        async def call(samples: list[float]) -> None:
            last[name] = await query(gw, samples, models=models)

        return call

    def bare(model: str) -> Callable[[list[float]], Awaitable[None]]:
        body = {"model": model, "messages": [{"role": "user", "content": PROMPT}]}

        async def call(samples: list[float]) -> None:
            t0 = time.perf_counter()
            async with session.post(endpoint, json=body) as resp:
                await resp.read()
            samples.append(time.perf_counter() - t0)

        return call

    kinds = {
        "healthy alone": via_gateway("healthy", [HEALTHY]),
        "500 then healthy": via_gateway("500", [DEAD, HEALTHY]),
        "429 then healthy": via_gateway("429", [LIMITED, HEALTHY]),
        "bare 500 round trip": bare("dead-500"),
        "bare 429 round trip": bare("limited-429"),
    }
    samples: dict[str, list[float]] = {name: [] for name in kinds}
    try:
        for call in kinds.values():
            for _ in range(30):
                await call([])
        for r in range(rounds):
            for name in rotated(list(kinds), r):
                for _ in range(n // rounds):
                    await kinds[name](samples[name])
    finally:
        await client.aclose()
    figures: Figures = {name: summary_ms(s) for name, s in samples.items()}
    for name in ("500", "429"):
        error = last[name].results[0].error
        assert error is not None and last[name].results[0].attempts == 1, last[name]
        figures[f"{name} error"] = error.model_dump(exclude={"message"}, exclude_none=True)
    return figures


async def breaker_phase(url: str, session: aiohttp.ClientSession, window_s: float, n: int) -> Figures:
    """The dead provider's circuit opens; then steady traffic, probes per open interval, and the cost."""
    gw, client = make_gateway(url, ("dead", "live"), breaker_reset_s=RESET_S)
    breaker = gw.resilience.breakers.get("dead")
    pair, alone = {"models": [DEAD, HEALTHY]}, {"models": [HEALTHY]}
    samples: dict[str, list[float]] = {"healthy alone": [], "open circuit then healthy": []}
    try:
        for _ in range(30):
            await query(gw, **alone)
        trip_calls = 0
        while breaker.state != "open":
            await query(gw, **pair)
            trip_calls += 1
        before = (await upstream_counts(session, url)).get("dead-500", 0)
        stop_at, steady = time.monotonic() + window_s, 0

        async def steady_worker() -> None:
            nonlocal steady
            while time.monotonic() < stop_at:
                await query(gw, **pair)
                steady += 1

        async with asyncio.TaskGroup() as tg:
            for _ in range(WORKERS):
                tg.create_task(steady_worker())
        probes = (await upstream_counts(session, url)).get("dead-500", 0) - before
        for i in range(n):  # the cost of an open circuit, sequential, alternating
            order = list(samples) if i % 2 else list(samples)[::-1]
            for name in order:
                await query(gw, samples[name], **(alone if name == "healthy alone" else pair))
    finally:
        await client.aclose()
    figures: Figures = {name: summary_ms(s) for name, s in samples.items()}
    return figures | {"trip_calls": trip_calls, "window_s": window_s, "steady_calls": steady, "probes": probes}


# ---------------------------------------------------------------------------- report
def report(fig: Figures) -> None:
    tail, fo, br = fig["tail"], fig["failover"], fig["breaker"]
    print(f"machine: {os.cpu_count()} cpus, python {platform.python_version()}; calls via Gateway.query")
    print(
        f"\n1. heavy tail: lognormal median {MEDIAN_S * 1e3:.0f} ms sigma {SIGMA}, {STALL_P:.0%} stalls of "
        f"{STALL_S:g} s; {WORKERS} calls in flight"
    )
    for name in ("single tail-a", "first_available", "hedged fixed", "hedged auto", "fastest"):
        s = tail[name]
        print(
            f"   {name:<16} p50 {s['p50_ms']:7.1f} ms   p99 {s['p99_ms']:7.1f} ms   "
            f"extra upstream requests {s['extra_requests_pct']:+6.1f} %   (n={s['n']})"
        )
    before, after = (f"{v:.1f} ms" if v is not None else "n/a" for v in tail["hedge_auto_ms"])
    print(f"   hedge delay: fixed {tail['hedge_fixed_ms']:.0f} ms; auto (tail-a p95) {before} -> {after}")
    print("\n2. fail-over, sequential (breakers kept closed)")
    for name in ("healthy alone", "500 then healthy", "429 then healthy", "bare 500 round trip", "bare 429 round trip"):
        print(f"   {name:<20} p50 {fo[name]['p50_ms']:7.3f} ms   p99 {fo[name]['p99_ms']:7.3f} ms")
    for name in ("500", "429"):
        print(f"   {name} model's outcome: {fo[f'{name} error']}")
    print(f"\n3. open circuit (breaker_reset_s={RESET_S:g}): opened after {br['trip_calls']} calls")
    print(
        f"   {br['window_s']:g} s of steady traffic ({WORKERS} in flight, {br['steady_calls']} calls): "
        f"the dead provider got {br['probes']} request(s)"
    )
    for name in ("healthy alone", "open circuit then healthy"):
        print(f"   {name:<26} p50 {br[name]['p50_ms']:7.3f} ms   p99 {br[name]['p99_ms']:7.3f} ms")

    healthy = fo["healthy alone"]["p50_ms"]
    single_p99 = tail["single tail-a"]["p99_ms"]
    intervals = br["window_s"] / RESET_S
    open_ratio = br["open circuit then healthy"]["p50_ms"] / br["healthy alone"]["p50_ms"]
    rows: list[tuple[str, bool, str]] = []
    for name, label in (("500", "a 500"), ("429", "a 429 with Retry-After: 30")):
        cost, limit = fo[f"{name} then healthy"]["p50_ms"] - healthy, fo[f"bare {name} round trip"]["p50_ms"] + 1
        rows.append((f"fail-over past {label} <= one failed round trip + 1 ms", cost <= limit,
                     f"p50 {cost:+.3f} ms vs {limit:.3f} ms"))  # fmt: skip
    rows.append(("open circuit: calls <= 1.1 x healthy alone", open_ratio <= 1.1, f"p50 {open_ratio:.3f}x"))
    rows.append((
        "open circuit: at most one probe per open interval", br["probes"] <= math.floor(intervals),
        f"{br['probes']} request(s) in {intervals:g} intervals = {br['probes'] / intervals:.2f} per interval",
    ))  # fmt: skip
    for name in ("hedged fixed", "hedged auto"):
        p99, extra = tail[name]["p99_ms"], tail[name]["extra_requests_pct"]
        rows.append((
            f"{name}: p99 <= 0.5 x single, for <= 10 % extra requests", p99 <= single_p99 / 2 and extra <= 10,
            f"p99 {p99 / single_p99:.2f}x ({p99:.0f} vs {single_p99:.0f} ms), {extra:+.1f} % requests",
        ))  # fmt: skip
    fig["targets"] = {name: met for name, met, _ in rows}
    print("\n== summary ==")
    print(
        f"fail-over cost (p50 over healthy alone): past a 500 {fo['500 then healthy']['p50_ms'] - healthy:+.3f} ms, "
        f"past a 429 {fo['429 then healthy']['p50_ms'] - healthy:+.3f} ms (a peer gateway: 4.6-5.4 s past a 500)"
    )
    fa = tail["fastest"]
    print(
        f"p99 / single: first_available {tail['first_available']['p99_ms'] / single_p99:.2f}x, "
        f"fastest {fa['p99_ms'] / single_p99:.2f}x for {fa['extra_requests_pct']:+.0f} % requests"
    )
    for name, met, detail in rows:
        print(f"[{'met' if met else 'NOT met':>7}] {name}: {detail}")


async def main(quick: bool) -> Figures:
    # quick: one round of the heavy-tail arms (each segment lasts at least as long as its slowest stall)
    tail_n, rounds, fo_n, window_s, open_n = (150, 1, 150, 6.0, 150) if quick else (600, 3, 600, 10.0, 600)
    logging.getLogger("ai_gateway").setLevel(logging.ERROR)  # circuit transitions are expected here
    tail_proc, tail_url = await start_child(str(SCRIPT), "--serve-tail", "0")
    scenarios = [a for m, s in FAKE_SCENARIOS.items() for a in ("--scenario", f"{m}={json.dumps(s)}")]
    fake_proc, fake_url = await start_child("-m", "tests.fake_provider", "--port", "0", *scenarios)
    fig: Figures = {"quick": quick}
    try:
        async with aiohttp.ClientSession() as session:
            fig["tail"] = await tail_phase(tail_url, session, tail_n, rounds)
            fig["failover"] = await failover_phase(fake_url, session, fo_n)
            fig["breaker"] = await breaker_phase(fake_url, session, window_s, open_n)
    finally:
        for proc in (tail_proc, fake_proc):
            proc.terminate()
            await proc.wait()
    report(fig)
    return fig


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls and a shorter window (< 30 s)")
    parser.add_argument("--json", metavar="PATH", help="also write every figure as JSON to PATH")
    parser.add_argument("--serve-tail", type=int, metavar="PORT", help="run only the heavy-tailed upstream")
    ns = parser.parse_args()
    if ns.serve_tail is not None:
        asyncio.run(serve_tail(ns.serve_tail))
    else:
        figures = asyncio.run(main(ns.quick))
        if ns.json:
            Path(ns.json).write_text(json.dumps(figures, indent=2) + "\n")
