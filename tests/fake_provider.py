"""A fake LLM provider over real HTTP, speaking the wire formats of four vendors.

Used three ways:

* in-process by integration tests (``async with FakeProvider() as fake``), same event loop;
* by tests that start the gateway as a subprocess, which connects to ``fake.url`` over TCP;
* as its own process by ``bench/`` and subprocess tests::

      python -m tests.fake_provider --port 0 --scenario 'slow={"delay_ms": 50}'

  prints ``READY http://127.0.0.1:PORT`` once listening and serves until SIGTERM/SIGINT;
  ``/_admin/*`` endpoints configure and inspect it from outside.

Endpoints: OpenAI ``POST /v1/chat/completions``, Anthropic ``POST /v1/messages``, Gemini
``POST /v1beta/models/{model}:generateContent`` and Ollama ``POST /api/chat`` (``stream: false``).
Behaviour is chosen per model name by a :class:`Scenario`; errors are always rendered in the
dialect of the endpoint that was hit. The answer defaults to an echo of the last user text.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import json
import math
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import NoneType
from typing import Any

from aiohttp import web

DIALECTS = ("openai", "anthropic", "gemini", "ollama")
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_ids = itertools.count(1)

# ---------------------------------------------------------------------------- vendor errors
# kind -> default HTTP status; the two vendor-specific exceptions are in _error_status().
ERROR_KINDS: dict[str, int] = {
    "rate_limited": 429,
    "quota_exhausted": 429,
    "overloaded": 503,
    "server_error": 500,
    "auth": 401,
    "bad_request": 400,
    "context_length": 400,
    "not_found": 404,
}
# Bodies copied from what the vendors really send ({model} is substituted).
_OPENAI_ERRORS: dict[str, tuple[str, str | None, str]] = {  # kind -> (type, code, message)
    "rate_limited": ("requests", "rate_limit_exceeded", "Rate limit reached for {model} on requests per min (RPM)."),
    "quota_exhausted": ("insufficient_quota", "insufficient_quota",
                        "You exceeded your current quota, please check your plan and billing details."),
    "overloaded": ("server_error", None, "The server is overloaded or not ready yet."),
    "server_error": ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    "auth": ("invalid_request_error", "invalid_api_key", "Incorrect API key provided: sk-fake****."),
    "bad_request": ("invalid_request_error", None, "Invalid request."),
    "context_length": ("invalid_request_error", "context_length_exceeded",
                       "This model's maximum context length is 128000 tokens. However, your messages resulted in "
                       "130000 tokens. Please reduce the length of the messages."),
    "not_found": ("invalid_request_error", "model_not_found",
                  "The model `{model}` does not exist or you do not have access to it."),
}
_ANTHROPIC_ERRORS: dict[str, tuple[str, str]] = {  # kind -> (type, message)
    "rate_limited": ("rate_limit_error", "Number of requests has exceeded your per-minute rate limit."),
    # Anthropic reports an empty credit balance as a 400, not a 429.
    "quota_exhausted": ("invalid_request_error", "Your credit balance is too low to access the Anthropic API."),
    "overloaded": ("overloaded_error", "Overloaded"),
    "server_error": ("api_error", "Internal server error"),
    "auth": ("authentication_error", "invalid x-api-key"),
    "bad_request": ("invalid_request_error", "Invalid request."),
    "context_length": ("invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum"),
    "not_found": ("not_found_error", "model: {model}"),
}
_GEMINI_ERRORS: dict[str, tuple[str, str]] = {  # kind -> (status, message)
    "rate_limited": ("RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."),
    "quota_exhausted": ("RESOURCE_EXHAUSTED",
                        "You exceeded your current quota, please check your plan and billing details."),
    "overloaded": ("UNAVAILABLE", "The model is overloaded. Please try again later."),
    "server_error": ("INTERNAL", "An internal error has occurred. Please retry or report in "
                                 "https://developers.generativeai.google/guide/troubleshooting"),
    "auth": ("PERMISSION_DENIED", "API key not valid. Please pass a valid API key."),
    "bad_request": ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    "context_length": ("INVALID_ARGUMENT",
                       "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576)."),
    "not_found": ("NOT_FOUND", "models/{model} is not found for API version v1beta, "
                               "or is not supported for generateContent."),
}
_OLLAMA_ERRORS: dict[str, str] = {
    "rate_limited": "rate limit exceeded",
    "quota_exhausted": "quota exhausted",
    "overloaded": "server busy, please try again.  maximum pending requests exceeded",
    "server_error": "llama runner process has terminated: exit status 2",
    "auth": "unauthorized",
    "bad_request": "invalid request",
    "context_length": "input length exceeds maximum context length",
    "not_found": 'model "{model}" not found, try pulling it first',
}


def _error_status(dialect: str, kind: str) -> int:
    if kind == "overloaded" and dialect == "anthropic":
        return 529
    if kind == "auth" and dialect == "gemini":
        return 403  # Google pairs PERMISSION_DENIED with 403
    if kind == "quota_exhausted" and dialect == "anthropic":
        return 400
    return ERROR_KINDS[kind]


def _kind_for_status(status: int) -> str:
    """The error kind whose body fits an explicit ``fail_status``."""
    if status == 429:
        return "rate_limited"
    if status in (401, 403):
        return "auth"
    if status == 404:
        return "not_found"
    if status in (503, 529):
        return "overloaded"
    return "server_error" if status >= 500 else "bad_request"


def error_body(dialect: str, kind: str, status: int, model: str, message: str | None = None) -> dict[str, Any]:
    """The vendor's error body for ``kind`` (``message`` replaces the stock text)."""
    if dialect == "openai":
        etype, code, text = _OPENAI_ERRORS[kind]
        return {"error": {"message": message or text.format(model=model), "type": etype, "param": None, "code": code}}
    if dialect == "anthropic":
        etype, text = _ANTHROPIC_ERRORS[kind]
        return {"type": "error", "error": {"type": etype, "message": message or text.format(model=model)}}
    if dialect == "gemini":
        gstatus, text = _GEMINI_ERRORS[kind]
        return {"error": {"code": status, "message": message or text.format(model=model), "status": gstatus}}
    return {"error": message or _OLLAMA_ERRORS[kind].format(model=model)}


# ---------------------------------------------------------------------------- scenarios
_FAILURE_FLAGS = ("close_connection", "hang", "malformed", "wrong_content_type")
_NUMBER = (int, float)
# JSON types accepted per field by Scenario.from_dict (bool is rejected where a number is expected).
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "text": (str, NoneType), "delay_ms": _NUMBER, "error_kind": (str, NoneType), "fail_status": (int, NoneType),
    "fail_body": (dict, NoneType), "fail_headers": (dict,), "error_message": (str, NoneType),
    "retry_after": (str, NoneType), "fail_times": (int, NoneType), "hang": (bool,),
    "trickle_ms": (*_NUMBER, NoneType), "malformed": (bool,), "wrong_content_type": (bool,),
    "close_connection": (bool,), "thinking": (int,),
}


@dataclass(frozen=True)
class Scenario:
    """How the fake answers one model. At most one failure mode may be set.

    ``delay_ms`` applies before every answer, failures included. ``fail_times=N`` makes the
    failure happen on the first N calls (counted per model since ``set``) and succeed after;
    ``None`` fails every call. ``trickle_ms`` sends the success body one byte at a time.
    """

    text: str | None = None  # fixed answer; None echoes the last user text
    delay_ms: float = 0
    error_kind: str | None = None  # one of ERROR_KINDS, rendered in the dialect hit
    fail_status: int | None = None  # explicit status (overrides the kind's status)
    fail_body: dict[str, Any] | None = None  # explicit body (overrides the vendor body)
    fail_headers: Mapping[str, str] = field(default_factory=dict)
    error_message: str | None = None
    retry_after: str | None = None  # sent as Retry-After with the error
    fail_times: int | None = None
    hang: bool = False  # never answer; wait for the client to go away
    trickle_ms: float | None = None
    malformed: bool = False  # 200 with a truncated JSON body
    wrong_content_type: bool = False  # 200 text/html, like a proxy's error page
    close_connection: bool = False  # drop the TCP connection without an answer
    # Tokens a reasoning model spends thinking before its answer: they count as output and take from the request's
    # output limit, so a limit at or below them leaves no text at all (finish reason: the vendor's "length").
    thinking: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.delay_ms) and self.delay_ms >= 0):
            raise ValueError(f"delay_ms must be a finite number >= 0, got {self.delay_ms!r}")
        if self.error_kind is not None and self.error_kind not in ERROR_KINDS:
            raise ValueError(f"error_kind must be one of {sorted(ERROR_KINDS)}, got {self.error_kind!r}")
        if self.fail_status is not None and not 400 <= self.fail_status <= 599:
            raise ValueError(f"fail_status must be in 400..599, got {self.fail_status!r}")
        if self.trickle_ms is not None and not (math.isfinite(self.trickle_ms) and self.trickle_ms > 0):
            raise ValueError(f"trickle_ms must be a number > 0, got {self.trickle_ms!r}")
        if self.fail_times is not None and self.fail_times < 0:
            raise ValueError(f"fail_times must be >= 0, got {self.fail_times!r}")
        if self.thinking < 0:
            raise ValueError(f"thinking must be >= 0, got {self.thinking!r}")
        modes = [f for f in _FAILURE_FLAGS if getattr(self, f)]
        if self.error_kind is not None or self.fail_status is not None:
            modes.append("error")
        if len(modes) > 1:
            raise ValueError(f"at most one failure mode per scenario, got {modes}")
        if self.fail_times is not None and not modes:
            raise ValueError("fail_times needs a failure mode (error_kind, fail_status, hang, ...)")
        error_only = ("fail_body", "error_message", "retry_after", "fail_headers")
        if "error" not in modes and any(getattr(self, f) for f in error_only):
            raise ValueError(f"{', '.join(error_only)} need error_kind or fail_status")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.fail_headers.items()):
            raise ValueError("fail_headers must map strings to strings")

    @property
    def failure(self) -> str | None:
        """The failure mode ("error", "hang", ...) or None for a success scenario."""
        if self.error_kind is not None or self.fail_status is not None:
            return "error"
        return next((f for f in _FAILURE_FLAGS if getattr(self, f)), None)

    @classmethod
    def error(
        cls, kind: str, *, retry_after: str | None = None, times: int | None = None,
        message: str | None = None, delay_ms: float = 0,
    ) -> Scenario:
        """A vendor error: e.g. ``Scenario.error("rate_limited", retry_after="2", times=1)``."""
        return cls(error_kind=kind, retry_after=retry_after, fail_times=times, error_message=message,
                   delay_ms=delay_ms)

    @classmethod
    def from_dict(cls, data: object) -> Scenario:
        """Build from JSON (admin endpoint, CLI); raises ValueError naming the bad field."""
        if not isinstance(data, dict):
            raise ValueError(f"scenario must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_FIELD_TYPES))
        if unknown:
            raise ValueError(f"unknown scenario field(s) {unknown}; allowed: {sorted(_FIELD_TYPES)}")
        for name, value in data.items():
            allowed = _FIELD_TYPES[name]
            if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
                names = " or ".join("null" if t is NoneType else t.__name__ for t in allowed)
                raise ValueError(f"scenario field {name!r} must be {names}, got {value!r}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "fail_headers": dict(self.fail_headers)}


# ---------------------------------------------------------------------------- request records
@dataclass(slots=True, eq=False)
class Call:
    """One provider request as the fake saw it."""

    dialect: str
    path: str
    model: str
    headers: dict[str, str]  # lowercased keys (empty when record_calls=False)
    body: Any  # parsed JSON request body
    started_at: float  # time.monotonic()
    # pending | hung | ok | error | malformed | wrong_content_type | closed | disconnected | shutdown
    outcome: str = "pending"
    status: int | None = None
    finished_at: float | None = None

    @property
    def json(self) -> Any:
        return self.body


def _text_of(content: Any) -> str:
    """Text of an OpenAI/Anthropic/Ollama message content: a string or a list of text blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(b["text"] for b in content if isinstance(b, dict) and isinstance(b.get("text"), str))
    return ""


def _last_user_text(items: list[Any], key: str) -> str:
    for item in reversed(items):
        if isinstance(item, dict) and item.get("role", "user") == "user":
            if key == "parts":  # Gemini
                return _text_of(item.get("parts"))
            return _text_of(item.get("content"))
    return ""


def _output_limit(dialect: str, body: dict[str, Any]) -> int | None:
    """The most tokens the request lets the model generate, where each vendor takes it."""
    if dialect == "gemini":
        config = body.get("generationConfig")
        limit = config.get("maxOutputTokens") if isinstance(config, dict) else None
    elif dialect == "ollama":
        options = body.get("options")
        limit = options.get("num_predict") if isinstance(options, dict) else None
    elif dialect == "openai":
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
    else:
        limit = body.get("max_tokens")
    return limit if isinstance(limit, int) and limit > 0 else None


def _success(dialect: str, model: str, text: str, n_in: int, n_out: int, *, cut: bool = False) -> dict[str, Any]:
    """A vendor's success body; ``cut``: the answer stopped at the output limit (each vendor's own reason)."""
    n = next(_ids)
    if dialect == "openai":
        return {"id": f"chatcmpl-fake{n}", "object": "chat.completion", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "length" if cut else "stop"}],
                "usage": {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}}
    if dialect == "anthropic":
        return {"id": f"msg_fake{n}", "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": text}], "stop_reason": "max_tokens" if cut else "end_turn",
                "stop_sequence": None, "usage": {"input_tokens": n_in, "output_tokens": n_out}}
    if dialect == "gemini":
        return {"candidates": [{"content": {"parts": [{"text": text}], "role": "model"},
                                "finishReason": "MAX_TOKENS" if cut else "STOP", "index": 0}],
                "usageMetadata": {"promptTokenCount": n_in, "candidatesTokenCount": n_out,
                                  "totalTokenCount": n_in + n_out},
                "modelVersion": model, "responseId": f"fake{n}"}
    return {"model": model, "created_at": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime()),
            "message": {"role": "assistant", "content": text}, "done": True, "done_reason": "length" if cut else "stop",
            "total_duration": 1, "prompt_eval_count": n_in, "eval_count": n_out}


def _json_response(status: int, payload: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=_encode(payload).encode(), content_type="application/json",
                        headers=headers)


class _TrackingServer(web.Server):
    """aiohttp's low-level server, told about every TCP connection opening and closing."""

    def __init__(self, handler: Any, on_change: Callable[[int], None], **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._on_change = on_change

    def connection_made(self, handler: Any, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        self._on_change(+1)

    def connection_lost(self, handler: Any, exc: BaseException | None = None) -> None:
        super().connection_lost(handler, exc)
        self._on_change(-1)


# ---------------------------------------------------------------------------- the server
class FakeProvider:
    """The fake server. ``await start()`` binds ``host`` (free port by default); ``url`` is its base URL."""

    def __init__(
        self, default: Scenario | None = None, *, host: str = "127.0.0.1", port: int = 0, record_calls: bool = True,
    ) -> None:
        self._initial_default = default or Scenario()
        self._default = self._initial_default
        self._scenarios: dict[str, Scenario] = {}
        self._attempts: dict[str, int] = {}  # calls per model since its scenario was set (for fail_times)
        self._counts: dict[str, int] = {}
        self._host, self._port = host, port
        self._record = record_calls  # False keeps memory flat in long benchmarks (counts only)
        self.calls: list[Call] = []
        self.disconnects: list[Call] = []
        self.open_connections = 0
        self.active_requests = 0
        self._tasks: set[asyncio.Task[Any]] = set()  # tasks running a provider request
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._runner: web.ServerRunner | None = None
        self._stopping = False

    # -- lifecycle
    async def start(self) -> None:
        # handler_cancellation: aiohttp cancels the handler when the peer goes away, which is
        # how a client disconnect becomes observable (it does not do so by default since 3.9).
        server = _TrackingServer(self._handle, self._on_connection, handler_cancellation=True, access_log=None)
        self._runner = web.ServerRunner(server, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, backlog=2048)
        await site.start()
        self._port = self._runner.addresses[0][1]
        self._stopping = False

    async def stop(self) -> None:
        if self._runner is None:
            return
        self._stopping = True  # requests cut short from here on are "shutdown", not client disconnects
        for task in list(self._tasks):
            task.cancel()
        await self._runner.cleanup()
        self._runner = None
        self._notify()  # pending waits see the final state (or time out with a clear message)

    async def __aenter__(self) -> FakeProvider:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._runner is None:
            raise RuntimeError("FakeProvider is not started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    # -- configuration
    def set(self, model: str, scenario: Scenario | None) -> None:
        """Use ``scenario`` for ``model`` on every dialect (None: back to the default)."""
        if scenario is None:
            self._scenarios.pop(model, None)
        else:
            self._scenarios[model] = scenario
        self._attempts.pop(model, None)

    def set_default(self, scenario: Scenario) -> None:
        self._default = scenario
        self._attempts.clear()

    def scenario_for(self, model: str) -> Scenario:
        return self._scenarios.get(model, self._default)

    def reset(self) -> None:
        """Forget scenarios, calls and counters (connections stay as they are)."""
        self._scenarios.clear()
        self._default = self._initial_default
        self._attempts.clear()
        self._counts.clear()
        self.calls.clear()
        self.disconnects.clear()

    # -- inspection
    def calls_for(self, model: str) -> list[Call]:
        return [c for c in self.calls if c.model == model]

    def count(self, model: str | None = None) -> int:
        """Provider requests received for ``model`` (all models if None); kept even without records."""
        return sum(self._counts.values()) if model is None else self._counts.get(model, 0)

    # A timeout argument (ASYNC109) keeps test call sites short and the failure message specific.
    async def wait_for_calls(self, n: int, model: str | None = None, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Resolve once ``n`` requests (for ``model``) have reached the fake."""
        await self._wait(lambda: self.count(model) >= n, timeout, lambda: f"{n} call(s), got {self.count(model)}")

    async def wait_for_disconnects(self, n: int, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Resolve once ``n`` clients have gone away before their answer was complete."""
        await self._wait(lambda: len(self.disconnects) >= n, timeout,
                         lambda: f"{n} disconnect(s), got {len(self.disconnects)}")

    async def wait_idle(self, timeout: float = 5.0, *, connections: bool = False) -> None:  # noqa: ASYNC109
        """Resolve when no request is being handled (and, if asked, no TCP connection is open)."""
        def idle() -> bool:
            return self.active_requests == 0 and (not connections or self.open_connections == 0)
        await self._wait(idle, timeout, lambda: f"idle, {self.active_requests} active request(s), "
                                                f"{self.open_connections} open connection(s)")

    async def _wait(self, pred: Callable[[], bool], timeout: float, what: Callable[[], str]) -> None:  # noqa: ASYNC109
        # Event-based: _notify() re-checks every predicate when state changes; no polling.
        if pred():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (pred, fut)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(timeout):
                await fut
        except TimeoutError:
            raise TimeoutError(f"FakeProvider: timed out after {timeout}s waiting for {what()}") from None
        finally:
            self._waiters.remove(entry)

    def _notify(self) -> None:
        for pred, fut in self._waiters:
            if not fut.done() and pred():
                fut.set_result(None)

    def _on_connection(self, delta: int) -> None:
        self.open_connections += delta
        if self._waiters:
            self._notify()

    # -- request handling
    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if path.startswith("/_admin/"):
            return await self._admin(request)
        if request.method != "POST":
            return _json_response(404, {"error": f"no route {request.method} {path}"})
        gemini_model = None
        if path == "/v1/chat/completions":
            dialect = "openai"
        elif path == "/v1/messages":
            dialect = "anthropic"
        elif path == "/api/chat":
            dialect = "ollama"
        elif path.startswith("/v1beta/models/") and path.endswith(":generateContent"):
            dialect, gemini_model = "gemini", path[len("/v1beta/models/"):-len(":generateContent")]
        else:
            return _json_response(404, {"error": f"no route POST {path}"})

        try:
            body = json.loads(await request.read())
        except ValueError:
            body = None
        model = gemini_model if dialect == "gemini" else (body.get("model") if isinstance(body, dict) else None)
        problem = self._invalid(dialect, body, model)
        if problem is not None:  # answered like the vendor would, without touching scenarios
            model = model if isinstance(model, str) else ""
            return _json_response(400, error_body(dialect, "bad_request", 400, model, problem))
        assert isinstance(model, str) and isinstance(body, dict)

        self._counts[model] = self._counts.get(model, 0) + 1
        headers = {k.lower(): v for k, v in request.headers.items()} if self._record else {}
        call = Call(dialect, path, model, headers, body if self._record else None, time.monotonic())
        if self._record:
            self.calls.append(call)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.active_requests += 1
        if self._waiters:
            self._notify()
        try:
            return await self._answer(request, dialect, model, body, call)
        except asyncio.CancelledError:
            self._gone(call)
            raise
        except ConnectionResetError:  # a trickled write hit a closed socket; aiohttp ignores the rest
            self._gone(call)
            return web.Response(status=499)
        finally:
            call.finished_at = time.monotonic()
            self._tasks.discard(task)
            self.active_requests -= 1
            if self._waiters:
                self._notify()

    def _gone(self, call: Call) -> None:
        """The request ended before its answer was complete: record who ended it."""
        if call.outcome not in ("pending", "hung"):
            return  # e.g. "closed": the fake itself dropped the connection
        call.outcome = "shutdown" if self._stopping else "disconnected"
        if call.outcome == "disconnected":
            self.disconnects.append(call)

    @staticmethod
    def _invalid(dialect: str, body: Any, model: Any) -> str | None:
        if not isinstance(body, dict):
            return "request body must be a JSON object"
        if not isinstance(model, str) or not model:
            return "model: field required"
        key = "contents" if dialect == "gemini" else "messages"
        if not isinstance(body.get(key), list) or not body[key]:
            return f"{key}: must be a non-empty list"
        if dialect == "anthropic" and not isinstance(body.get("max_tokens"), int):
            return "max_tokens: Field required"  # the real API rejects requests without it
        if body.get("stream") is True or (dialect == "ollama" and body.get("stream") is not False):
            return "fake provider: only non-streaming requests are supported (send \"stream\": false)"
        return None

    async def _answer(
        self, request: web.BaseRequest, dialect: str, model: str, body: dict[str, Any], call: Call,
    ) -> web.StreamResponse:
        scenario = self._scenarios.get(model, self._default)
        failure = scenario.failure
        if failure is not None:  # counted on arrival so concurrent calls fail in arrival order
            attempt = self._attempts.get(model, 0)
            self._attempts[model] = attempt + 1
            if scenario.fail_times is not None and attempt >= scenario.fail_times:
                failure = None
        if scenario.delay_ms:
            await asyncio.sleep(scenario.delay_ms / 1000)

        if failure in ("close_connection", "hang"):
            call.outcome = "closed" if failure == "close_connection" else "hung"
            if failure == "close_connection" and request.transport is not None:
                request.transport.close()
            # Wait for the cancellation that connection_lost (client, or our close) delivers.
            await asyncio.get_running_loop().create_future()
        if failure == "error":
            kind = scenario.error_kind or _kind_for_status(scenario.fail_status or 500)
            status = scenario.fail_status or _error_status(dialect, kind)
            payload = scenario.fail_body or error_body(dialect, kind, status, model, scenario.error_message)
            headers = dict(scenario.fail_headers)
            if scenario.retry_after is not None:
                headers["Retry-After"] = scenario.retry_after
            return self._done(call, "error", _json_response(status, payload, headers))
        if failure == "malformed":
            truncated = b'{"id": "truncated", "choices": [{"mess'
            resp = web.Response(status=200, body=truncated, content_type="application/json")
            return self._done(call, "malformed", resp)
        if failure == "wrong_content_type":
            html = "<html><body><h1>502 Bad Gateway</h1></body></html>"
            return self._done(call, "wrong_content_type", web.Response(status=200, text=html, content_type="text/html"))

        prompt = _last_user_text(body["contents"] if dialect == "gemini" else body["messages"],
                                 "parts" if dialect == "gemini" else "content")
        text = prompt if scenario.text is None else scenario.text
        # A word is a token here; an answer longer than what the request's output limit leaves after thinking is
        # cut there, as vendors do.
        words, limit = text.split(), _output_limit(dialect, body)
        thought = scenario.thinking if limit is None else min(scenario.thinking, limit)
        room = None if limit is None else limit - thought
        cut = room is not None and len(words) > room
        if cut:
            text, words = " ".join(words[:room]), words[:room]
        payload = _success(dialect, model, text, len(prompt.split()), thought + len(words), cut=cut)
        if scenario.trickle_ms is None:
            return self._done(call, "ok", _json_response(200, payload))
        return await self._trickle(request, _encode(payload).encode(), scenario.trickle_ms, call)

    @staticmethod
    def _done(call: Call, outcome: str, resp: web.Response) -> web.Response:
        call.outcome, call.status = outcome, resp.status
        return resp

    async def _trickle(self, request: web.BaseRequest, data: bytes, every_ms: float, call: Call) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.content_length = len(data)
        call.status = 200
        await resp.prepare(request)  # StreamResponse sends the headers right away
        for i in range(len(data)):
            await asyncio.sleep(every_ms / 1000)
            await resp.write(data[i : i + 1])
        call.outcome = "ok"
        return resp

    # -- admin API (for a fake running in another process)
    async def _admin(self, request: web.BaseRequest) -> web.Response:
        route = (request.method, request.path)
        if route == ("GET", "/_admin/calls"):
            return _json_response(200, {
                "total": self.count(), "counts": dict(self._counts), "disconnects": len(self.disconnects),
                "open_connections": self.open_connections, "active_requests": self.active_requests,
            })
        if route == ("POST", "/_admin/reset"):
            self.reset()
            return _json_response(200, {"ok": True})
        if route == ("POST", "/_admin/scenario"):
            try:
                model, scenario = _parse_admin_scenario(await request.read())
            except ValueError as exc:
                return _json_response(400, {"error": str(exc)})
            if model == "*":
                self.set_default(scenario or self._initial_default)
            else:
                self.set(model, scenario)
            return _json_response(200, {"ok": True, "model": model, "scenario": scenario and scenario.to_dict()})
        return _json_response(404, {"error": f"no admin route {request.method} {request.path}"})


def _parse_admin_scenario(raw: bytes) -> tuple[str, Scenario | None]:
    """``{"model": "m" | "*", "scenario": {...} | null}`` -> (model, scenario); ValueError if invalid."""
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError('body must be a JSON object {"model": ..., "scenario": {...}}')
    unknown = sorted(set(data) - {"model", "scenario"})
    if unknown:
        raise ValueError(f"unknown field(s) {unknown}; allowed: ['model', 'scenario']")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise ValueError('"model" must be a non-empty string ("*" sets the default)')
    if "scenario" not in data:
        raise ValueError('"scenario" is required (an object, or null to clear)')
    return model, None if data["scenario"] is None else Scenario.from_dict(data["scenario"])


# ---------------------------------------------------------------------------- CLI
def _parse_cli_scenario(spec: str) -> tuple[str, Scenario]:
    model, sep, raw = spec.partition("=")
    if not sep or not model:
        raise argparse.ArgumentTypeError(f"expected MODEL=JSON, got {spec!r}")
    try:
        return model, Scenario.from_dict(json.loads(raw))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--scenario {model}: {exc}") from None


async def _serve(host: str, port: int, scenarios: list[tuple[str, Scenario]]) -> None:
    # Records are off: only counts are reachable from outside, and benchmarks run long.
    fake = FakeProvider(host=host, port=port, record_calls=False)
    for model, scenario in scenarios:
        if model == "*":
            fake.set_default(scenario)
        else:
            fake.set(model, scenario)
    await fake.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY {fake.url}", flush=True)
    try:
        await stop.wait()
    finally:
        await fake.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fake LLM provider (OpenAI, Anthropic, Gemini, Ollama wire formats)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (see the READY line)")
    parser.add_argument("--scenario", action="append", default=[], type=_parse_cli_scenario, metavar="MODEL=JSON",
                        help='per-model behaviour, e.g. slow={"delay_ms": 50}; MODEL "*" sets the default')
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.host, args.port, args.scenario))
    return 0


if __name__ == "__main__":
    sys.exit(main())
