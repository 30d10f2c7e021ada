"""Per-call time limits for many concurrent provider calls, checked by one shared timer.

``asyncio.timeout`` arms a timer of its own on every call and disarms it on the way
out; on uvloop each is a libuv timer started and stopped. A worker makes one provider
call per command, almost all answered in milliseconds against limits of seconds, and
measured in-process the per-call timers were ~7% of a command's CPU. Here a call only
registers its deadline; one timer, running while calls are in flight, cancels the calls
past theirs at a granularity of ``tick`` seconds (a limit may overrun by up to a tick).

Inside the limit the semantics are ``asyncio.timeout``'s: the overdue task is cancelled,
and the ``CancelledError`` that ends the block becomes a ``TimeoutError``, unless the
task was also cancelled from elsewhere meanwhile (then the cancel propagates).
"""

from __future__ import annotations

import asyncio
from types import TracebackType

__all__ = ["CallDeadlines"]


class CallDeadlines:
    """Deadlines of the calls in flight on one event loop, checked every ``tick`` seconds."""

    def __init__(self, tick: float = 0.1) -> None:
        if tick <= 0:
            raise ValueError("tick must be positive")
        self.tick = tick
        self._active: dict[_Limit, None] = {}  # insertion-ordered set
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def limit(self, seconds: float) -> _Limit:
        """``with deadlines.limit(s):`` around an await; raises TimeoutError when overdue."""
        return _Limit(self, seconds)

    def _add(self, limit: _Limit, loop: asyncio.AbstractEventLoop) -> None:
        if loop is not self._loop:  # a new loop (tests): the old one's state is void
            self._active.clear()
            self._timer = None
            self._loop = loop
        self._active[limit] = None
        if self._timer is None:
            self._timer = loop.call_at(loop.time() + self.tick, self._check)

    def _remove(self, limit: _Limit) -> None:
        self._active.pop(limit, None)

    def _check(self) -> None:
        self._timer = None
        loop = self._loop
        if loop is None or not self._active:
            return
        now = loop.time()
        for limit in [lim for lim in self._active if lim.expires <= now]:
            del self._active[limit]
            limit.expire()
        if self._active:
            self._timer = loop.call_at(now + self.tick, self._check)


class _Limit:
    """One call's deadline (a sync context manager: cheaper than an async one)."""

    __slots__ = ("_cancelling", "_expired", "_owner", "_seconds", "_task", "expires")

    def __init__(self, owner: CallDeadlines, seconds: float) -> None:
        self._owner = owner
        self._seconds = seconds
        self._expired = False
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0
        self.expires = 0.0

    def __enter__(self) -> _Limit:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a call deadline must be used inside a task")
        loop = task.get_loop()
        self._task = task
        self._cancelling = task.cancelling()
        self.expires = loop.time() + self._seconds
        self._owner._add(self, loop)
        return self

    def expire(self) -> None:
        # The timer runs between task steps, so the task is suspended inside the block:
        # the cancel is delivered there.
        if self._task is not None and not self._task.done():
            self._expired = True
            self._task.cancel()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._owner._remove(self)
        # Take back our cancel; if none other is pending, the call timed out.
        if (
            self._expired
            and self._task is not None
            and self._task.uncancel() <= self._cancelling
            and exc_type is asyncio.CancelledError
        ):
            raise TimeoutError from exc
