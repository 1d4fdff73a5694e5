"""The stdio transport, with a stdin read that Ctrl-C and SIGTERM can interrupt.

The mcp SDK reads stdin in a worker thread, and a blocked read cannot be cancelled: Ctrl-C did nothing until the
client wrote a line or closed stdin (modelcontextprotocol/python-sdk#3551). Read through the event loop instead,
waiting for stdin is one more cancellable await, and shutdown runs in order: the calls in flight are cancelled, the
server's lifespan closes the gateway (pending cache writes flushed), the process exits.

Only pipes, sockets and terminals can be watched by the event loop. A regular file (``serve < requests.jsonl``)
never blocks a read for long, so the SDK's own reader keeps it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import stat
import sys
from collections.abc import Iterator

from fastmcp import FastMCP
from fastmcp.server.context import reset_transport, set_transport
from mcp.server.stdio import stdio_server

log = logging.getLogger(__name__)

# One JSON-RPC message per line. Beyond this a line is dropped (and logged), as the SDK would drop a line it cannot
# parse; it also bounds what is read ahead of the server, which the SDK's line-at-a-time thread never did.
MAX_LINE_BYTES = 256 * 1024 * 1024


async def serve_stdio(server: FastMCP) -> None:
    """Serve MCP over this process's stdin and stdout until stdin closes or the process is told to stop.

    A first Ctrl-C or SIGTERM (what a client sends a server that outlives its closed stdin) ends stdin as the
    client closing it would, so the SDK's own shutdown runs: calls in flight are cancelled, their streams closed.
    A second signal cancels everything at once. Ctrl-C then surfaces as ``KeyboardInterrupt``; SIGTERM is an
    ordinary exit.
    """
    with _stdin_lines() as lines:
        serving = asyncio.ensure_future(_serve(server, lines))
        received: list[signal.Signals] = []

        def on_signal(signum: signal.Signals) -> None:
            received.append(signum)
            if len(received) == 1 and lines is not None:
                log.info("%s: shutting down", signum.name)
                lines.end()
            else:
                serving.cancel()

        loop = asyncio.get_running_loop()
        handled: list[signal.Signals] = []
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):  # platforms without loop signal handlers keep Python's
                loop.add_signal_handler(signum, on_signal, signum)
                handled.append(signum)
        try:
            await serving
        except asyncio.CancelledError:
            if not (received and serving.cancelled()):
                raise
        finally:
            for signum in handled:
                loop.remove_signal_handler(signum)
    if signal.SIGINT in received:
        raise KeyboardInterrupt


async def _serve(server: FastMCP, lines: StdinLines | None) -> None:
    # What fastmcp's run_stdio_async does, with our stdin: it takes no streams of its own.
    token = set_transport("stdio")
    try:
        async with server._lifespan_manager(), stdio_server(stdin=lines) as (read, write):  # type: ignore[arg-type]
            await server._mcp_server.run(read, write, server._mcp_server.create_initialization_options())
    finally:
        reset_transport(token)


class StdinLines:
    """stdin's lines, decoded as the SDK decodes them, read by the event loop from a private descriptor."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._reader: asyncio.StreamReader | None = None
        self._transport: asyncio.ReadTransport | None = None
        self._ended = False

    def __aiter__(self) -> StdinLines:
        return self

    async def __anext__(self) -> str:
        if self._ended and self._reader is None:
            raise StopAsyncIteration
        reader = self._reader or await self._connect()
        while True:
            try:
                line = await reader.readline()
            except ValueError:
                # Over MAX_LINE_BYTES: the reader dropped what it held; the rest of the line reaches the SDK as
                # unparseable, and is dropped there.
                log.warning("stdin: dropped a message longer than %d bytes", MAX_LINE_BYTES)
                continue
            if not line:
                raise StopAsyncIteration
            return line.decode("utf-8", errors="replace")

    async def _connect(self) -> asyncio.StreamReader:
        loop = asyncio.get_running_loop()
        self._reader = asyncio.StreamReader(limit=MAX_LINE_BYTES)
        pipe = os.fdopen(self._fd, "rb", buffering=0, closefd=False)  # the descriptor is closed by _stdin_lines
        self._transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(self._reader), pipe)
        if self._ended:  # a signal came while connecting
            self._transport.close()
        return self._reader

    def end(self) -> None:
        """End the lines here, as if the client had closed stdin; what it sends from now on is not read."""
        self._ended = True
        if self._transport is not None:
            self._transport.close()  # the reader gets end-of-file (lines already received are still read)


@contextlib.contextmanager
def _stdin_lines() -> Iterator[StdinLines | None]:
    """stdin, moved to a private descriptor the event loop can watch; None where the SDK's reader must do.

    fd 0 points at the null device meanwhile, as the SDK's own claim does, so nothing else in the process reads the
    protocol's bytes.
    """
    if sys.platform == "win32":  # no pipe watching on Windows' event loops
        yield None
        return
    import fcntl

    try:
        fd = fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, 3)
    except OSError:
        yield None
        return
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)):
        os.close(fd)
        yield None
        return
    # The loop makes the descriptor non-blocking, and the flag belongs to the file it shares with the process that
    # started us (a terminal's shell): it is put back on the way out.
    was_blocking = os.get_blocking(fd)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    lines = StdinLines(fd)
    try:
        yield lines
    finally:
        lines.end()
        with contextlib.suppress(OSError):
            os.set_blocking(fd, was_blocking)
            os.dup2(fd, 0)
        os.close(fd)
