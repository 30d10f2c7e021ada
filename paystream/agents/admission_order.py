"""A tenant's limits decisions in offset order while its commands run as chains.

The limits decide by admission order: the rate bucket refills by the record times it has
seen (and caps at the burst), and the day of a hold is the latest time seen. A crash's
redelivery must decide as the first run did, so chains of a tenant with limits take their
admissions in the run's order: each command, about to be admitted, waits until every
earlier command of the run has passed (its admission decided for good, or the command
finished without one). Provider calls still overlap: a command passes before its call.

A daily volume also decides by what the earlier payments came to: each holds its amount
from its admission until its answer counts it (money moved) or releases it. Serially, a
payment is decided once every earlier one is answered; side by side, the earlier ones may
still hold. Holding counts no less than either answer, so a payment the volume admits with
them holding is one it admits once they are answered; only one it would refuse waits for
the earlier commands to finish and is then decided as serially (``Turn.settled``).

A chain waiting for its turn gives up its concurrency slot meanwhile and takes one again
before it is admitted: chains holding every slot could otherwise wait on a command whose
chain holds none. (Waiting for the earlier commands to finish keeps it: those are past
their admission, each running with a slot of its own.)
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


class _Frontier:
    """Which of a run's commands are marked, and waiting for all before one to be."""

    __slots__ = ("_marked", "_next", "_waiters")

    def __init__(self, size: int) -> None:
        self._marked = [False] * size
        self._next = 0  # the first command not marked
        self._waiters: dict[int, asyncio.Future[None]] = {}

    def all_before(self, index: int) -> bool:
        return self._next >= index

    def mark(self, index: int) -> None:
        marked = self._marked
        if marked[index]:
            return
        marked[index] = True
        nxt = self._next
        while nxt < len(marked) and marked[nxt]:
            nxt += 1
        self._next = nxt
        for waiting in [i for i in self._waiters if i <= nxt]:
            waiter = self._waiters.pop(waiting)
            if not waiter.done():
                waiter.set_result(None)

    async def wait_all_before(self, index: int) -> None:
        if self.all_before(index):
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters[index] = waiter
        try:
            await waiter
        finally:
            self._waiters.pop(index, None)


class AdmissionOrder:
    """Which of a run's commands have passed their admission or finished."""

    __slots__ = ("_finished", "_passed")

    def __init__(self, size: int) -> None:
        self._passed = _Frontier(size)
        self._finished = _Frontier(size)

    def ready(self, index: int) -> bool:
        """Has every command before ``index`` passed?"""
        return self._passed.all_before(index)

    def passed(self, index: int) -> None:
        """Command ``index`` decided: the next in order may be admitted."""
        self._passed.mark(index)

    def finished(self, index: int) -> None:
        """Command ``index`` answered (or failed): it has passed, and holds nothing new."""
        self._passed.mark(index)
        self._finished.mark(index)

    def settled(self, index: int) -> bool:
        """Has every command before ``index`` finished?"""
        return self._finished.all_before(index)

    async def wait_for(self, index: int) -> None:
        await self._passed.wait_all_before(index)

    async def wait_settled(self, index: int) -> None:
        await self._finished.wait_all_before(index)


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

    def settled(self) -> bool:
        """Has every earlier command of the run finished (as serially, by now)?"""
        return self.order.settled(self.index)

    async def wait_settled(self) -> None:
        """Return once every earlier command of the run has finished (its turn kept: no
        later command is admitted meanwhile)."""
        await self.order.wait_settled(self.index)

    def passed(self) -> None:
        self.order.passed(self.index)


# Set per command by the chains' runner (each chain a task of its own); None: the
# tenant's commands run one at a time, in order, and nothing need wait.
ADMISSION_TURN: ContextVar[Turn | None] = ContextVar("paystream_admission_turn", default=None)
