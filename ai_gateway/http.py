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
from collections.abc import Callable
from typing import TYPE_CHECKING

from ai_gateway import __version__
from ai_gateway.settings import Settings

if TYPE_CHECKING:
    import asyncio

    import httpx

USER_AGENT = f"ai-gateway/{__version__}"


def build_client(settings: Settings) -> httpx.AsyncClient:
    """A client with explicit timeouts and pool limits; the caller must ``aclose()`` it."""
    import httpx

    limits = httpx.Limits(
        # Never fewer connections than the attempts the limiter lets run: those past the pool waited in it for up to
        # the connect timeout, then failed as provider timeouts and opened every circuit of providers that answered.
        max_connections=max(settings.max_connections, settings.max_concurrency),
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


def import_http_stack() -> None:
    """The modules the first provider call needs (~200 ms): the transport, and the breaker's library
    (which pulls in redis)."""
    import importlib

    for module in ("ai_gateway.transport", "pybreaker"):
        importlib.import_module(module)


class WarmUp:
    """Heavy imports of one server, done in a worker thread: started with a delay by its lifespan,
    hurried by the first query that needs them.

    Two parts: the price table (genai-prices, ~200 ms), which every answered query needs, then the
    HTTP stack (~200 ms), which only a provider call needs. A query that arrives before what it needs
    is loaded waits for it, with the loop free; done inline, the imports blocked the loop for ~0.5 s
    on a busy machine, and every Redis operation in flight timed out behind them. The delay lets the
    server answer its client's handshake and tool listing before the thread competes with it for the
    interpreter. A replay (no provider call) can say it does not want the HTTP stack at all.
    """

    def __init__(self) -> None:
        import asyncio

        self.prices_ready = asyncio.Event()
        self.http_ready = asyncio.Event()
        self._http_wanted = True
        self._hurry = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def ready(self, *, http: bool = True) -> bool:
        return (self.http_ready if http else self.prices_ready).is_set()

    def start(self, delay_s: float = WARM_UP_DELAY_S) -> None:
        import asyncio

        if self._task is None:
            self._task = asyncio.create_task(self._run(delay_s), name="warm-up")

    async def _run(self, delay_s: float) -> None:
        import asyncio

        from ai_gateway.pricing import preload

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._hurry.wait(), delay_s)
        if not self.prices_ready.is_set():
            await self._step(preload, self.prices_ready)
        if self._http_wanted and not self.http_ready.is_set():
            await self._step(import_http_stack, self.http_ready)

    @staticmethod
    async def _step(load: Callable[[], None], ready: asyncio.Event) -> None:
        import asyncio

        try:
            await asyncio.to_thread(load)
        except Exception as exc:  # the first call will import inline (and report whatever is broken)
            logging.getLogger(__name__).warning("warm-up failed (%s)", type(exc).__name__)
        ready.set()

    def skip_prices(self) -> None:
        """Pricing this run's models needs no table (overrides, unpriced, or remembered: price_memo.py)."""
        self.prices_ready.set()

    def skip_http(self) -> None:
        """This run calls no provider (a replay): load the HTTP stack only if a query asks for it after all."""
        self._http_wanted = False

    async def wait(self, *, http: bool = True) -> None:
        """Until the price table (and, with ``http``, the HTTP stack) is loaded, starting now if need be."""
        import asyncio

        ready = self.http_ready if http else self.prices_ready
        if ready.is_set():
            return
        self._http_wanted = self._http_wanted or http
        if self._task is None or self._task.done():  # never started, or finished without what we need
            self._task = asyncio.create_task(self._run(0), name="warm-up")
        self._hurry.set()
        await ready.wait()

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
