"""The one outbound HTTP client every adapter shares.

httpx's API is kept (adapters and respx speak it), but by default its transport
is aiohttp's: httpx's own connection pool collapses under concurrency on small
machines (measured here: ~400 req/s and p99 ~310 ms at 32 in flight, against
~1,500 req/s and p99 ~47 ms on the aiohttp transport).

The HTTP stack (httpx, aiohttp) takes ~200 ms to import and is not needed to
list tools, so it is imported when the first provider call needs the client:
``ai-gateway serve`` answers ``tools/list`` sooner.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

from ai_gateway import __version__
from ai_gateway.settings import Settings

if TYPE_CHECKING:
    import httpx

USER_AGENT = f"ai-gateway/{__version__}"


def build_client(settings: Settings) -> httpx.AsyncClient:
    """A client with explicit timeouts and pool limits; the caller must ``aclose()`` it."""
    import httpx

    limits = httpx.Limits(
        max_connections=settings.max_connections,
        max_keepalive_connections=settings.max_keepalive_connections,
        keepalive_expiry=settings.keepalive_expiry_s,
    )
    # The pool timeout bounds the wait for a free connection; the tool's own
    # deadline bounds the whole call, so this only guards against a stuck pool.
    timeout = httpx.Timeout(
        connect=settings.connect_timeout_s,
        read=settings.read_timeout_s,
        write=settings.connect_timeout_s,
        pool=settings.connect_timeout_s,
    )
    transport: httpx.AsyncBaseTransport
    if settings.http_transport == "aiohttp":
        from ai_gateway.transport import ExactAiohttpTransport

        transport = ExactAiohttpTransport(limits=limits, trust_env=True)
    else:
        transport = httpx.AsyncHTTPTransport(limits=limits)
    return httpx.AsyncClient(
        transport=transport,
        timeout=timeout,
        headers={"user-agent": USER_AGENT},
        follow_redirects=False,
    )


WARM_UP_DELAY_S = 0.5


async def warm_up(delay_s: float = WARM_UP_DELAY_S) -> None:
    """Import the HTTP stack (and the breaker library) and load the price table in a worker thread,
    so the first provider call does not stall the loop.

    Building the client imports ~200 ms of modules, and pricing the first answer
    ~200 ms more (genai-prices and its table); done inline, either would block
    every other request on the event loop during the first call. The short delay
    lets the server answer its client's first handshake and tool listing before
    the import thread competes with it for the interpreter.
    """
    import asyncio
    import importlib

    from ai_gateway.pricing import preload

    await asyncio.sleep(delay_s)
    for module in ("ai_gateway.transport", "pybreaker"):  # the breaker's library pulls in redis
        await asyncio.to_thread(importlib.import_module, module)
    await asyncio.to_thread(preload)


class WarmUp:
    """The warm-up of one server: started with a delay by its lifespan, hurried by the first query.

    A query that arrives before the warm-up finished waits for it (the imports run in a thread,
    the loop stays free) rather than importing inline: inline, the imports blocked the loop for
    ~0.5 s on a busy machine, and every Redis operation in flight timed out behind them.
    """

    def __init__(self) -> None:
        import asyncio

        self.done = False
        self._hurry = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self, delay_s: float = WARM_UP_DELAY_S) -> None:
        import asyncio

        if self._task is None:
            self._task = asyncio.create_task(self._run(delay_s), name="warm-up-http")

    async def _run(self, delay_s: float) -> None:
        import asyncio

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._hurry.wait(), delay_s)
        try:
            await warm_up(0)
        except Exception as exc:  # the first call will import inline (and report whatever is broken)
            logging.getLogger(__name__).warning("warm-up failed (%s)", type(exc).__name__)
        self.done = True

    async def wait(self) -> None:
        """Until the warm-up is done (starting it now if nobody did)."""
        import asyncio

        if self.done:
            return
        self.start(0)
        self._hurry.set()
        assert self._task is not None
        await asyncio.shield(self._task)

    async def aclose(self) -> None:
        import asyncio

        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.wait([self._task])


class SharedClient:
    """The shared client, built on first use and closed by whoever owns this (the server's lifespan)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client: httpx.AsyncClient | None = None

    def __call__(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = build_client(self._settings)
        return self._client

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
