"""The worker's one membership lease (membership.py), followed from its first
assignment, for every agent that writes tables: the command agent's deliveries and the
insights' counts."""

from __future__ import annotations

import logging
from typing import Any, cast

from faust.exceptions import ConsumerNotStarted

from paystream.agents.membership import MembershipLease
from paystream.app import app

__all__ = ["MembershipLapsed", "current_generation", "lease", "still_a_member"]

log = logging.getLogger(__name__)

lease = MembershipLease(
    float(app.conf.broker_session_timeout), float(app.conf.broker_heartbeat_interval)
)


# Assignments received (each seeks the partitions to their committed offsets, even one
# of the same generation): for the outcome agent's continuity guard.
assignments = 0


async def _on_assignment(sender: Any, *args: Any, **kwargs: Any) -> None:
    global assignments
    assignments += 1
    # An assignment is the coordinator's word that this worker is a member; its
    # heartbeats say so from now on (the coordinator is made with the consumer).
    lease.accepted()
    try:
        client = cast(Any, app.consumer)._thread._ensure_consumer()
    except ConsumerNotStarted:  # (no consumer, no batches: the next assignment follows)
        return
    lease.follow(client._coordinator)


# (mode's signal stubs do not admit a coroutine function; it is awaited all the same)
app.on_partitions_assigned.connect(cast(Any, _on_assignment))


async def still_a_member(generation: int | None, what: str) -> bool:
    """May a write of records read in ``generation`` go now? At once while the lease
    holds; after a lapse, once the coordinator confirms this worker (True), or never if
    the membership is lost or a rebalance begins (False: the partitions' owner redoes
    the records from the committed offsets)."""
    if not lease.lapsed():
        return True
    log.warning(
        "%s waits: no heartbeat of this worker accepted for %.1f s (session timeout "
        "%.0f s); it goes once one is, or is redone by whoever owns its partitions if the "
        "group moved them",
        what,
        lease.age() or 0.0,
        lease.session_timeout,
    )
    return await lease.confirmed(
        lambda: not app.rebalancing and app.consumer_generation_id == generation
    )


class MembershipLapsed(RuntimeError):
    """This worker's group membership lapsed while its batch was being produced: the
    batch fails (the worker exits uncommitted) rather than write after another owner."""


def current_generation() -> int | None:
    """The consumer generation records read now belong to."""
    return cast(int | None, app.consumer_generation_id)
