"""What the genai-prices table says about the models in use, remembered on disk between processes.

Loading genai-prices takes ~0.1 s of a process's start here (its table is a 1.6 MB module, and it imports an
HTTP client for a price-update feature we never use). That is most of the start-up of a replay
(``ai-gateway eval --cache only``), which otherwise needs only Redis, and it is paid again by every run.
:mod:`ai_gateway.pricing` keeps what it finds in the table for each (price source, model) here, and reads it
back in later processes instead of loading the table.

One JSON file per build of the table (the package's version and its data file's size and modification time),
under ``$XDG_CACHE_HOME/ai-gateway`` (default ``~/.cache/ai-gateway``): upgrading genai-prices starts a new
file, so a remembered price is never older than the table installed. A file that cannot be read, or holds
anything else, is ignored and replaced. Writing is best effort (a read-only home only costs the speed-up).

Prices only, never credentials or prompts; ``AI_GATEWAY_MODEL_PRICES`` never comes here (it is read on every
start). A model whose price changes on a date or by the time of day is remembered with each price's condition.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LAYOUT = 1  # of the file; a change starts new files (it is part of the build's name)
# Models remembered per file. Each new one rewrites the file, so callers inventing model ids must not make it (and
# that write) grow without end; past this, a new model is priced from the table in each process that meets it.
MAX_REMEMBERED = 2048


@dataclass(frozen=True, slots=True)
class Remembered:
    """The table's answer for one model: where its prices come from, and the prices (None: it has none)."""

    source: str  # e.g. "genai-prices openai/gpt-4o-mini"
    # None: the table has no price for it. Else [[condition, prices], ...]: a condition (null: always; "2026-03-13":
    # from that date on; ["00:30:00", "16:30:00"]: daily, UTC) and price key -> USD per million tokens (a
    # number, or [base, [[start, price], ...]] for tiers); the last plan whose condition holds applies.
    plans: list[list[Any]] | None


class PriceMemo:
    """The memo of one table build, read from its file on first use."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._file: Path | None = None
        self._entries: dict[str, dict[str, Any]] | None = None  # source -> model -> {"source", "plans"}
        self._writable = True

    @classmethod
    def default(cls) -> PriceMemo:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return cls(Path(base) / "ai-gateway")

    def get(self, source: str, model: str) -> Remembered | None:
        """What the table said about ``model`` under ``source``, or None when it was never asked."""
        entry = self._load().get(source, {}).get(model)
        if not isinstance(entry, dict) or not isinstance(entry.get("source"), str):
            return None
        plans = entry.get("plans")
        if plans is not None and not isinstance(plans, list):
            return None
        return Remembered(entry["source"], plans)

    def put(self, source: str, model: str, remembered: Remembered) -> None:
        entries = self._load()
        if model not in entries.get(source, {}) and sum(map(len, entries.values())) >= MAX_REMEMBERED:
            return
        entries.setdefault(source, {})[model] = {"source": remembered.source, "plans": remembered.plans}
        if self._writable:
            self._write(source, model)

    def _load(self) -> dict[str, dict[str, Any]]:
        if self._entries is None:
            self._entries = {}
            path = self._path()
            if path is not None:
                self._entries = _read(path)
        return self._entries

    def _path(self) -> Path | None:
        if self._file is None:
            build = table_build()
            if build is None:
                self._writable = False
                return None
            self._file = self._directory / f"prices-{build}.json"
        return self._file

    def _write(self, source: str, model: str) -> None:
        """This process's entries merged into the file's (another process may have added some), atomically."""
        path = self._path()
        if path is None or self._entries is None:
            return
        tmp: Path | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            merged = _read(path)
            for name, models in self._entries.items():
                merged.setdefault(name, {}).update(models)
            self._entries = merged
            fd, name = tempfile.mkstemp(dir=path.parent, prefix=".prices-", suffix=".json")
            tmp = Path(name)
            with os.fdopen(fd, "w") as f:
                json.dump({"layout": LAYOUT, "entries": merged}, f, separators=(",", ":"))
            os.replace(tmp, path)
            tmp = None
            for old in path.parent.glob("prices-*.json"):  # earlier builds' files: no process reads them again
                if old != path:
                    old.unlink(missing_ok=True)
        except OSError as exc:
            self._writable = False  # once: a read-only or full disk costs only the speed-up
            log.info("cannot remember prices in %s (%s): each start will load the price table", path.parent, exc)
        else:
            log.debug("remembered the table's price of %s under %s in %s", model, source, path)
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)


def table_build() -> str | None:
    """Names this installation of the genai-prices table, without importing it (None if it is not installed)."""
    try:
        spec = importlib.util.find_spec("genai_prices")
        if spec is None or not spec.submodule_search_locations:
            return None
        data = Path(next(iter(spec.submodule_search_locations))) / "data.py"
        stat = data.stat()
        version = importlib.metadata.version("genai-prices")
    except (OSError, ValueError, ImportError, importlib.metadata.PackageNotFoundError):
        return None
    identity = f"{LAYOUT}|{version}|{stat.st_size}|{stat.st_mtime_ns}"
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def _read(path: Path) -> dict[str, dict[str, Any]]:
    try:
        content = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    if not isinstance(content, dict) or content.get("layout") != LAYOUT or not isinstance(content.get("entries"), dict):
        return {}
    return {name: models for name, models in content["entries"].items() if isinstance(models, dict)}
