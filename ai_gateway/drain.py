"""Graceful shutdown of the HTTP transport: a SIGTERM lets the calls in flight answer before the server exits.

On the first SIGTERM (or Ctrl-C) the server *drains* before uvicorn is told anything:

- it keeps accepting connections, because a client whose call is in flight opens a new one to fetch the tool's
  output schema once the answer arrives (both the mcp SDK and fastmcp do), and a refused connection lost an answer
  the server had already sent;
- ``/health`` answers 503 ``draining``, so a load balancer stops routing to it;
- a new tool call is refused at once with an error saying the server is shutting down (retry elsewhere);
- the calls in flight answer, for up to the grace period; those left then are cut, each answering with an error
  that says so, and their provider requests are dropped.

Then uvicorn's own exit runs: it stops accepting connections and closes the idle ones. sse-starlette would close
every stream the moment uvicorn is told to exit; its own drain is turned off, and the streams left (idle
notification streams) are closed once the calls have answered. A second signal cuts the calls at once; a second
Ctrl-C also exits at once.

From the same handle on uvicorn's server, ``serve_http`` also says when the socket is bound, and on which port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

from fastmcp import FastMCP
from fastmcp.exceptions import ToolError
from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext

log = logging.getLogger(__name__)

POLL_S = 0.1  # how soon a signal, or uvicorn's start, is noticed
CUT_ANSWER_S = 5.0  # how long the calls cut at the end of the grace have to send their error
# Once the calls have answered, how long the server stays quiet but open before it exits: a client that got an
# answer asks for the tool's output schema right after it, and that request must still be served.
LINGER_S = 1.0
SIGNALS = (signal.SIGINT, signal.SIGTERM)

Handler = Callable[[int, FrameType | None], Any]


class Drain(Middleware):
    """Counts the MCP requests being handled; once draining, refuses new tool calls and can cut those in flight."""

    def __init__(self) -> None:
        self.count = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.draining = False
        self.last_done = 0.0  # loop time the last request ended
        self._cut_reason = ""
        self._cuts: set[asyncio.Timeout] = set()

    @classmethod
    def of(cls, server: FastMCP) -> Drain | None:
        return next((m for m in server.middleware if isinstance(m, cls)), None)

    async def on_request(self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]) -> Any:
        self.count += 1
        self.idle.clear()
        try:
            return await call_next(context)
        finally:
            self.count -= 1
            self.last_done = asyncio.get_running_loop().time()
            if not self.count:
                self.idle.set()

    async def quiet(self, linger_s: float, longest_s: float) -> None:
        """Return once no request has been handled for ``linger_s``, or after ``longest_s`` whatever comes."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + longest_s
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(give_up):
                while True:
                    await self.idle.wait()
                    quiet_for = loop.time() - self.last_done
                    if not self.count and quiet_for >= linger_s:
                        return
                    await asyncio.sleep(linger_s - quiet_for)  # then look again: a request may have come and gone

    async def on_call_tool(self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]) -> Any:
        if self.draining:
            raise ToolError("the server is shutting down and takes no new call; send it again (to another replica)")
        cut: asyncio.Timeout | None = None
        try:
            async with asyncio.timeout(None) as cut:
                self._cuts.add(cut)
                return await call_next(context)
        except TimeoutError:
            if cut is None or not cut.expired():
                raise
            raise ToolError(
                f"the server is shutting down: this call was stopped {self._cut_reason} (its provider requests too); "
                "send it again (to another replica)"
            ) from None
        finally:
            if cut is not None:
                self._cuts.discard(cut)

    def cut(self, reason: str) -> int:
        """Stop every tool call in flight: each answers with the shutdown error, saying ``reason`` ("after the 30s
        grace period"). Returns how many were cut."""
        self._cut_reason = reason
        now = asyncio.get_running_loop().time()
        for timeout in self._cuts:
            timeout.reschedule(now)
        return len(self._cuts)


async def serve_http(
    server: FastMCP, grace_s: float, on_listening: Callable[[int], None] | None = None, **run_options: Any
) -> None:
    """``server.run_http_async(**run_options)``, draining the calls in flight for up to ``grace_s`` on a signal.

    ``on_listening`` gets the port once the socket is bound: the one asked for, or the one the system chose for
    port 0. A server that cannot bind never calls it (uvicorn logs why and exits with SystemExit(3))."""
    from sse_starlette.sse import AppStatus

    drain = Drain()
    server.add_middleware(drain)
    AppStatus.disable_automatic_graceful_drain()
    # By the time uvicorn is told to exit the calls have answered (or were cut): only their last bytes are left.
    uvicorn_config = {**run_options.pop("uvicorn_config", {}), "timeout_graceful_shutdown": CUT_ANSWER_S}
    watcher = asyncio.create_task(_watch(drain, grace_s, on_listening), name="drain")
    try:
        await server.run_http_async(uvicorn_config=uvicorn_config, **run_options)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


async def _watch(drain: Drain, grace_s: float, on_listening: Callable[[int], None] | None) -> None:
    # Found once, before the drain puts its own handler in the place it is found.
    exit_uvicorn = await _uvicorn_handler()
    watching = [_drain_on_signal(drain, grace_s, exit_uvicorn)]
    if on_listening is not None:
        watching.append(_when_listening(exit_uvicorn.__self__, on_listening))  # type: ignore[attr-defined]
    await asyncio.gather(*watching)


async def _when_listening(uvicorn_server: Any, on_listening: Callable[[int], None]) -> None:
    while not uvicorn_server.started:  # noqa: ASYNC110 - uvicorn sets a flag and offers no event
        await asyncio.sleep(POLL_S)
    on_listening(uvicorn_server.servers[0].sockets[0].getsockname()[1])


async def _drain_on_signal(drain: Drain, grace_s: float, exit_uvicorn: Handler) -> None:
    from sse_starlette.sse import AppStatus

    received: list[tuple[int, FrameType | None]] = []

    def on_signal(sig: int, frame: FrameType | None) -> None:
        # A signal handler runs between two bytecodes of the loop's thread: it only records; the loop acts.
        received.append((sig, frame))
        if len(received) > 1 and sig == signal.SIGINT:  # a second Ctrl-C: uvicorn exits at once
            exit_uvicorn(sig, frame)  # (its first call starts the exit, the second forces it)
            exit_uvicorn(sig, frame)

    previous = {sig: signal.signal(sig, on_signal) for sig in SIGNALS}
    try:
        while not received:  # noqa: ASYNC110 - a signal handler can only set a flag here
            await asyncio.sleep(POLL_S)
        drain.draining = True
        answering = drain.count
        if answering:
            log.warning("shutting down: waiting up to %gs for %d call(s) in flight", grace_s, drain.count)
        deadline = asyncio.get_running_loop().time() + grace_s
        while drain.count and len(received) == 1 and asyncio.get_running_loop().time() < deadline:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(drain.idle.wait(), POLL_S)
        reason = f"after the {grace_s:g}s grace period" if len(received) == 1 else "on a second signal"
        if cut := drain.cut(reason):
            log.warning("shutting down: %d call(s) still in flight are cut, %s", cut, reason)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(drain.idle.wait(), CUT_ANSWER_S)
        if answering and len(received) == 1:
            await drain.quiet(LINGER_S, CUT_ANSWER_S)
    finally:
        for sig, handler in previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, handler)
    exit_uvicorn(*received[0])  # uvicorn now stops accepting connections and closes the idle ones
    AppStatus.should_exit = True  # and the streams left open: idle notification streams


async def _uvicorn_handler() -> Handler:
    """uvicorn's signal handler, once its server has installed it (a method of its server, which sets its exit)."""
    while True:
        handler = signal.getsignal(signal.SIGTERM)
        if callable(handler) and hasattr(getattr(handler, "__self__", None), "should_exit"):
            return handler  # type: ignore[return-value]
        await asyncio.sleep(POLL_S)
