"""What each provider has done lately: outcomes, error codes, latency percentiles.

Read by ``gateway_status`` and ``/health``, and by hedging, which can derive
its delay from a model's own recent p95 latency.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field

SAMPLES = 256  # recent outcomes kept per model
# Models tracked at once (least recently called forgotten first): callers may name any model id, and a caller
# inventing them must not grow the board, and with it every hedge lookup, without end.
MAX_MODELS = 1024


@dataclass(slots=True)
class _Recent:
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=SAMPLES))
    # Successes plus attempts cancelled while running (their true latency was at least that long):
    # hedging must not learn only from the fast attempts that survived.
    durations: deque[float] = field(default_factory=lambda: deque(maxlen=SAMPLES))
    codes: deque[str] = field(default_factory=lambda: deque(maxlen=SAMPLES))  # "ok" or an error code
    calls: int = 0


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (q in 0..100): the ceil(q% x n)-th value."""
    rank = math.ceil(q / 100 * len(sorted_values))
    return sorted_values[min(max(rank, 1), len(sorted_values)) - 1]


class HealthBoard:
    def __init__(self) -> None:
        self._models: dict[str, _Recent] = {}
        self._providers: dict[str, _Recent] = {}

    def record(self, provider: str, model_id: str, code: str, latency_s: float | None) -> None:
        """One attempt's outcome: ``code`` is "ok" or an error code; latency only for answers."""
        by_provider = self._providers.get(provider)
        if by_provider is None:
            by_provider = self._providers[provider] = _Recent()
        for recent in (self._model(model_id), by_provider):
            recent.calls += 1
            recent.codes.append(code)
            if latency_s is not None:
                recent.latencies.append(latency_s)
                recent.durations.append(latency_s)

    def record_cancelled(self, model_id: str, elapsed_s: float) -> None:
        """An attempt cancelled after ``elapsed_s``: a lower bound on its latency, for hedging only."""
        self._model(model_id).durations.append(elapsed_s)

    def _model(self, model_id: str) -> _Recent:
        """The model's entry, now the most recently used; a new one may push out the least recently used."""
        recent = self._models.pop(model_id, None)
        if recent is None:
            recent = _Recent()
            if len(self._models) >= MAX_MODELS:
                del self._models[next(iter(self._models))]
        self._models[model_id] = recent
        return recent

    def latency_percentile(self, model_id: str, q: float, min_samples: int) -> float | None:
        """The model's recent attempt latency, cancelled attempts counted at their elapsed time."""
        recent = self._models.get(model_id)
        if recent is None or len(recent.durations) < min_samples:
            return None
        return percentile(sorted(recent.durations), q)

    def answer_latency_percentile(self, model_id: str, q: float) -> float | None:
        """The model's recent latency over answers only (None before its first): how long it really takes."""
        recent = self._models.get(model_id)
        if recent is None or not recent.latencies:
            return None
        return percentile(sorted(recent.latencies), q)

    def snapshot(self) -> dict[str, dict[str, object]]:
        out: dict[str, dict[str, object]] = {}
        for provider, recent in sorted(self._providers.items()):
            codes = Counter(recent.codes)
            ordered = sorted(recent.latencies)
            out[provider] = {
                "attempts": recent.calls,
                "recent_ok": codes.pop("ok", 0),
                "recent_errors": dict(codes.most_common()),
                "latency_ms": {f"p{q}": round(percentile(ordered, q) * 1000, 1) for q in (50, 95, 99)}
                if ordered
                else None,
            }
        return out
