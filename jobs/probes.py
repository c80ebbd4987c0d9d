"""Calls to a dependency that a request must not wait on for long: readiness checks
(jobs/health.py) and the figures /metrics reads from the broker (jobs/metrics.py).

- Each call runs in a thread of its own, and a caller waits for it at most a timeout.
- At most one call of each probe is in flight per process. A caller that finds one running (a
  dependency that hangs) waits for that call instead of starting another, so a hung dependency
  holds one thread, not one per request, and concurrent requests share one call.
- A result is reused for `cache_seconds` after it came in, so any number of pollers cost about
  one.
"""

import concurrent.futures
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Call:
    started: float  # time.monotonic()
    future: concurrent.futures.Future


class BoundedProbe(Generic[T]):
    """One probe in this process: its latest result, and its call in flight if there is one.

    `function` is the call; `failed(error)` turns an exception it raised into a result;
    `timed(result, seconds)` adds how long the call took. Its thread is named
    `<thread_prefix>-<name>`."""

    def __init__(
        self,
        name: str,
        function: Callable[[], T],
        *,
        failed: Callable[[Exception], T],
        cache_seconds: Callable[[], float],
        thread_prefix: str,
        timed: Callable[[T, float], T] = lambda result, seconds: result,
    ) -> None:
        self.name = name
        self.function = function
        self.failed = failed
        self.timed = timed
        self.cache_seconds = cache_seconds
        self.thread_name = f"{thread_prefix}-{name}"
        self._lock = threading.Lock()
        self._call: Call | None = None
        self._last: T | None = None
        self._last_at = -math.inf  # time.monotonic() when the latest result came in

    def result_or_call(self) -> T | Call:
        """A result recent enough to reuse, or the call that will give one: the call in flight,
        or, when there is none, a new one."""
        with self._lock:
            if time.monotonic() - self._last_at < self.cache_seconds():
                return self._last
            if self._call is None:
                self._call = Call(started=time.monotonic(), future=concurrent.futures.Future())
                # A daemon thread: one stuck in a hung dependency must not hold up the exit of
                # the process (a gunicorn worker restarting).
                threading.Thread(
                    target=self._execute,
                    args=(self._call.future,),
                    name=self.thread_name,
                    daemon=True,
                ).start()
            return self._call

    def _execute(self, future: concurrent.futures.Future) -> None:
        started = time.monotonic()
        try:
            result = self.function()
        except Exception as error:  # any failure of the dependency is the probe's answer
            result = self.failed(error)
        result = self.timed(result, time.monotonic() - started)
        with self._lock:
            self._call, self._last, self._last_at = None, result, time.monotonic()
        future.set_result(result)


def calls_awaited(pending: Iterable[T | Call], *, timeout: float) -> None:
    """Wait until the calls among `pending` have answered, or the youngest is `timeout` old.

    A call that is `timeout` old without an answer has failed. Waiting until the youngest call
    is that old bounds the wait by one timeout, and a caller that finds only calls already that
    old (a dependency hanging since earlier callers) does not wait at all."""
    calls = [item for item in pending if isinstance(item, Call)]
    if calls:
        deadline = max(call.started for call in calls) + timeout
        concurrent.futures.wait(
            [call.future for call in calls], timeout=max(0.0, deadline - time.monotonic())
        )
