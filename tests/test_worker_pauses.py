"""A worker starts and stops without Faust's and mode's fixed one-second pauses.

Faust's table manager slept a second before registering the tables' changelogs (every
first join waited for it), and mode's worker slept a second after the last task had
finished before closing the loop (a stopped worker exited after 1.2 s, 1 s of it that).

No assertion here reads a clock: the sleeps the patched code asks for are recorded, and
the exit's wait runs on an event loop of its own whose clock only the recorded sleeps
advance (the tests' shared loop holds other tests' tasks, and a loaded machine stretches
any measured time).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import faust
import mode
import pytest
from faust.tables.manager import TableManager

from paystream.worker import EXIT_GRACE_SECONDS, shadowed_code_changes, skip_fixed_pauses


@pytest.fixture
def without_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    # (Both restored after: the patches are process-wide.)
    monkeypatch.setattr(TableManager, "on_start", TableManager.on_start)
    monkeypatch.setattr(faust.Worker, "_sentinel_task", faust.Worker._sentinel_task)
    skip_fixed_pauses()
    skip_fixed_pauses()  # (idempotent: wrapped once)


async def test_the_tables_register_without_a_pause(
    without_pauses: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = faust.App("paystream-test-pauses", autodiscover=False)
    manager: Any = app.tables
    done: list[str] = []

    async def update_channels() -> None:
        done.append("changelogs registered")

    class Recovery:
        async def start(self) -> None:
            done.append("recovery started")

    async def manager_sleep(_self: Any, seconds: float) -> None:
        done.append(f"slept {seconds} s")

    monkeypatch.setattr(TableManager, "sleep", manager_sleep)  # (mode's Service.sleep)
    manager._update_channels = update_channels
    manager._recovery = Recovery()
    await manager.on_start()
    assert done == ["changelogs registered", "recovery started"], (
        "the table manager registers the changelogs without its one-second sleep"
    )
    assert "sleep" not in vars(manager), "the manager's own sleep must be back"
    await manager.sleep(0.25)
    assert done[-1] == "slept 0.25 s", "the manager's own sleep is the one called after"


class VirtualClock:
    """An event loop's clock that only the sleeps advance: each sleep is recorded, moves
    the clock by its length at once and yields one loop iteration."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 0.0
        self.slept: list[float] = []
        self.loop = asyncio.new_event_loop()
        self._yield = asyncio.sleep
        monkeypatch.setattr(self.loop, "time", lambda: self.now)
        monkeypatch.setattr(asyncio, "sleep", self.sleep)

    async def sleep(self, seconds: float, result: Any = None) -> Any:
        self.slept.append(seconds)
        self.now += max(seconds, 0.0)
        return await self._yield(0, result)

    def run_sentinel(self, worker_class: type = faust.Worker) -> None:
        """mode's last wait, as its worker runs it before it closes the loop."""
        worker: Any = worker_class.__new__(worker_class)  # (no app: only the wait runs)
        self.slept.clear()
        self.now = 0.0
        self.loop.run_until_complete(asyncio.ensure_future(worker._sentinel_task(), loop=self.loop))


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[VirtualClock]:
    clock = VirtualClock(monkeypatch)
    yield clock
    clock.loop.close()


def test_the_exit_waits_only_for_tasks_still_finishing(
    without_pauses: None, clock: VirtualClock
) -> None:
    clock.run_sentinel()
    assert clock.slept == [], "no task left: the loop closes without a sleep"

    async def finishing() -> None:  # (a cancelled task's clean-up: a few iterations)
        for _ in range(5):
            await clock._yield(0)

    task = clock.loop.create_task(finishing())
    clock.run_sentinel()
    assert task.done(), "a task still finishing is waited for"
    assert clock.slept and max(clock.slept) < 0.1, (
        f"it is waited for in short steps, not a second: {clock.slept}"
    )
    assert clock.now < 0.1, f"and only until it has finished: {clock.now:.2f} s"

    never = clock.loop.create_task(asyncio.Event().wait())
    clock.run_sentinel()
    assert not never.done()
    assert EXIT_GRACE_SECONDS <= clock.now < EXIT_GRACE_SECONDS + 0.1, (
        f"a task that never ends is waited for {EXIT_GRACE_SECONDS} s, as mode did: {clock.now}"
    )
    never.cancel()
    clock.loop.run_until_complete(asyncio.gather(never, return_exceptions=True))


def test_mode_waited_a_second_every_time(clock: VirtualClock) -> None:
    # (What the test above tells apart: mode's own wait, on the same clock.)
    clock.run_sentinel(mode.Worker)
    assert clock.slept == [1.0]


@pytest.mark.parametrize(
    ("owner", "name", "replacement", "change"),
    [
        (TableManager, "on_start", lambda self: None, "no longer calls self.sleep(1.0)"),
        (mode.Worker, "_shutdown_loop", lambda self: None, "no longer runs _sentinel_task"),
        (mode.Worker, "_sentinel_task", lambda self: None, "does more than asyncio.sleep"),
        (faust.Worker, "_sentinel_task", lambda self: None, "has a _sentinel_task of its own"),
    ],
)
def test_a_change_in_the_shadowed_code_stops_the_worker(
    monkeypatch: pytest.MonkeyPatch, owner: type, name: str, replacement: Any, change: str
) -> None:
    assert shadowed_code_changes() == [], "written for the installed Faust and mode"
    monkeypatch.setattr(owner, name, replacement)
    with pytest.raises(RuntimeError, match=re.escape(change)):
        skip_fixed_pauses()
