"""Logging to stderr (stdout belongs to the stdio transport), with no key and no traceback.

Every record, ours or a library's, passes through one formatter that redacts
anything shaped like an API key (plus the keys the gateway actually holds) and
reduces an exception to its type and message, never a traceback.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

from ai_gateway.secrets import redact


class SafeFormatter(logging.Formatter):
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._secrets = tuple(s for s in secrets if s)

    def formatException(self, ei: object) -> str:
        exc = ei[1] if isinstance(ei, tuple) else None
        return f"({type(exc).__name__})" if exc is not None else ""

    def formatStack(self, stack_info: str) -> str:
        return ""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record), self._secrets)


def configure(level: str = "warning", secrets: Iterable[str] = ()) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SafeFormatter(secrets))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # fastmcp installs its own (rich) handler unless told not to; route it through ours.
    for name in ("fastmcp", "mcp", "uvicorn", "uvicorn.error", "uvicorn.access"):
        lib = logging.getLogger(name)
        for old in lib.handlers[:]:
            lib.removeHandler(old)
        lib.propagate = True
