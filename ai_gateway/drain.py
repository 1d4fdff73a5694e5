"""Graceful shutdown of the HTTP transport: a SIGTERM lets the calls in flight answer before the server exits.

uvicorn alone would wait for open responses, but every MCP answer travels on a server-sent-event stream, and
sse-starlette closes all of them the moment uvicorn is told to exit: a call in flight lost its answer (the client
got a broken stream) while its provider request, already billed, was dropped. Here sse-starlette's own drain is
turned off; once uvicorn is exiting (it no longer accepts connections), the streams are closed only when no MCP
request is being handled any more, or when the grace period is over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any

from fastmcp import FastMCP
from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext

log = logging.getLogger(__name__)

POLL_S = 0.2  # how soon a SIGTERM is noticed


class InFlight(Middleware):
    """Counts the MCP requests being handled; ``idle`` is set while there are none."""

    def __init__(self) -> None:
        self.count = 0
        self.idle = asyncio.Event()
        self.idle.set()

    async def on_request(self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]) -> Any:
        self.count += 1
        self.idle.clear()
        try:
            return await call_next(context)
        finally:
            self.count -= 1
            if not self.count:
                self.idle.set()


async def serve_http(server: FastMCP, grace_s: float, **run_options: Any) -> None:
    """``server.run_http_async(**run_options)``, draining the calls in flight for up to ``grace_s`` on exit."""
    from sse_starlette.sse import AppStatus

    in_flight = InFlight()
    server.add_middleware(in_flight)
    AppStatus.disable_automatic_graceful_drain()
    uvicorn_config = {**run_options.pop("uvicorn_config", {}), "timeout_graceful_shutdown": grace_s + 5}
    watcher = asyncio.create_task(_close_streams_when_drained(in_flight, grace_s), name="drain")
    try:
        await server.run_http_async(uvicorn_config=uvicorn_config, **run_options)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


async def _close_streams_when_drained(in_flight: InFlight, grace_s: float) -> None:
    from sse_starlette.sse import AppStatus

    # uvicorn's exit is a plain attribute its signal handler sets, with nothing to await: looked at five times a second.
    while not _uvicorn_exiting():  # noqa: ASYNC110
        await asyncio.sleep(POLL_S)
    if in_flight.count:
        log.warning("shutting down: waiting up to %gs for %d call(s) in flight", grace_s, in_flight.count)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(in_flight.idle.wait(), grace_s)
    if in_flight.count:
        log.warning("shutting down: %d call(s) still in flight after %gs are cut", in_flight.count, grace_s)
    AppStatus.should_exit = True  # closes the streams left: idle notification streams, calls past the grace


def _uvicorn_exiting() -> bool:
    """uvicorn's signal handler is a method of its server: the only public way to its ``should_exit``."""
    owner = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    return bool(getattr(owner, "should_exit", False))
