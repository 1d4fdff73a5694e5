"""The aiohttp transport for httpx, with connection errors mapped by what really happened."""

from __future__ import annotations

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport


class ExactAiohttpTransport(AiohttpTransport):
    """httpx-aiohttp 0.2 turns every aiohttp connection error (refused, DNS failure,
    server hung up) into ``httpx.ConnectTimeout``, so a refused connection would be
    reported, and retried, as a timeout. The aiohttp cause says which it was.
    """

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await super().handle_async_request(request)
        except httpx.ConnectTimeout as exc:
            cause = exc.__cause__
            if isinstance(cause, aiohttp.ClientConnectorError):
                raise httpx.ConnectError(str(exc), request=request) from cause
            if isinstance(cause, aiohttp.ServerDisconnectedError):
                raise httpx.RemoteProtocolError(str(exc), request=request) from cause
            if isinstance(cause, aiohttp.ClientOSError):  # reset by peer and friends
                raise httpx.ReadError(str(exc), request=request) from cause
            raise
