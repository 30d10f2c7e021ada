"""Faust's record delivery without four asyncio tasks per record.

Faust's consumer hands every fetched record to the conductor through
``Service.wait_first(callback(message), suspend_flow.wait())``, so that a rebalance
(flow suspended) abandons a delivery blocked on flow control or a full queue. That call
wraps four awaitables in tasks (callback, suspension, service stopped, service crashed)
and waits on all of them: 40-47 µs per record measured, about 5% of the command
worker's CPU, while nearly every delivery finishes without ever waiting.

:func:`install` keeps those semantics and skips the tasks for deliveries that finish
at once: the callback's first step runs in place (nothing else can run meanwhile, so
no suspension can interleave); only a delivery that has to wait goes through
``wait_first``, continued from where it stopped by :func:`_resume`. Any other use of
``wait_first`` on the consumer is passed through unchanged.

Each delivery still ends with one event-loop turn, as the tasks' scheduling did. Handing
over a whole fetch without it cut worker CPU per command at full speed further, but at
500 commands/s it made the agent's batches larger and the latency worse (p50 51-108 ms
against 37-59 ms in five interleaved pairs); with the turn, five interleaved pairs
gave 808-930 µs against 854-1,199 µs per command at full speed, 1,328-1,382 µs against
1,462-1,516 µs at 500/s, and p50 76-91 ms against 97-140 ms.

The turn is only worth its cost while the agent may be waiting for the record. When
``backlog()`` says the agent already has plenty queued (it is busy with a batch and will
take the queue as a whole when done), the turn is skipped: at full speed that is nearly
every record, and at 500 commands/s, where queues stay short, nearly none.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Callable, Coroutine, Generator
from typing import Any

from mode import Service

__all__ = ["install"]


def install(
    consumer: Service, suspend_flow: Any, backlog: Callable[[], bool] = lambda: False
) -> None:
    """Give ``consumer`` (Faust's) the fast path for its delivery ``wait_first``.

    ``backlog()``: the agents already have enough queued that handing this record over
    need not give them a loop turn.
    """
    original = consumer.wait_first

    async def wait_first(*coros: Any, timeout: Any = None) -> Any:  # noqa: ASYNC109 - mode's
        if len(coros) != 2 or timeout is not None or not _is_wait_of(coros[1], suspend_flow):
            return await original(*coros, timeout=timeout)
        callback, suspension = coros
        if suspend_flow.is_set() or consumer.should_stop:
            return await original(callback, suspension)
        try:
            yielded = callback.send(None)
        except StopIteration:
            suspension.close()
            # One loop turn per record, as the tasks gave: the agent starts on a fetch
            # while the rest of it is still being handed over. (Faust's drain loop still
            # yields every 100 records.)
            if not backlog():
                await _one_turn()
            return None  # _drain_messages ignores the result
        except BaseException:
            suspension.close()
            raise
        return await original(_resume(callback, yielded), suspension)

    consumer.wait_first = wait_first  # type: ignore[method-assign]


def _is_wait_of(coro: Any, event: asyncio.Event) -> bool:
    """Is ``coro`` an unstarted ``event.wait()``?"""
    frame = getattr(coro, "cr_frame", None)
    return frame is not None and frame.f_locals.get("self") is event


async def _resume(coro: Coroutine[Any, Any, Any], yielded: Any) -> Any:
    """Run to its end a coroutine whose first step already ran and yielded ``yielded``,
    as a task would: wait for the future it yielded, then resume it (it reads the
    future's result or exception itself). Cancelling us cancels that future, which the
    coroutine then sees, exactly as when a task running it is cancelled."""
    while True:
        try:
            if yielded is None:  # a bare yield: give the loop one turn
                try:
                    await _one_turn()
                except BaseException as exc:
                    yielded = coro.throw(exc)
                    continue
            else:
                yielded._asyncio_future_blocking = False
                try:
                    await yielded
                except BaseException:
                    if not yielded.done():  # we were cancelled with the future pending
                        yielded.cancel()
                    # the coroutine reads the outcome from the future when resumed
            yielded = coro.send(None)
        except StopIteration as stop:
            return stop.value


@types.coroutine
def _one_turn() -> Generator[None, None, None]:
    yield
