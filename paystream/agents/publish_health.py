"""Whether the broker is refusing the command agent's writes: a stall no restart mends.

A batch's outcomes and table changes are produced until the broker has all of them
(``commands._publish``), so a broker that keeps answering with an error (a partition
without enough in-sync replicas, without a leader, on a failed disk) stalls the agent.
Restarting the worker would not help: its partitions would move to a peer, which stalls
on the same partition, and each restart is a rebalance that pauses the whole group. So
liveness leaves such a stall alone while the broker keeps answering so
(``web/liveness.py``); readiness and ``PaystreamPublishFailing`` report it.

A timeout is not a refusal: aiokafka raises ``RequestTimedOutError`` both for a broker's
REQUEST_TIMED_OUT answer and for a request that got no answer at all (a hung
connection, which a restart may well mend), and ``KafkaTimeoutError`` and connection
errors are the client's own. Those stay counted as a stall.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from aiokafka.errors import BrokerResponseError, RequestTimedOutError

from paystream import metrics

__all__ = ["PUBLISH", "PublishHealth", "PublishTrouble", "is_refusal"]


def is_refusal(exc: BaseException) -> bool:
    """The broker answered the produce request with an error of its own."""
    return isinstance(exc, BrokerResponseError) and not isinstance(exc, RequestTimedOutError)


@dataclass(frozen=True)
class PublishTrouble:
    """Producing has failed since ``seconds`` ago; the latest failure ``last_seconds`` ago."""

    error: str
    refused: bool  # the latest failure was the broker's answer (see is_refusal)
    seconds: float
    last_seconds: float

    def describe(self) -> str:
        what = "refused by the broker" if self.refused else "failing"
        return f"producing outcomes {what} for {self.seconds:.0f} s ({self.error})"


class PublishHealth:
    """The command agent's produce attempts: failing since when, and how."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._since: float | None = None
        self._last = 0.0
        self._error = ""
        self._refused = False

    def failed(self, exc: BaseException) -> None:
        now = self._clock()
        if self._since is None:
            self._since = now
        self._last = now
        self._error = type(exc).__name__
        self._refused = is_refusal(exc)
        metrics.PUBLISH_FAILURES.labels(self._error).inc()

    def delivered(self) -> None:
        self._since = None

    def abandoned(self) -> None:
        """A failing batch given up (its partition handed over, the agent stopping):
        nothing is being produced, so nothing is failing. Left set, the gauge went on
        rising on an idle worker, and PaystreamPublishFailing paged for good."""
        self._since = None

    def trouble(self) -> PublishTrouble | None:
        """How producing is failing (None: the latest attempt was delivered)."""
        if self._since is None:
            return None
        now = self._clock()
        return PublishTrouble(self._error, self._refused, now - self._since, now - self._last)

    def refused_within(self, seconds: float) -> PublishTrouble | None:
        """The trouble, when its latest failure was a refusal no older than ``seconds``:
        a refusing broker fails the retried batch again well within that; an attempt
        that has hung since is no longer excused."""
        trouble = self.trouble()
        if trouble is None or not trouble.refused or trouble.last_seconds > seconds:
            return None
        return trouble


#: The worker's one command agent's publish health (read by /healthz and /readyz).
PUBLISH = PublishHealth()


def _failing_seconds() -> float:
    trouble = PUBLISH.trouble()
    return trouble.seconds if trouble is not None else 0.0


metrics.PUBLISH_FAILING.set_function(_failing_seconds)
