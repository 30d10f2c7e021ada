"""Workers of a fleet started, or stopped, at the same time: a start is mostly the
interpreter's imports (seconds of CPU on a core of its own), and a stop waits on the
group; one after the other, a two-worker test paid each twice."""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Awaitable, Mapping

from paystream.devstack.worker import WorkerProcess

__all__ = ["side_by_side", "start_together", "stop_together"]


async def start_together(*workers: WorkerProcess) -> None:
    """Each one started (returned once it listens on its port), all at once.

    (From threads: the workers miss the signal that stops a child started from the main
    thread with the test process, if that dies; the tests stop them themselves.)"""
    await asyncio.gather(*(asyncio.to_thread(w.start) for w in workers))


async def stop_together(*workers: WorkerProcess) -> None:
    await asyncio.gather(*(asyncio.to_thread(w.stop) for w in workers))


async def side_by_side(cases: Mapping[str, Awaitable[None]]) -> None:
    """Each case run at once (on deployments of their own); every failure reported
    together, each named and with its traceback (a case's checks look alike)."""
    results = await asyncio.gather(*cases.values(), return_exceptions=True)
    failed = [
        f"[{name}] " + "".join(traceback.format_exception(r))
        for name, r in zip(cases, results, strict=True)
        if r is not None
    ]
    assert not failed, "\n\n".join(failed)
