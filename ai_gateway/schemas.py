"""Pydantic models at the MCP boundary: what ``query_models`` and ``list_models`` return.

Scripts and agents parse these, so field names are stable; new fields may be
added, existing ones are never renamed.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

Status = Literal["ok", "error", "cancelled", "skipped"]


def _not_a_bool(value: Any) -> Any:
    # pydantic takes JSON's true for 1: max_tokens true sent max_tokens 1, and sample true paid for sample 1.
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {str(value).lower()}")
    return value


NotBool = BeforeValidator(_not_a_bool)  # on every number a caller sends
StrategyName = Literal["first_available", "fastest", "consensus"]


class ChatMessage(BaseModel):
    """One message of a conversation, as a caller sends it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["system", "user", "assistant"]
    content: str = Field(min_length=1)


class UsageInfo(BaseModel):
    input_tokens: int = Field(description="Prompt tokens, including any served from the provider's prompt cache.")
    output_tokens: int
    cached_input_tokens: int | None = None
    reasoning_tokens: int | None = None


class ErrorInfo(BaseModel):
    code: str = Field(description="Stable error code, e.g. rate_limited, timeout, auth, cancelled.")
    message: str
    provider: str | None = None
    status: int | None = Field(None, description="HTTP status the provider answered, if any.")
    retry_after_s: float | None = Field(None, description="Seconds the provider (or an open circuit) asks to wait.")
    not_retried: str | None = Field(None, description="Why a retryable error was not retried.")


class ModelResult(BaseModel):
    model: str = Field(description="The model id as requested: provider/model.")
    status: Status
    text: str | None = None
    latency_ms: float | None = Field(None, description="Time spent on this model, from its start to its outcome.")
    usage: UsageInfo | None = None
    error: ErrorInfo | None = None
    finish_reason: str | None = None
    provider_model: str | None = Field(None, description="The model name the provider reported, if it differs.")
    attempts: int = Field(0, description="Provider attempts made for this model (retries included).")
    hedge: bool = Field(False, description="True when this model was started as a hedge (first_available).")
    cached: bool = Field(False, description="True when the answer came from the cache (it cost nothing).")
    cost_usd: float | None = Field(
        None,
        description="What this call cost in USD: 0 for a cached answer; null when the model has no known price "
        "(see AI_GATEWAY_MODEL_PRICES), the provider reported no usage, or the call did not succeed.",
    )
    cost_saved_usd: float | None = Field(
        None,
        description="Cached answers only: what the answer would have cost in USD (null when not cached or unpriced).",
    )


class VoteGroup(BaseModel):
    answer: str = Field(description="The answer as the group's first model (in request order) wrote it.")
    normalized: str = Field(description="The normalised form the group's answers share.")
    models: list[str]
    votes: int


class ConsensusInfo(BaseModel):
    reached: bool = Field(description="True when one answer holds a strict majority of the successful answers.")
    agreement: float = Field(description="Votes for the leading answer / models requested.")
    votes: int = Field(description="Models that gave the leading answer.")
    answered: int = Field(description="Models that answered successfully.")
    requested: int
    decided_early: bool = Field(False, description="True when a majority of all requested models was reached early.")
    groups: list[VoteGroup] = Field(description="Every distinct answer, leading first (see docs/strategies.md).")


class QueryResult(BaseModel):
    strategy: StrategyName
    answer: str | None = Field(description="The chosen answer; null when no model succeeded or there is no consensus.")
    model: str | None = Field(description="The model whose answer was chosen.")
    results: list[ModelResult] = Field(description="One entry per requested model, in request order.")
    consensus: ConsensusInfo | None = None
    latency_ms: float = Field(description="Wall-clock time of the whole call.")
    usage: UsageInfo | None = Field(
        None,
        description="Tokens summed over the calls a provider billed: its answers, and the empty answers and refusals "
        "it billed all the same; cached answers cost nothing and are left out.",
    )
    cost_usd: float | None = Field(
        None,
        description="USD summed over the calls a provider billed: its answers, and the empty answers and refusals it "
        "billed all the same (0 when none); null when any of them has no known cost. Calls that failed or were "
        "cancelled without an answer report no usage and are not counted.",
    )
    cost_saved_usd: float | None = Field(
        None, description="USD the cached answers would have cost (0 when none); null when any of them is unpriced."
    )


class BreakerInfo(BaseModel):
    name: str = Field(description="The provider, or provider/model for per-model circuits.")
    state: Literal["closed", "open", "half-open"]
    failures: int = Field(description="Consecutive failures counted.")
    seconds_to_probe: float | None = Field(None, description="While open: seconds until trial calls are admitted.")
    trial_calls: int = Field(0, description="Half-open trial calls in flight.")
    last_error: ErrorInfo | None = None


class RetryBudgetInfo(BaseModel):
    requests: int = Field(description="First attempts in the budget window.")
    retries: int = Field(description="Retries spent in the window.")
    allowed: float = Field(description="Retries the window allows: floor + ratio x requests.")


class ProviderStatusInfo(BaseModel):
    provider: str
    attempts: int = Field(0, description="Attempts since start.")
    recent_ok: int = 0
    recent_errors: dict[str, int] = Field(default_factory=dict, description="Error codes among recent attempts.")
    latency_ms: dict[str, float] | None = Field(None, description="p50/p95/p99 of recent successful attempts.")
    in_flight: int = 0
    retry_budget: RetryBudgetInfo | None = None


class CacheStatusInfo(BaseModel):
    backend: str = Field(description="memory (the embedded LRU) or redis (shared; the embedded LRU is its fallback).")
    url: str | None = Field(None, description="Redis only: its URL, with any password shown as ****.")
    healthy: bool | None = Field(
        None, description="Redis only: false while Redis is left alone after a failure (the embedded cache answers)."
    )
    failures: int | None = Field(None, description="Redis only: failed operations in the current outage (0 when fine).")
    unsynced: int | None = Field(
        None, description="Redis only: answers stored while Redis was failing, held here until it answers again."
    )
    near: bool | None = Field(
        None,
        description="Redis only: whether the near cache answers (Redis's invalidation messages are arriving); "
        "null when it is turned off or Redis refused client-side tracking.",
    )
    near_entries: int | None = Field(None, description="Redis only: answers held in the near cache.")
    memory_entries: int | None = Field(None, description="Entries in the embedded LRU.")
    memory_bytes: int | None = Field(None, description="Memory the embedded LRU entries take.")
    hits: int = Field(0, description="Answers served from the cache (or from another process's call), since start.")
    misses: int = Field(0, description="Reads that found no usable entry.")
    writes: int = Field(0, description="Answers stored.")
    not_stored: int = Field(0, description="Answers not stored: incomplete, refused, or too large.")
    coalesced: int = Field(0, description="Calls that waited for an identical call in this process.")
    peer_waits: int = Field(0, description="Calls that waited for an identical call another process held the lease on.")
    peer_waits_in_flight: int = Field(0, description="Calls waiting on another process's lease now.")


class StatusReport(BaseModel):
    providers: list[ProviderStatusInfo]
    breakers: list[BreakerInfo]
    open_circuits: list[str] = Field(description="Circuits refusing calls now.")
    limits: dict[str, int] = Field(description="Concurrency caps: total and per provider.")
    cache: CacheStatusInfo | None = Field(None, description="The response cache: its backend and counters.")


class ModelInfo(BaseModel):
    provider: str
    configured: bool
    reason: str = Field(description="Why the provider is or is not usable (which variable is set or missing).")
    source: str = Field(description="built-in, plugin (distribution) or settings.")
    base_url: str | None = None
    description: str = ""
    example_models: list[str] = Field(default_factory=list, description="Full ids such as openai/gpt-4o-mini.")


class Catalogue(BaseModel):
    providers: list[ModelInfo]
    default_models: list[str]
    max_models: int


def compact_nullables(schema: Any) -> Any:
    """``anyOf: [{type: X, ...}, {type: null}]`` rewritten as ``{type: [X, "null"], ...}``; same meaning.

    Every MCP client validates structured content against the output schema on
    every call (and fastmcp's client also rebuilds a type from it). A null in an
    ``anyOf`` field costs a failed branch first, and jsonschema builds an error
    object for it; a type array is one check. That holds for nested objects too
    (``properties`` and ``required`` say nothing about a null), so give this an
    inlined schema, without ``$ref``: measured here, 10–15% off the mcp SDK's
    validation of a one-model result. An ``enum`` branch is left alone: the
    enum would reject the null.
    """
    if isinstance(schema, list):
        return [compact_nullables(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    node = {key: compact_nullables(value) for key, value in schema.items()}
    branches = node.get("anyOf")
    if isinstance(branches, list) and len(branches) == 2 and {"type": "null"} in branches:
        other = branches[0] if branches[1] == {"type": "null"} else branches[1]
        if isinstance(other.get("type"), str) and "enum" not in other:
            rest = {key: value for key, value in node.items() if key != "anyOf"}
            return {**other, "type": [other["type"], "null"], **rest}
    return node
