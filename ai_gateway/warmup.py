"""Heavy start-up work of one server (the price table, the HTTP stack and client), done off the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

WARM_UP_DELAY_S = 0.5


def import_http_stack() -> None:
    """The modules the first provider call needs (~200 ms): the transport, and the breaker's library
    (which pulls in redis)."""
    for module in ("ai_gateway.transport", "pybreaker"):
        importlib.import_module(module)


class WarmUp:
    """Heavy start-up work of one server, done in a worker thread: started with a delay by its lifespan,
    hurried by the first query that needs it.

    Two parts: the price table (genai-prices, ~200 ms), which every answered query needs, then the
    HTTP stack (~200 ms), which only a provider call needs. Then ``prepare_http`` builds the shared
    client (its TLS context reads the CA bundle: ~30 ms, ~120 ms on a loaded 2-core machine), which no
    query waits for (see ``SharedClient.prepare``). A query that arrives before what it needs is loaded
    waits for it, with the loop free; done inline, the imports blocked the loop for ~0.5 s on a busy
    machine, and every Redis operation in flight timed out behind them. The delay lets the server
    answer its client's handshake and tool listing before the thread competes with it for the
    interpreter. A replay (no provider call) can say it does not want the HTTP stack at all.
    """

    def __init__(self, prepare_http: Callable[[], object] | None = None) -> None:
        self._prepare_http = prepare_http
        self.prices_ready = asyncio.Event()
        self.http_ready = asyncio.Event()
        self._http_wanted = True
        self._hurry = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def ready(self, *, http: bool = True) -> bool:
        return (self.http_ready if http else self.prices_ready).is_set()

    def start(self, delay_s: float = WARM_UP_DELAY_S) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(delay_s), name="warm-up")

    async def _run(self, delay_s: float) -> None:
        from ai_gateway.pricing import preload

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._hurry.wait(), delay_s)
        if not self.prices_ready.is_set():
            await self._step(preload, self.prices_ready)
        if self._http_wanted and not self.http_ready.is_set():
            await self._step(import_http_stack, self.http_ready)
            if self._prepare_http is not None:
                # After the HTTP stack is declared ready: a query that turns out a cache hit never needs the
                # client and must not wait for it. A provider call that comes first waits on the client's lock.
                await self._step(self._prepare_http, None)

    @staticmethod
    async def _step(load: Callable[[], object], ready: asyncio.Event | None) -> None:
        try:
            await asyncio.to_thread(load)
        except Exception as exc:  # the first call that needs it does it inline (and reports whatever is broken)
            log.warning("warm-up failed (%s)", type(exc).__name__)
        if ready is not None:
            ready.set()

    def skip_prices(self) -> None:
        """Pricing this run's models needs no table (overrides, unpriced, or remembered: price_memo.py)."""
        self.prices_ready.set()

    def skip_http(self) -> None:
        """This run calls no provider (a replay): load the HTTP stack only if a query asks for it after all."""
        self._http_wanted = False

    async def wait(self, *, http: bool = True) -> None:
        """Until the price table (and, with ``http``, the HTTP stack) is loaded, starting now if need be."""
        ready = self.http_ready if http else self.prices_ready
        if ready.is_set():
            return
        self._http_wanted = self._http_wanted or http
        if self._task is None or self._task.done():  # never started, or finished without what we need
            self._task = asyncio.create_task(self._run(0), name="warm-up")
        self._hurry.set()
        await ready.wait()

    async def finished(self) -> None:
        """Until every step started so far is done (the client built too)."""
        if self._task is not None:
            await asyncio.wait([self._task])

    async def aclose(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.wait([self._task])
