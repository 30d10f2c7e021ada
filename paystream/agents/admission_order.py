"""A tenant's limits decisions in offset order while its commands run as chains.

The limits decide by admission order: the rate bucket refills by the record times it has
seen (and caps at the burst), and the day of a hold is the latest time seen. A crash's
redelivery must decide as the first run did, so chains of a tenant with limits take their
admissions in the run's order: each command, about to be admitted, waits until every
earlier command of the run has passed (its admission decided for good, or the command
finished without one). Provider calls still overlap: a command passes before its call.

A chain waiting here gives up its concurrency slot meanwhile and takes one again before
it is admitted: chains holding every slot could otherwise wait on a command whose chain
holds none.
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar

__all__ = ["ADMISSION_TURN", "AdmissionOrder", "Slot", "Turn"]


class Slot:
    """One chain's hold on the tenant's concurrency semaphore, given up while it waits."""

    __slots__ = ("_sem", "held")

    def __init__(self, sem: asyncio.Semaphore) -> None:
        self._sem = sem
        self.held = False

    async def take(self) -> None:
        await self._sem.acquire()
        self.held = True

    def give_up(self) -> None:
        if self.held:
            self.held = False
            self._sem.release()


class AdmissionOrder:
    """Which of a run's commands have passed their admission, and who waits for it."""

    __slots__ = ("_next", "_passed", "_waiters")

    def __init__(self, size: int) -> None:
        self._passed = [False] * size
        self._next = 0  # the first command that has not passed
        self._waiters: dict[int, asyncio.Future[None]] = {}

    def ready(self, index: int) -> bool:
        """Has every command before ``index`` passed?"""
        return self._next >= index

    def passed(self, index: int) -> None:
        """Command ``index`` decided (or finished): the next in order may be admitted."""
        passed = self._passed
        if passed[index]:
            return
        passed[index] = True
        nxt = self._next
        while nxt < len(passed) and passed[nxt]:
            nxt += 1
        self._next = nxt
        waiter = self._waiters.pop(nxt, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait_for(self, index: int) -> None:
        if self.ready(index):
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters[index] = waiter
        try:
            await waiter
        finally:
            self._waiters.pop(index, None)


class Turn:
    """One command's place in its run's admission order."""

    __slots__ = ("index", "order", "slot")

    def __init__(self, order: AdmissionOrder, index: int, slot: Slot) -> None:
        self.order, self.index, self.slot = order, index, slot

    async def wait(self) -> bool:
        """Return once every earlier command of the run has passed, holding a slot again;
        True if it had to wait (other chains ran meanwhile: what was read before is
        stale). Does not yield to the loop when nothing is pending."""
        if self.order.ready(self.index):
            return False
        self.slot.give_up()
        await self.order.wait_for(self.index)
        await self.slot.take()
        return True

    def passed(self) -> None:
        self.order.passed(self.index)


# Set per command by the chains' runner (each chain a task of its own); None: the
# tenant's commands run one at a time, in order, and nothing need wait.
ADMISSION_TURN: ContextVar[Turn | None] = ContextVar("paystream_admission_turn", default=None)
