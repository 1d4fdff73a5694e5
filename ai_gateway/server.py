"""The MCP server: tools, the model catalogue resource, prompts and ``/health``.

Everything here is MCP plumbing; each tool hands its arguments to
:class:`~ai_gateway.gateway.Gateway` and shapes the answer. The shared HTTP
client is opened and closed by the server's lifespan.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Annotated, Any, Literal

from fastmcp import Context, FastMCP
from fastmcp.exceptions import ToolError
from fastmcp.server.auth import AccessToken, TokenVerifier
from fastmcp.tools import Tool, ToolResult
from fastmcp.utilities.json_schema import dereference_refs
from mcp.types import TextContent, ToolAnnotations
from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse

from ai_gateway import __version__
from ai_gateway.cache.store import CacheMode
from ai_gateway.drain import Drain
from ai_gateway.environment import load_environ
from ai_gateway.errors import InvalidArgument
from ai_gateway.evaluation.runner import MAX_SAMPLES
from ai_gateway.evaluation.summary import EvalSummary  # run_eval's result
from ai_gateway.gateway import Gateway, running_gateway
from ai_gateway.prompts import add_prompts
from ai_gateway.registry import Registry
from ai_gateway.result_text import large_result
from ai_gateway.schemas import (
    Catalogue,
    ChatMessage,
    NotBool,
    QueryResult,
    StatusReport,
    StrategyName,
    compact_nullables,
)
from ai_gateway.sessions import SessionLimits
from ai_gateway.settings import Settings
from ai_gateway.tool_schemas import settle_tool_schemas

INSTRUCTIONS = """\
ai-gateway puts many LLMs behind one tool. Call query_models with a prompt and a list of
provider/model ids (see list_models or the gateway://models resource) and a strategy:
first_available (try in order, fall back on failure), fastest (race all, first answer wins)
or consensus (ask all, report whether a majority agrees). Every model's outcome is reported."""


class _GatewayHolder:
    """The gateway lives as long as the server's lifespan; tools reach it through here."""

    gateway: Gateway | None = None

    def get(self) -> Gateway:
        if self.gateway is None:
            raise ToolError("the gateway is not running (lifespan not started)")
        return self.gateway


class BearerTokenVerifier(TokenVerifier):
    """One static bearer token for the HTTP transport, compared in constant time."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self._token = token.encode()

    async def verify_token(self, token: str) -> AccessToken | None:
        if hmac.compare_digest(self._token, token.encode()):
            return AccessToken(token="bearer", client_id="ai-gateway-client", scopes=[])
        return None


def build_server(
    settings: Settings | None = None,
    environ: Mapping[str, str] | None = None,
    entry_points: list[EntryPoint] | None = None,
) -> FastMCP:
    settings = settings or Settings()
    environ = load_environ() if environ is None else environ
    registry = Registry.from_settings(settings, environ, entry_points)
    holder = _GatewayHolder()
    # run_eval's files must lie here; fixed at start, so a later chdir cannot move it
    eval_root = Path(settings.eval_dir or Path.cwd()).expanduser().resolve()

    @asynccontextmanager
    async def lifespan(server: FastMCP) -> AsyncIterator[dict[str, Any]]:
        await settle_tool_schemas(server)  # every tool is added by now, a caller's own included
        async with running_gateway(settings, registry) as gateway:
            holder.gateway = gateway
            try:
                yield {"gateway": gateway}
            finally:
                holder.gateway = None

    auth = BearerTokenVerifier(settings.auth_token.get_secret_value()) if settings.auth_token else None
    mcp = FastMCP(
        "ai-gateway", INSTRUCTIONS, version=__version__, lifespan=lifespan, auth=auth, mask_error_details=True
    )
    sessions = SessionLimits(settings.session_idle_timeout_s, settings.max_sessions)
    sessions.install(mcp)

    async def query_models(
        prompt: Annotated[str | None, Field(description="The question or task. Give this or messages.")] = None,
        messages: Annotated[
            list[ChatMessage] | None,
            Field(description="A conversation as [{role, content}] (roles: system, user, assistant).", min_length=1),
        ] = None,
        models: Annotated[
            list[str] | None,
            Field(description="Model ids as provider/model, in preference order. Default from settings.", min_length=1),
        ] = None,
        strategy: Annotated[
            StrategyName,
            Field(description="first_available (fallback chain), fastest (race) or consensus (majority vote)."),
        ] = "first_available",
        system: Annotated[str | None, Field(description="System prompt sent to every model.")] = None,
        temperature: Annotated[float | None, Field(description="Sampling temperature.", ge=0, le=2), NotBool] = None,
        max_tokens: Annotated[
            int | None, Field(description="Most tokens each model may generate.", ge=1), NotBool
        ] = None,
        timeout_s: Annotated[
            float | None,
            Field(description="Deadline for the whole call in seconds (clamped by settings).", gt=0),
            NotBool,
        ] = None,
        hedge_after_s: Annotated[
            Annotated[float, Field(gt=0, allow_inf_nan=False)] | Literal["auto", "off"] | None,
            Field(
                description="first_available only: if a model has not answered after this many seconds, start the "
                "next one too and take whichever answers first. 'auto': the model's recent p95 latency. "
                "'off': never. Default from settings (off unless configured)."
            ),
            NotBool,
        ] = None,
        cache: Annotated[
            CacheMode,
            Field(
                description="use: read and write the cache; refresh: skip the read, store the new answer; "
                "bypass: neither; only: answer from the cache or fail that model with cache_miss (no provider call)."
            ),
        ] = "use",
        sample: Annotated[
            int | None,
            Field(
                description="Index of a repeated sample (0, 1, ...). With temperature > 0 answers are cached only "
                "when a sample index is given, so each sample is its own entry.",
                ge=0,
            ),
            NotBool,
        ] = None,
        ctx: Context | None = None,
    ) -> QueryResult:
        """Send one prompt to several LLMs and answer with the chosen strategy.

        Returns the chosen answer and, for every requested model, its status (ok, error,
        cancelled, skipped), text, latency, token usage and error code.
        """
        try:
            result = await holder.get().query(
                prompt=prompt,
                messages=messages,
                models=models,
                strategy=strategy,
                system=system,
                temperature=temperature,
                max_tokens=max_tokens,
                timeout_s=timeout_s,
                hedge_after_s=hedge_after_s,
                cache=cache,
                sample=sample,
                progress=ctx.report_progress if ctx is not None and _wants_progress(ctx) else None,
            )
        except InvalidArgument as exc:
            # A caller's mistake, not the gateway's: log it quietly.
            raise ToolError(f"invalid argument {exc.message}", log_level=logging.INFO) from None
        if not any(r.status == "ok" for r in result.results):
            return _all_failed(result)
        return large_result(result) or result

    tool = Tool.from_function(query_models, annotations=ToolAnnotations(readOnlyHint=True, openWorldHint=True))
    # Inlined first (fastmcp would inline the $defs when listing anyway), so the nullable nested
    # objects (usage, error, consensus) are compacted too, not only the fields beside them.
    tool.output_schema = compact_nullables(dereference_refs(tool.output_schema))
    mcp.add_tool(tool)

    @mcp.tool(annotations={"readOnlyHint": True, "openWorldHint": False})
    async def list_models() -> Catalogue:
        """List the providers, whether each is configured (and why not), and example model ids."""
        return holder.get().catalogue()

    @mcp.tool(annotations={"readOnlyHint": True, "openWorldHint": False})
    async def gateway_status() -> StatusReport:
        """Each provider's circuit breaker state, recent error codes, latency percentiles, retry-budget use and load;
        the response cache's backend (and its health) and counters."""
        return holder.get().status()

    # -- run_eval (ai_gateway/evaluation, docs/evaluation.md) ------------------------------ begin
    @mcp.tool(annotations={"readOnlyHint": False, "openWorldHint": True})
    async def run_eval(
        path: Annotated[
            str,
            Field(description="JSONL dataset, inside the server's evaluation directory (relative paths start there)."),
        ],
        models: Annotated[list[str], Field(description="Model ids as provider/model.", min_length=1)],
        ctx: Context,
        strategy: StrategyName = "first_available",
        samples: Annotated[
            int, Field(description="Queries per row (sample indexes 0..k-1).", ge=1, le=MAX_SAMPLES), NotBool
        ] = 1,
        concurrency: Annotated[int, Field(description="Queries in flight at once.", ge=1, le=256), NotBool] = 4,
        cache: CacheMode = "use",
        out: Annotated[
            str | None,
            Field(
                description="Results JSONL (appended; resumes), inside the evaluation directory. "
                "Default: <dataset>.results.jsonl."
            ),
        ] = None,
        temperature: Annotated[float | None, Field(ge=0, le=2), NotBool] = None,
        max_tokens: Annotated[
            int | None, Field(description="Most tokens each model may generate per query.", ge=1), NotBool
        ] = None,
        timeout_s: Annotated[float | None, Field(description="Deadline per query in seconds.", gt=0), NotBool] = None,
        retry_failed: Annotated[
            bool, Field(description="Ask again the queries of the results file that no model answered.")
        ] = False,
    ) -> EvalSummary:
        """Run every row of a JSONL dataset (prompt or messages, optional id and expected) through the gateway.

        Writes one result line per (row, sample) as it finishes, skips pairs already in the results
        file (resume), reports progress per query and returns per-model statistics and accuracy.
        """
        from ai_gateway.evaluation.tool import run_eval_tool

        return await run_eval_tool(
            holder.get(), ctx, root=eval_root, path=path, out=out, models=models, strategy=strategy, samples=samples,
            concurrency=concurrency, cache=cache, temperature=temperature, max_tokens=max_tokens, timeout_s=timeout_s,
            retry_failed=retry_failed,
        )  # fmt: skip

    # -- run_eval -------------------------------------------------------------------------- end

    @mcp.resource("gateway://status", name="gateway-status", mime_type="application/json")
    async def status_resource() -> str:
        """Breakers, recent errors, latency percentiles, retry budgets and the cache, as gateway_status returns them."""
        return holder.get().status().model_dump_json(indent=2)

    @mcp.resource("gateway://models", name="model-catalogue", mime_type="application/json")
    async def model_catalogue() -> str:
        """The provider catalogue: configured providers, why others are not, example model ids."""
        return holder.get().catalogue().model_dump_json(indent=2)

    add_prompts(mcp, settings.default_models)

    @mcp.custom_route("/health", methods=["GET"])
    async def health(request: Request) -> JSONResponse:
        statuses = registry.statuses()
        circuits = {"open": [], "half_open": []}
        if holder.gateway is not None:
            for breaker in holder.gateway.resilience.breakers.snapshot():
                if breaker.state != "closed":
                    circuits[breaker.state.replace("-", "_")].append(breaker.name)
        # HTTP sessions open: clients that never end theirs show here as a climb. None: no sessions (stateless).
        open_sessions = sessions.open_sessions()
        # Draining (shutting down, calls in flight answering): 503, so a load balancer stops sending calls here.
        drain = Drain.of(mcp)
        draining = drain is not None and drain.draining
        return JSONResponse(
            status_code=503 if draining else 200,
            content={
                # The gateway itself is up either way; "degraded" says some provider is being refused.
                "status": "draining" if draining else "degraded" if circuits["open"] else "ok",
                "version": __version__,
                "providers": {
                    "configured": [s.name for s in statuses if s.configured],
                    "unconfigured": [s.name for s in statuses if not s.configured],
                },
                "circuits": circuits,
                "sessions": None if open_sessions is None else {"open": open_sessions, "max": settings.max_sessions},
            },
        )

    return mcp


def _wants_progress(ctx: Context) -> bool:
    """The client sent a progress token with this call (fastmcp's Client always does; others when asked)."""
    request = ctx.request_context
    return request is not None and request.meta is not None and request.meta.get("progressToken") is not None


def _all_failed(result: QueryResult) -> ToolResult:
    """An error result that still carries every model's outcome, so nothing is lost."""
    every_open = all(r.error is not None and r.error.code == "circuit_open" for r in result.results)
    if every_open:
        lines = ["every requested model's circuit is open (calls refused without contacting the provider):"]
    else:
        tried = sum(r.status != "skipped" for r in result.results)
        untried = len(result.results) - tried
        lines = [f"no model answered ({tried} tried" + (f", {untried} not started" if untried else "") + "):"]
    for r in result.results:
        detail = f"{r.error.code}: {r.error.message}" if r.error else r.status
        lines.append(f"- {r.model}: {detail}")
    return ToolResult(
        content=[TextContent(type="text", text="\n".join(lines))],
        structured_content=result.model_dump(mode="json"),
        is_error=True,
    )
