"""Whether this worker is still, as far as it can know, a member of its consumer group.

Nothing at the broker fences a worker that lost its partitions: Kafka transactions would,
and the embedded broker's are unsafe (TANSU.md), so paystream does not use them. A worker
frozen with a batch in hand (a long pause of the process or its VM; SIGSTOP in the
tests) past the group's session timeout has its partitions given to another worker,
which redoes the batch and goes on. Thawed, it finished the batch before its consumer
noticed, and delivered it: its table changes landed in the changelogs after the new
owner's newer ones, and the next recovery read them back (review h61c: a refund gone from
its payment, a day's volume counted short, so that a payment passed the quota).

The lease is the last heartbeat the group coordinator accepted (its send time): a batch
is delivered at once while that is younger than the session timeout less one heartbeat
interval (the time a delivery may take to land). Past it the coordinator may have
expired this worker already: the batch waits for a heartbeat sent after that moment to
be accepted (still a member: nothing was handed over, it is delivered) or for the
membership to be lost or a rebalance to begin (it is not delivered: whoever owns its
partitions after the rebalance redoes it from the committed offsets). What is left is
a pause that starts between that check and the delivery's records leaving the process:
the lease narrows the window to that moment, it cannot close it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["MembershipLease"]

_WRAPPED = "_paystream_membership_lease"


class MembershipLease:
    """The age of the last heartbeat accepted, against the session timeout."""

    def __init__(self, session_timeout: float, heartbeat_interval: float) -> None:
        self.session_timeout = session_timeout
        # A delivery must land before the coordinator could expire this worker.
        self.limit = max(session_timeout - heartbeat_interval, session_timeout / 2)
        self._accepted: float | None = None  # time.monotonic(); written by the consumer thread
        self._coordinator: Any = None

    def accepted(self, at: float | None = None) -> None:
        """The coordinator confirmed this member (a heartbeat sent at ``at``, a join)."""
        self._accepted = time.monotonic() if at is None else at

    def age(self, now: float | None = None) -> float | None:
        """Seconds since the last confirmation (None before the first)."""
        if self._accepted is None:
            return None
        return (time.monotonic() if now is None else now) - self._accepted

    def lapsed(self, now: float | None = None) -> bool:
        """Might the coordinator have expired this member by the time a delivery lands?
        (Never while no coordinator's heartbeats are followed: unseen, they cannot renew.)"""
        age = self.age(now)
        return self._coordinator is not None and age is not None and age > self.limit

    def lost(self) -> bool:
        """Has the coordinator told this worker it is no member (its member id reset, a
        rejoin to come)?"""
        return self._coordinator is not None and self._coordinator.member_id == ""

    async def confirmed(self, still_ours: Callable[[], bool], poll: float = 0.05) -> bool:
        """After a lapse: True once a heartbeat sent from now on is accepted (still a
        member: nothing was handed over) while ``still_ours()`` holds; False once the
        membership is lost or ``still_ours()`` fails (a rebalance: the hand-over
        decides). As long as it takes: a broker that does not answer could not take the
        batch either, and a worker stopping meanwhile gives up on it at its drain."""
        asked = time.monotonic()
        while True:
            if self.lost() or not still_ours():
                return False
            if self._accepted is not None and self._accepted >= asked:
                return still_ours()
            await asyncio.sleep(poll)

    def follow(self, coordinator: Any) -> None:
        """Count ``coordinator``'s accepted heartbeats (aiokafka's GroupCoordinator, on the
        consumer's thread; its heartbeat routine looks ``_do_heartbeat`` up per beat).
        Once per coordinator: a consumer made again brings a new one."""
        if getattr(coordinator, _WRAPPED, None) is self:
            return
        beat: Callable[[], Awaitable[bool]] = coordinator._do_heartbeat

        async def heartbeat() -> bool:
            sent = time.monotonic()  # (the coordinator's session counts from its arrival)
            ok = await beat()
            # (True for "rebalance in progress" too: the member is kept meanwhile. A
            # member id reset by the answer is no member: aiokafka then says False.)
            if ok:
                self.accepted(sent)
            return ok

        coordinator._do_heartbeat = heartbeat
        setattr(coordinator, _WRAPPED, self)
        self._coordinator = coordinator
