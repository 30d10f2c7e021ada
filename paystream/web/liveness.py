"""When a live worker is of no use: its command agent wedged, /healthz fails.

A Kafka worker that is up but makes no progress holds its partitions for ever: readiness
(``/readyz``) says so, but nothing routes traffic by readiness here, so nothing acts on
it. Failing liveness after a much longer stall lets the orchestrator restart the worker;
its partitions move to a peer meanwhile, and the restarted worker resumes from the
committed offsets (nothing durable is lost: offsets are committed only once outcomes
and table changes are).

Only the command agent is judged. A ledger sink stalls on its database, which a restart
does not bring back; restarting would only add noise to an outage (``/readyz`` and
``PaystreamLedgerSinkStalled`` report it). For the same reason the command agent is not
judged while the broker keeps refusing its writes (``agents/publish_health.py``;
``PaystreamPublishFailing``): restarted in turn, every worker would stall on the same
partition, each restart a rebalance of the whole group.

Rebalancing without recovering tables for PAYSTREAM_LIVENESS_SETTLING_SECONDS without a
break (an hour) is a wedge of its own. Otherwise time spent settling
(rebalancing, recovering tables, reading the tenant registry) is not a stall: a worker
that took twenty minutes to recover its tables must not be judged on them the moment it
is done. A stall is counted from the later of when it began and when
the worker was last seen settling: by a probe that found it so, or by one that found a
new consumer generation (a rebalance that began and ended between two probes).

The lag counts only records the worker has fetched: a consumer whose fetches stopped
being answered (a hung connection) sees no backlog, so no stall, and is not judged here.
The fetch age is no sign of it to act on: partitions of a healthy, idle worker went
unanswered for many seconds on the embedded broker, and Faust stops fetching partitions
whose agent is busy (tests/e2e/test_sink_outage_keeps_commands_running.py saw both).
Nor does it need a restart: aiokafka closes a connection whose request timed out and
opens another, and the worker joins its group again
(tests/e2e/test_blackholed_connections.py); a broker that stays silent is
PaystreamBrokerNotAnswering's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from paystream.agents.offsets import Stall

__all__ = ["COMMANDS_AGENT", "LivenessWatch"]

COMMANDS_AGENT = "commands"


class LivenessWatch:
    """Remembers when the worker was last seen settling; judges the command agent's stall."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._settled_since = clock()  # the process starting counts as settling
        self._settling_since: float | None = None  # settling without a break since
        self._generation: int | None = None

    def observe(
        self,
        *,
        settling: bool,
        generation: int | None = None,
        rebalancing: bool = False,
        refused: bool = False,
    ) -> None:
        """Every probe (readiness too) says whether the worker is settling right now, its
        consumer generation (which every rebalance moves on), whether it is rebalancing
        without recovering tables (what a stuck rebalance looks like; a long recovery
        makes progress, and a registry never read is not mended by a restart), and
        whether the broker is refusing the command agent's writes (agents/publish_health:
        the peer taking over the partitions would stall on them too). A stall is counted
        only from the last probe that saw none of these."""
        now = self._clock()
        moved = generation is not None and generation != self._generation
        self._generation = generation if generation is not None else self._generation
        if settling or moved or refused:
            self._settled_since = now
        if not rebalancing:
            self._settling_since = None
        elif self._settling_since is None:
            self._settling_since = now

    def failures(
        self, stalled: Iterable[Stall], *, after: float, settling_after: float = 0.0
    ) -> list[str]:
        """Why the worker should be restarted (empty: it should not). ``stalled``: every
        agent behind without progress, with for how long; ``after``: seconds of stall that
        make it wedged (0: never); ``settling_after``: seconds of rebalancing (not
        recovering tables) without a break that do (0: never): Faust has been seen to stay
        "rebalancing" for good after a recovery that ended on an older generation, and a
        restart settles it."""
        out = []
        now = self._clock()
        if settling_after > 0 and self._settling_since is not None:
            settling = now - self._settling_since
            if settling >= settling_after:
                out.append(
                    f"worker rebalancing for {settling:.0f} s without recovering tables "
                    f"(PAYSTREAM_LIVENESS_SETTLING_SECONDS={settling_after:.0f})"
                )
        if after <= 0:
            return out
        settled = now - self._settled_since
        limit = f"(PAYSTREAM_LIVENESS_STALL_SECONDS={after:.0f})"
        for stall in stalled:
            if stall.agent != COMMANDS_AGENT:
                continue
            seconds = min(stall.seconds, settled)
            if seconds >= after:
                out.append(
                    f"{stall.agent} agent wedged: {stall.behind} records behind, no progress "
                    f"for {seconds:.0f} s {limit}"
                )
        return out
