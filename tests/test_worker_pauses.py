"""A worker starts and stops without Faust's and mode's fixed one-second pauses.

Faust's table manager slept a second before registering the tables' changelogs (every
first join waited for it), and mode's worker slept a second after the last task had
finished before closing the loop (a stopped worker exited after 1.2 s, 1 s of it that).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import faust
import pytest
from faust.tables.manager import TableManager

from paystream.worker import EXIT_GRACE_SECONDS, skip_fixed_pauses


@pytest.fixture
def without_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    # (Both restored after: the patches are process-wide.)
    monkeypatch.setattr(TableManager, "on_start", TableManager.on_start)
    monkeypatch.setattr(faust.Worker, "_sentinel_task", faust.Worker._sentinel_task)
    skip_fixed_pauses()
    skip_fixed_pauses()  # (idempotent: wrapped once)


async def test_the_tables_register_at_once(without_pauses: None) -> None:
    app = faust.App("paystream-test-pauses", autodiscover=False)
    manager: Any = app.tables
    done: list[str] = []

    async def update_channels() -> None:
        done.append("changelogs registered")

    class Recovery:
        async def start(self) -> None:
            done.append("recovery started")

    manager._update_channels = update_channels
    manager._recovery = Recovery()
    started = time.monotonic()
    await manager.on_start()
    took = time.monotonic() - started
    assert done == ["changelogs registered", "recovery started"]
    assert took < 0.5, f"the table manager still paused {took:.2f} s before registering"
    assert "sleep" not in vars(manager), "the manager's own sleep must be back"
    await manager.sleep(0.01)  # (its own, that waits)


async def test_the_exit_waits_only_for_tasks_still_finishing(without_pauses: None) -> None:
    worker: Any = faust.Worker.__new__(faust.Worker)  # (no app: only the last wait runs)
    started = time.monotonic()
    await worker._sentinel_task()
    assert time.monotonic() - started < 0.5, "no task left: the loop closes at once"

    finishing = asyncio.ensure_future(asyncio.sleep(0.3))
    started = time.monotonic()
    await worker._sentinel_task()
    took = time.monotonic() - started
    assert finishing.done(), "a task still finishing is waited for"
    assert 0.25 <= took < 0.9, took

    never = asyncio.ensure_future(asyncio.Event().wait())
    started = time.monotonic()
    await worker._sentinel_task()
    took = time.monotonic() - started
    never.cancel()
    assert EXIT_GRACE_SECONDS - 0.05 <= took < EXIT_GRACE_SECONDS + 0.5, (
        f"a task that never ends is waited for {EXIT_GRACE_SECONDS} s, as mode did: {took:.2f}"
    )
