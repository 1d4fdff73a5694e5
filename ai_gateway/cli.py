"""The ``ai-gateway`` command: serve, query, models.

``query`` calls the ``query_models`` tool through fastmcp's in-memory client,
so the shell takes exactly the path an MCP client takes. Heavy imports happen
inside the commands, after the environment for fastmcp is set, so that
``--help`` is instant and fastmcp never configures its own logging or banner.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from ai_gateway import __version__

# Written out: flags are parsed before the gateway is imported (tests/test_structure.py checks they match its own).
_STRATEGIES = ("first_available", "fastest", "consensus")
_CACHE_MODES = ("use", "refresh", "bypass", "only")


def _prepare_environment() -> None:
    # Before fastmcp is imported: no update check (no network), no banner, our logging.
    os.environ.setdefault("FASTMCP_CHECK_FOR_UPDATES", "off")
    os.environ.setdefault("FASTMCP_SHOW_SERVER_BANNER", "false")
    os.environ.setdefault("FASTMCP_LOG_ENABLED", "false")


def refuse(message: str) -> NoReturn:
    """Stop on bad configuration with exit status 2, like a bad argument: 1 means no model answered."""
    print(f"ai-gateway: {message}", file=sys.stderr)
    raise SystemExit(2)


def _setup(args: argparse.Namespace) -> tuple[Any, dict[str, str]]:
    """Settings, environment and logging; a bad setting exits with a message naming it."""
    from pydantic import ValidationError

    from ai_gateway import logs
    from ai_gateway.environment import load_environ
    from ai_gateway.secrets import credentials_in, environment_credentials
    from ai_gateway.settings import Settings, unknown_settings

    try:
        settings = Settings()
    except ValidationError as exc:
        refuse(f"invalid setting: {describe_settings_error(exc)}")
    environ = load_environ()
    if unknown := unknown_settings(environ):
        refuse(f"invalid setting: {'; '.join(unknown)}; .env.example lists every setting")
    level = getattr(args, "log_level", None) or settings.log_level
    redis_url = settings.redis_url.get_secret_value() if settings.redis_url else None
    secrets = [*environment_credentials(environ), *credentials_in([redis_url])]
    secrets += [v for c in settings.custom_providers.values() for v in c.credentials()]
    # A custom provider's key variable may have any name (CORP_LLM_APIKEY): what the registry redacts, logs must.
    secrets += [environ[c.api_key_env] for c in settings.custom_providers.values() if environ.get(c.api_key_env or "")]
    if settings.auth_token:
        secrets.append(settings.auth_token.get_secret_value())
    logs.configure(level, secrets)
    return settings, environ


def describe_settings_error(exc: Any) -> str:
    """Name the variable to fix: AI_GATEWAY_<FIELD>, plus the path inside it for JSON settings."""
    problems = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        where = f"AI_GATEWAY_{loc[0].upper()}" if loc else "settings"
        if len(loc) > 1:
            where += f" ({'.'.join(loc[1:])})"
        problems.append(f"{where}: {error['msg']}")
    return "; ".join(problems)


def _build(settings: Any, environ: dict[str, str]) -> Any:
    from ai_gateway.registry import RegistryError
    from ai_gateway.server import build_server

    try:
        return build_server(settings, environ)
    except RegistryError as exc:
        refuse(str(exc))


def _registry(settings: Any, environ: dict[str, str]) -> Any:
    """The providers alone, for a command that needs no MCP server (eval)."""
    from ai_gateway.registry import Registry, RegistryError

    try:
        return Registry.from_settings(settings, environ)
    except RegistryError as exc:
        refuse(str(exc))


def cmd_serve(args: argparse.Namespace) -> int:
    settings, environ = _setup(args)
    if args.host:
        settings.host = args.host
    if args.port is not None:
        settings.port = args.port
    if args.path:
        settings.path = args.path if args.path.startswith("/") else "/" + args.path
    server = _build(settings, environ)
    # Everything built so far lives for the whole process: keep it out of the cyclic
    # collector, whose full passes over ~130k start-up objects took ~90 ms each.
    gc.freeze()
    if args.transport == "stdio":
        from ai_gateway.stdio import serve_stdio

        asyncio.run(serve_stdio(server))
    else:
        _serve_http(settings, server)
    return 0


def _serve_http(settings: Any, server: Any) -> None:
    from ai_gateway.drain import serve_http

    def listening(port: int) -> None:
        # Said once bound: with --port 0 the port is the system's choice, and a taken port is never announced.
        url = f"http://{settings.host}:{port}"
        print(f"ai-gateway {__version__}: MCP at {url}{settings.path}, health at {url}/health", file=sys.stderr)

    if settings.auth_token is None and not _loopback(settings.host):
        print(
            f"ai-gateway: warning: serving on {settings.host} without AI_GATEWAY_AUTH_TOKEN: anyone who can "
            "reach this port can spend the providers' keys",
            file=sys.stderr,
        )
    serving = serve_http(
        server,
        settings.shutdown_grace_s,
        listening,
        host=settings.host,
        port=settings.port,
        path=settings.path,
        show_banner=False,
        # Sessions by default: a client on a protocol before 2026-07-28 sends its cancel as a notification in
        # its session; without one, the cancel was dropped and the provider calls ran on, billed.
        stateless_http=settings.stateless_http,
        # DNS rebinding: a web page whose name resolves to 127.0.0.1 could otherwise call the tools with the
        # user's keys. fastmcp's guard, off by default, checks Host and Origin on loopback binds, and on every
        # bind once hosts are listed.
        host_origin_protection="auto",
        allowed_hosts=settings.allowed_hosts or None,
        allowed_origins=settings.allowed_origins or None,
        # Without this uvicorn installs its own handlers (access lines on stdout,
        # no redaction); its records must flow through ours instead.
        uvicorn_config={"log_config": None},
    )
    # Ctrl-C: uvicorn raises it again once the calls have drained (or at once on a second one); main() turns it
    # into exit status 130, as for stdio.
    try:
        asyncio.run(serving)
    except SystemExit as exc:
        if exc.code != _UVICORN_STARTUP_FAILURE:
            raise
        # uvicorn has logged why (a port in use, an address this machine does not have); its own status, 3,
        # is documented nowhere of ours.
        refuse(
            f"could not serve HTTP on {settings.host}:{settings.port} (the error above says why); choose "
            "another --port / AI_GATEWAY_PORT or --host / AI_GATEWAY_HOST"
        )


_UVICORN_STARTUP_FAILURE = 3  # uvicorn.config.STARTUP_FAILURE, without importing uvicorn before it is needed


def _loopback(host: str) -> bool:
    import ipaddress

    try:
        return host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def cmd_query(args: argparse.Namespace) -> int:
    settings, environ = _setup(args)
    arguments: dict[str, Any] = {"prompt": args.prompt, "strategy": args.strategy}
    if args.models:
        arguments["models"] = args.models
    if args.hedge_after is not None:
        hedge = args.hedge_after
        arguments["hedge_after_s"] = hedge if hedge in ("auto", "off") else float(hedge)
    for key in ("system", "temperature", "max_tokens", "timeout_s", "cache", "sample"):
        value = getattr(args, key)
        if value is not None:
            arguments[key] = value
    server = _build(settings, environ)
    if problem := asyncio.run(_argument_problem(server, "query_models", arguments, _QUERY_FLAGS)):
        refuse(problem)
    result = asyncio.run(_call_tool(server, "query_models", arguments))
    if result.is_error and not result.structured_content:
        print(f"ai-gateway: {_text(result)}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.structured_content, indent=2, ensure_ascii=False))
    else:
        print(render_query(result.structured_content))
    return 1 if result.is_error else 0


def cmd_models(args: argparse.Namespace) -> int:
    settings, environ = _setup(args)
    server = _build(settings, environ)
    result = asyncio.run(_call_tool(server, "list_models", {}))
    catalogue = result.structured_content
    if args.json:
        print(json.dumps(catalogue, indent=2))
        return 0
    if not catalogue["providers"]:
        print("no providers: every one is disabled (AI_GATEWAY_DISABLED_PROVIDERS)")
    width = max((len(p["provider"]) for p in catalogue["providers"]), default=0)
    reason_width = max((len(p["reason"]) for p in catalogue["providers"]), default=0)
    for p in catalogue["providers"]:
        mark = "configured    " if p["configured"] else "not configured"
        examples = ", ".join(p["example_models"][:2])
        print(f"{p['provider']:<{width}}  {mark}  {p['reason']:<{reason_width}}  {examples}")
    if catalogue["default_models"]:
        print(f"\ndefault models: {', '.join(catalogue['default_models'])}")
    return 0


# -- eval (ai_gateway/evaluation, docs/evaluation.md) ---------------------------------- begin
def cmd_eval(args: argparse.Namespace) -> int:
    from ai_gateway.evaluation.console import run_cli

    return run_cli(args, _setup, _build, _registry)


def _add_eval_parser(sub: Any) -> argparse.ArgumentParser:
    ev = sub.add_parser("eval", help="run a JSONL dataset through the gateway; resumable, one result line per query")
    ev.add_argument("dataset", help="JSONL: one object per line with prompt or messages, optional id and expected")
    ev.add_argument("--models", "-m", required=True, type=_model_ids, action="extend",
                    help="comma-separated provider/model ids (or the option repeated)")  # fmt: skip
    ev.add_argument("--strategy", "-s", choices=_STRATEGIES, default="first_available")
    ev.add_argument("--samples", type=int, default=1, help="queries per row (sample indexes 0..k-1)")
    ev.add_argument("--concurrency", "-c", type=int, default=4, help="queries in flight at once")
    ev.add_argument("--cache", choices=_CACHE_MODES, default="use",
                    help="only: replay from the cache, no provider calls (misses fail with cache_miss)")  # fmt: skip
    ev.add_argument("--temperature", type=_number)
    ev.add_argument("--max-tokens", dest="max_tokens", type=int, help="most tokens each model may generate per query")
    ev.add_argument("--timeout", dest="timeout_s", type=_number, help="deadline per query, in seconds")
    ev.add_argument("--out", "-o", required=True, help="results JSONL (appended to; a rerun resumes)")
    ev.add_argument("--retry-failed", action="store_true",
                    help="ask again the queries in --out that no model answered")  # fmt: skip
    ev.add_argument("--json-summary", action="store_true", help="print the summary as JSON instead of a table")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    ev.add_argument("--via", choices=("gateway", "tool"), default="gateway",
                    help="gateway: Gateway.query (fast); tool: the query_models tool in memory (slow)")  # fmt: skip
    ev.set_defaults(func=cmd_eval)
    return ev


# -- eval ---------------------------------------------------------------------------- end


# query_models' arguments as `ai-gateway query` spells them.
_QUERY_FLAGS = {
    "prompt": "PROMPT",
    "models": "--models",
    "strategy": "--strategy",
    "system": "--system",
    "temperature": "--temperature",
    "max_tokens": "--max-tokens",
    "timeout_s": "--timeout",
    "hedge_after_s": "--hedge-after",
    "cache": "--cache",
    "sample": "--sample",
}


async def _argument_problem(server: Any, name: str, arguments: dict[str, Any], flags: dict[str, str]) -> str | None:
    """What is wrong with a command's arguments under the tool's published input schema, named by its flag.

    The tool's own refusal names the argument (max_tokens, not --max-tokens) in pydantic's multi-line dump, after a
    fastmcp warning; the schema holds the same bounds, so they are written once, in the tool's signature."""
    from jsonschema.exceptions import best_match
    from jsonschema.validators import validator_for

    schema = (await server.get_tool(name)).parameters
    error = best_match(validator_for(schema)(schema).iter_errors(arguments))
    if error is None:
        return None
    field = next((str(part) for part in error.absolute_path), "")
    return f"{flags.get(field, field or name)}: {error.message}"


async def _call_tool(server: Any, name: str, arguments: dict[str, Any]) -> Any:
    from fastmcp import Client

    async with Client(server) as client:
        return await client.call_tool(name, arguments, raise_on_error=False)


def _text(result: Any) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


def render_query(result: dict[str, Any]) -> str:
    """A readable summary of a query_models result for a terminal."""
    lines = []
    answer = result.get("answer")
    if answer is not None:
        lines.append(f"{answer}\n")
        lines.append(f"answered by {result['model']} ({result['strategy']}, {result['latency_ms']:.0f} ms)")
    else:
        lines.append(f"no answer ({result['strategy']}, {result['latency_ms']:.0f} ms)")
    consensus = result.get("consensus")
    if consensus:
        verdict = "consensus" if consensus["reached"] else "no consensus"
        lines.append(
            f"{verdict}: {consensus['votes']} of {consensus['requested']} models agree "
            f"(agreement {consensus['agreement']:.2f}, {consensus['answered']} answered)"
        )
    width = max(len(r["model"]) for r in result["results"])
    for r in result["results"]:
        latency = f"{r['latency_ms']:.0f} ms" if r["latency_ms"] is not None else "-"
        if r["status"] == "ok":
            detail = " ".join(r["text"].split())
            detail = detail if len(detail) <= 60 else detail[:57] + "..."
        elif r["error"]:
            detail = f"{r['error']['code']}: {r['error']['message']}"
        else:
            detail = ""
        lines.append(f"  {r['status']:<9} {r['model']:<{width}}  {latency:>8}  {detail}")
    if result.get("cost_usd") is not None or result.get("cost_saved_usd"):
        from ai_gateway.pricing import usd

        saved = f" (saved {usd(result['cost_saved_usd'])} by the cache)" if result.get("cost_saved_usd") else ""
        lines.append(f"cost {usd(result.get('cost_usd'))}{saved}")
    return "\n".join(lines)


def _hedge_value(text: str) -> str:
    if text in ("auto", "off"):
        return text
    try:
        _number(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError("a number of seconds, 'auto' or 'off'") from None
    return text


def _number(text: str) -> float:
    """A finite number: float() reads "nan" and "inf", which the in-memory client then sent as null, so
    ``--temperature nan`` ran with no temperature and exited 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _model_ids(text: str) -> list[str]:
    """One --models value: ids separated by commas. Repeated, the option adds to the list (argparse kept only the
    last, and the models of the others were dropped without a word); an empty item is refused, as a malformed id
    is by the tool."""
    ids = [m.strip() for m in text.split(",")]
    if "" in ids:
        raise argparse.ArgumentTypeError(
            f"{text!r} has an empty id (item {ids.index('') + 1}); separate provider/model ids with single commas"
        )
    return ids


def _port(text: str) -> int:
    """0..65535: a larger one reached uvicorn, which logged an 81-line traceback."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (0 to 65535)")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ai-gateway", description="One MCP server that puts many LLMs behind one tool."
    )
    parser.add_argument("--version", action="version", version=f"ai-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the MCP server (stdio by default)")
    serve.add_argument("--transport", choices=("stdio", "http"), default="stdio")
    serve.add_argument("--host", help="bind address for http (default AI_GATEWAY_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=_port, help="port for http (default AI_GATEWAY_PORT or 8000)")
    serve.add_argument("--path", help="MCP endpoint path for http (default /mcp)")
    serve.set_defaults(func=cmd_serve)

    query = sub.add_parser("query", help="ask models from the shell through the query_models tool")
    query.add_argument("prompt")
    query.add_argument("--models", "-m", type=_model_ids, action="extend",
                       help="comma-separated provider/model ids, or the option repeated (default "
                       "AI_GATEWAY_DEFAULT_MODELS)")  # fmt: skip
    query.add_argument("--strategy", "-s", choices=_STRATEGIES, default="first_available")
    query.add_argument("--system")
    query.add_argument("--temperature", type=_number)
    query.add_argument("--max-tokens", dest="max_tokens", type=int)
    query.add_argument("--timeout", dest="timeout_s", type=_number, help="deadline for the whole call, in seconds")
    query.add_argument(
        "--hedge-after",
        type=_hedge_value,
        help="first_available: also start the next model after this many seconds ('auto': its p95; 'off')",
    )
    query.add_argument("--cache", choices=_CACHE_MODES, help="cache use (default: use)")
    query.add_argument("--sample", type=int, help="sample index: with --temperature > 0, cache each sample apart")
    query.add_argument("--json", action="store_true", help="print the tool's structured result")
    query.set_defaults(func=cmd_query)

    models = sub.add_parser("models", help="list providers and whether each is configured")
    models.add_argument("--json", action="store_true")
    models.set_defaults(func=cmd_models)

    ev = _add_eval_parser(sub)  # eval: see cmd_eval

    for command in (serve, query, models, ev):
        command.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    _prepare_environment()
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        # `ai-gateway query ... | head`: the reader left; that is not an error worth a traceback.
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        # Ctrl-C outside a command's own handling (while starting, or after an eval's summary): the exit code a
        # shell expects, not a traceback and a death by signal that scripts see as -2.
        print("ai-gateway: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
