"""What the benchmark scripts share: percentiles, interleaving, and starting a child server."""

from __future__ import annotations

import asyncio
import statistics
import sys
from pathlib import Path
from typing import Any

from ai_gateway.resilience.health import percentile

REPO = Path(__file__).resolve().parent.parent
Figures = dict[str, Any]


def pct(samples: list[float], q: float) -> float:
    """The q-quantile (0..1) of samples: the nearest-rank percentile the gateway itself reports."""
    return percentile(sorted(samples), q * 100)


def summary_ms(samples: list[float]) -> Figures:
    return {
        "median_ms": statistics.median(samples) * 1e3,
        "p50_ms": pct(samples, 0.5) * 1e3,
        "p99_ms": pct(samples, 0.99) * 1e3,
        "n": len(samples),
    }


def rotated(names: list[str], round_no: int) -> list[str]:
    """A different order each round (rotation, reversed on odd rounds) so machine noise hits every kind."""
    order = names[round_no % len(names) :] + names[: round_no % len(names)]
    return order[::-1] if round_no % 2 else order


async def start_child(*args: str) -> tuple[asyncio.subprocess.Process, str]:
    """A Python child server that prints `READY <url>` once it listens; returns it and its URL."""
    proc = await asyncio.create_subprocess_exec(sys.executable, *args, cwd=REPO, stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().strip()
    if not line.startswith("READY "):
        proc.terminate()
        raise RuntimeError(f"{' '.join(args)} did not start: {line!r}")
    return proc, line.split()[1]
