"""The one outbound HTTP client every adapter shares.

httpx's API is kept (adapters and respx speak it), but by default its transport
is aiohttp's: httpx's own connection pool collapses under concurrency on small
machines (measured here: ~400 req/s and p99 ~310 ms at 32 in flight, against
~1,500 req/s and p99 ~47 ms on the aiohttp transport).

The HTTP stack (httpx, aiohttp) takes ~200 ms to import and is not needed to
list tools, so it is imported, and the client built, by the warm-up's thread
shortly after start (``warmup.py``), or when the first provider call needs the
client: ``ai-gateway serve`` answers ``tools/list`` sooner.
"""

from __future__ import annotations

import threading
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


class SharedClient:
    """The shared client, built by the warm-up (or on first use) and closed by whoever owns this (the server's
    lifespan)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client: httpx.AsyncClient | None = None
        self._building = threading.Lock()

    def __call__(self) -> httpx.AsyncClient:
        return self._client if self._client is not None else self.prepare()

    def prepare(self) -> httpx.AsyncClient:
        """Build the client now. The warm-up does it in its thread: building it reads the CA bundle for the TLS
        context (~30 ms, ~120 ms on a loaded 2-core machine), which on the loop held every Redis operation in
        flight past its timeout. A provider call that comes while the thread builds it waits for that one (the
        rest of the build, as it would have taken inline) rather than build a second."""
        with self._building:
            if self._client is None:
                self._client = build_client(self._settings)
            return self._client

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
