"""A real Redis for the cache tests (never a mock), and a Redis that accepts connections but never answers.

How a test gets one:

* :func:`shared_redis` (session): whatever answers ``PING`` on 127.0.0.1:6379, used on DB 15 with a key
  namespace per test (``test-<uuid>``, deleted after with SCAN+DEL); else a ``redis-server`` started here on a
  free port; else the test FAILS with :data:`INSTALL_HINT` (it never skips or passes silently).
* :class:`RedisProcess`: always a private ``redis-server`` (tests that stop it, restart it or set maxmemory).
* :class:`HungRedis`: an asyncio TCP server that accepts every connection and never sends a byte.

Waits here are bounded readiness polls, never "wait and see".
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Self

import pytest
import redis

HOST = "127.0.0.1"
DEFAULT_PORT = 6379
SHARED_DB = 15  # not 0, so a developer's own data on the default DB is never in the way
INSTALL_HINT = (
    "`redis-server` is not on PATH: install it (Debian/Ubuntu: `apt-get install redis-server`; "
    "macOS: `brew install redis`) and run again"
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def answers_ping(port: int, host: str = HOST, timeout: float = 0.3) -> bool:
    """True when a Redis that needs no password answers PING on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def redis_server_binary(why: str = "this test starts a redis-server of its own") -> str:
    """The path of ``redis-server``, or FAIL the test (never skip) saying why it is needed and how to install it."""
    path = shutil.which("redis-server")
    if path is None:
        pytest.fail(f"{why}, but {INSTALL_HINT}", pytrace=False)
    return path


class RedisProcess:
    """A ``redis-server`` child process on 127.0.0.1 (no persistence), stoppable and restartable on its port."""

    def __init__(self, port: int | None = None, why: str | None = None) -> None:
        self.binary = redis_server_binary(*([why] if why else []))
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 10.0) -> RedisProcess:
        """Start on ``self.port`` and return once PING answers (bounded poll)."""
        assert not self.running, "already running"
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                HOST,
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--protected-mode",
                "yes",
                "--loglevel",
                "warning",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        stop_at = time.monotonic() + timeout
        while not answers_ping(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode} on port {self.port}")
            if time.monotonic() > stop_at:
                self.stop()
                raise RuntimeError(f"redis-server did not answer PING on port {self.port} within {timeout}s")
            time.sleep(0.01)  # readiness poll interval
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate (SIGTERM), wait, kill if needed; always reaped. Idempotent."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def client(self) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, db=0, socket_timeout=5)


@dataclass
class RedisTarget:
    """Where a test's cache lives in Redis: a server, a DB and a key namespace of its own."""

    port: int
    db: int
    namespace: str = field(default_factory=lambda: f"test-{uuid.uuid4().hex[:12]}")
    password: str | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{HOST}:{self.port}/{self.db}"

    def settings(self) -> dict[str, str | float]:
        """The gateway settings that point its cache here.

        With a 1 s operation timeout: on a loaded CI machine the 0.1 s default can expire, and the
        cache then fails open (a miss, a provider call) by design. Tests of timeouts set their own.
        """
        return {"redis_url": self.url, "cache_namespace": self.namespace, "cache_op_timeout_s": 1.0}

    def client(self) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, db=self.db, password=self.password, socket_timeout=5)

    def stored_keys(self) -> list[bytes]:
        with self.client() as r:
            return sorted(r.scan_iter(match=f"{self.namespace}:*", count=1000))

    def items(self) -> dict[bytes, bytes | None]:
        """Every key under the namespace with its raw value."""
        with self.client() as r:
            return {k: r.get(k) for k in r.scan_iter(match=f"{self.namespace}:*", count=1000)}

    def cleanup(self) -> None:
        with self.client() as r:
            keys = list(r.scan_iter(match=f"{self.namespace}:*", count=1000))
            if keys:
                r.delete(*keys)


@contextlib.contextmanager
def shared_redis() -> Iterator[tuple[int, int]]:
    """(port, db) of a Redis for the whole session: the one on :6379 if it answers, else one started here."""
    if answers_ping(DEFAULT_PORT):
        yield DEFAULT_PORT, SHARED_DB
        return
    server = RedisProcess(why=f"no Redis answers on {HOST}:{DEFAULT_PORT}").start()
    try:
        yield server.port, 0
    finally:
        server.stop()


class _LocalServer:
    """A TCP server of the test's own on a free port: started, then closed with every connection it held."""

    def __init__(self) -> None:
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        # Bounded: Python 3.11's wait_closed waits for every accepted transport to detach, and one the
        # client side abandoned mid-handshake (seen when a test failed with a connection half set up) can
        # keep it waiting past the test's own timeout, turning a clear failure into a hang.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await self._server.wait_closed()


class HungRedis(_LocalServer):
    """A TCP server that accepts connections and never answers: a Redis that hangs."""

    def __init__(self) -> None:
        super().__init__()
        self.accepted = 0

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.append(writer)  # held open, never written to


class RedisProxy(_LocalServer):
    """A proxy to a real Redis. Setting ``silent`` swallows every reply from then on, on every connection:
    a Redis (or a network) gone quiet without closing anything."""

    mute_first = False

    def __init__(self, port: int) -> None:
        super().__init__()
        self.upstream_port = port
        self.connections = 0
        self.silent = False

    def url(self, db: int) -> str:
        return f"redis://{HOST}:{self.port}/{db}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        mute = self.mute_first and self.connections == 1
        self._writers.append(writer)  # before any await: closing the proxy must close every accepted connection
        up_reader, up_writer = await asyncio.open_connection(HOST, self.upstream_port)
        self._writers.append(up_writer)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, drop: Callable[[], bool]) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await src.read(65536):
                    if not drop():
                        dst.write(data)
                        await dst.drain()

        for task in (
            asyncio.create_task(pipe(reader, up_writer, lambda: False)),
            asyncio.create_task(pipe(up_reader, writer, lambda: mute or self.silent)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


class MuteFirstConnection(RedisProxy):
    """A proxy to a real Redis that swallows every reply on its first connection only.

    To the gateway that connection looks hung while Redis itself (any other connection,
    such as the backend's PING probe) answers normally: a one-off timeout, not an outage.
    """

    mute_first = True
