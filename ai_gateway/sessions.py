"""The HTTP transport's MCP sessions: how long an idle one is kept, and how many may be open at once.

The MCP SDK's session manager keeps a session until its client ends it (DELETE) or it has been idle for its
timeout, and refuses a new one (503, "Too many open sessions") once its maximum are open. Each open session holds
about 45 KB here, so clients that crash or never close theirs pile up memory until the timeout: 10,000 of them,
the SDK's maximum, held ~450 MB for 30 minutes, its timeout. fastmcp's ``run_http_async`` passes neither limit
on; ``SessionLimits`` sets both on the app it builds, from the gateway's settings, and counts the open sessions for
``/health``. Stateless HTTP has no sessions, and stdio one, for the life of the process: neither is touched.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastmcp import FastMCP
from fastmcp.server.http import StreamableHTTPASGIApp


@dataclass(slots=True)
class SessionLimits:
    idle_timeout_s: float
    max_sessions: int
    _endpoint: StreamableHTTPASGIApp | None = None  # of the app built last: the one serving

    def install(self, server: FastMCP) -> None:
        """Make every HTTP app ``server`` builds keep these limits."""
        build: Callable[..., Any] = server.http_app

        def http_app(*args: Any, **kwargs: Any) -> Any:
            kwargs["session_idle_timeout"] = self.idle_timeout_s  # fastmcp passes this one to the SDK itself
            app = build(*args, **kwargs)
            endpoint = _session_endpoint(app)
            if endpoint is None:  # the SSE transport: no session manager
                return app
            self._endpoint = endpoint
            started = app.router.lifespan_context

            @asynccontextmanager
            async def lifespan(instance: Any) -> AsyncIterator[Any]:
                async with started(instance) as state:
                    # Made in that lifespan, afresh for each run: the limit is set on the one serving now.
                    if endpoint.session_manager is not None:
                        endpoint.session_manager.max_sessions = self.max_sessions
                    yield state

            app.router.lifespan_context = lifespan
            return app

        server.http_app = http_app  # type: ignore[method-assign]

    def open_sessions(self) -> int | None:
        """The sessions open now; None when no stateful HTTP app is serving (stdio, stateless HTTP)."""
        manager = self._endpoint.session_manager if self._endpoint is not None else None
        if manager is None or manager.stateless:
            return None
        # The SDK's own table of sessions (fastmcp reads it the same way to end them at shutdown).
        return len(manager._server_instances)


def _session_endpoint(app: Any) -> StreamableHTTPASGIApp | None:
    """The app's MCP endpoint, behind the authentication middleware when a token is required."""
    for route in app.routes:
        endpoint = getattr(route, "endpoint", None)
        while endpoint is not None and not isinstance(endpoint, StreamableHTTPASGIApp):
            endpoint = getattr(endpoint, "app", None)
        if endpoint is not None:
            return endpoint
    return None
