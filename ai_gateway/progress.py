"""Progress notifications of one ``query_models`` call, for a client that asked for them.

A client that resets its request timeout on progress (the MCP TypeScript SDK's ``resetTimeoutOnProgress``)
otherwise gave up on a slow consensus or a slow model while the gateway was still within the call's own
deadline. Two kinds of notification, never more often than needed:

- a model finished while others are still awaited: ``progress`` is the number of requested models done
  (cached answers included), ``total`` the number requested. The last model's finish is not sent: the
  answer follows at once. So a one-model call, the common case, sends none of these.
- a heartbeat, after ``interval_s`` without any notification: ``progress`` is the models done plus the
  share of the call's deadline spent (always below the next whole number), and the message names the
  models still awaited. The spec wants ``progress`` to grow with every notification; this does, and only a
  model's answer reaches the next whole number.

A notification that cannot be sent (the client went away) ends the reporting; it never fails the call.
Notifications are sent by one reporter task, started only when there is one to send, so a model's own
task never waits on the client. Nothing here outlives the call: that task is cancelled and awaited when the
call answers (a notification still queued then is dropped: the answer says more).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType

from ai_gateway.outcome import ModelTarget, Outcome, never
from ai_gateway.resilience.clock import Deadline
from ai_gateway.strategies.base import CallModel

log = logging.getLogger(__name__)

# (progress, total, message): the signature of fastmcp's Context.report_progress
ProgressSink = Callable[[float, float | None, str], Awaitable[None]]
HEARTBEAT_CEILING = 0.999  # a heartbeat's share of the deadline stays below the next model's whole number
MIN_INTERVAL_S = 0.001  # each heartbeat then waits on the loop: a smaller interval spun it, starving every call


class QueryProgress:
    def __init__(
        self, send: ProgressSink, targets: Sequence[ModelTarget], deadline: Deadline, interval_s: float | None
    ) -> None:
        self._send = send
        self._targets = targets
        self._total = len(targets)
        self._deadline = deadline
        self._interval_s = None if interval_s is None else max(interval_s, MIN_INTERVAL_S)
        self._done: set[str] = set()  # model ids with a final outcome (a second chance does not count twice)
        self._running: Counter[str] = Counter()
        self._pending: deque[tuple[float, str]] = deque()  # finished models' notifications, not sent yet
        self._wake: asyncio.Event | None = None  # made with the reporter: most calls never need one
        self._last = -1.0  # the last progress value sent
        self._quiet = False  # a heartbeat had nothing new to say (its share at the ceiling): wait for a model
        self._silent_since = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._reporter: asyncio.Task[None] | None = None
        self._broken = False

    async def __aenter__(self) -> QueryProgress:
        if self._interval_s is not None:
            loop = asyncio.get_running_loop()
            self._silent_since = loop.time()
            # A timer, not a task: a fast call (a cache hit) then costs no task to start, cancel and await.
            self._timer = loop.call_later(self._interval_s, self._start_reporter)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._reporter is not None:
            self._reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reporter

    def watch(self, call: CallModel) -> CallModel:
        """``call``, reporting each model that finishes. One model's finish is its answer: nothing to watch."""
        return _Watched(call, self) if self._total > 1 else call

    # -- events (no waiting: a model's task returns its outcome at once) ----------------

    def started(self, target: ModelTarget) -> None:
        self._running[target.id] += 1

    def stopped(self, target: ModelTarget) -> None:
        self._running[target.id] -= 1
        if self._running[target.id] <= 0:
            del self._running[target.id]

    def finished(self, outcome: Outcome) -> None:
        """A model's outcome came back to the strategy; cancelled ones are not news (the call is deciding).

        Only queued: sent by the reporter task. Sent from the model's own task, the notification delayed the
        outcome, and a strategy deciding meanwhile cancelled that task and lost an answer already paid for.
        """
        if outcome.status not in ("ok", "error") or outcome.target.id in self._done:
            return
        self._done.add(outcome.target.id)
        done = len(self._done)
        if done < self._total and not self._broken:
            self._pending.append((done, f"{_describe(outcome)} ({done} of {self._total} models done)"))
            self._start_reporter()
            assert self._wake is not None
            self._wake.set()

    def answered_from_cache(self, outcomes: dict[int, Outcome]) -> None:
        """Cached answers count as done; they arrive together at the start, before anything worth a notification."""
        self._done.update(outcome.target.id for outcome in outcomes.values())

    # -- the reporter task ------------------------------------------------------------------

    def _start_reporter(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._reporter is None:
            self._wake = asyncio.Event()
            self._reporter = asyncio.create_task(self._report(), name="query-progress")

    async def _report(self) -> None:
        loop, wake = asyncio.get_running_loop(), self._wake
        assert wake is not None
        while not self._broken:
            if self._pending:
                if await self._notify(*self._pending.popleft()):
                    self._quiet = False
                continue
            wake.clear()
            if self._interval_s is None or self._quiet:
                wait_s = None
            else:
                wait_s = self._silent_since + self._interval_s - loop.time()
            if wait_s is None or wait_s > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait_s):
                        await wake.wait()
                continue
            self._quiet = not await self._notify(*self._heartbeat())

    def _heartbeat(self) -> tuple[float, str]:
        total_s = self._deadline.total_s
        spent_s = total_s - self._deadline.remaining()
        share = min(max(spent_s / total_s, 0.0), HEARTBEAT_CEILING)
        running = self._running if self._total > 1 else [self._targets[0].id]  # one model: not watched
        waiting = ", ".join(sorted(running)) or "the next model"
        done = len(self._done)
        if self._total == 1:
            of = "no answer yet"
        elif done >= self._total:  # first_available's second chances: every model failed once, one retries
            of = "every model failed once; retrying"
        else:
            of = f"{done} of {self._total} models done"
        message = f"waiting for {waiting} ({spent_s:.1f} s of {total_s:g} s; {of})"
        # Never past total (a retry after every model failed): still below the last model's whole number.
        return min(done, self._total - 1) + share, message

    async def _notify(self, progress: float, message: str) -> bool:
        """Send one notification; False when it is not sent (no larger than the last, or the client is gone)."""
        if progress <= self._last:
            return False
        try:
            await self._send(progress, self._total, message)
        except Exception as exc:  # the client's trouble (it went away): the call goes on without progress
            self._broken = True
            log.debug("progress notification not sent (%s); no more for this call", type(exc).__name__)
            return False
        self._last = progress
        self._silent_since = asyncio.get_running_loop().time()
        return True


def _describe(outcome: Outcome) -> str:
    model = outcome.target.id
    if outcome.error is not None:
        return f"{model} failed ({outcome.error.code})"
    if outcome.cached:
        return f"{model} answered from the cache"
    if outcome.latency_s is None:
        return f"{model} answered"
    latency_s = outcome.latency_s
    return f"{model} answered in " + (f"{latency_s * 1000:.0f} ms" if latency_s < 1 else f"{latency_s:.1f} s")


class _Watched:
    """A CallModel that tells its QueryProgress when each model starts, stops and finishes."""

    def __init__(self, call: CallModel, progress: QueryProgress) -> None:
        self._call = call
        self._progress = progress

    async def __call__(
        self,
        target: ModelTarget,
        can_fail_over: Callable[[], bool] = never,
        *,
        hedge: bool = False,
        raise_cancel: bool = False,
        resume: Outcome | None = None,
    ) -> Outcome:
        self._progress.started(target)
        try:
            outcome = await self._call(target, can_fail_over, hedge=hedge, raise_cancel=raise_cancel, resume=resume)
        finally:
            self._progress.stopped(target)
        self._progress.finished(outcome)
        return outcome

    def available(self, target: ModelTarget) -> bool:
        return self._call.available(target)

    async def from_cache(self, targets: Sequence[ModelTarget]) -> dict[int, Outcome]:
        outcomes = await self._call.from_cache(targets)
        self._progress.answered_from_cache(outcomes)
        return outcomes
