"""How many commands wait on the retry and dead-letter topics for a replay, and how long.

A parked command stays unanswered until an operator runs `paystream dlq replay`, and
past the providers' idempotency window a replay holds it back as stale. The alert on
parking (PaystreamCommandsParked) counts parks and resolves 15 minutes later whether or
not anyone replayed them; these gauges say what still waits. Every worker measures it
once a minute (the replay group's committed offsets to the topics' ends, and the next
record's timestamp), so it shows while any worker runs; PaystreamParkedUnreplayed fires
while a command has waited over an hour.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka.errors import KafkaError

from paystream import metrics
from paystream.agents.continuity import BROKER_ASK_SECONDS
from paystream.app import app, settings
from paystream.dlq import TopicBacklog, backlog
from paystream.errors import ConfigurationError
from paystream.settings import Settings

__all__ = ["FIRST_MEASURE_SECONDS", "MEASURE_SECONDS", "measure_once", "parked_topics"]

log = logging.getLogger(__name__)

# Soon after start (a restarted worker shows the backlog at once), then once a minute.
FIRST_MEASURE_SECONDS = 5.0
MEASURE_SECONDS = 60.0


def parked_topics(s: Settings) -> dict[str, str]:
    """The `topic` label (as `paystream dlq list --topic` names it) → the topic.

    Not the ledger's dead-letter topic: `dlq replay` cannot re-drive it (the ledger's
    own alerts cover it), so its count would never fall.
    """
    return {"retry": s.retry_topic, "dlq": s.dlq_topic}


async def measure_once(s: Settings, *, now_ms: int | None = None) -> dict[str, TopicBacklog]:
    """Measure and set the gauges; on failure clear them (no stale figure) and raise."""
    topics = parked_topics(s)
    try:
        found = await asyncio.wait_for(backlog(s, list(topics.values())), BROKER_ASK_SECONDS)
    except BaseException:
        metrics.PARKED_WAITING.clear()
        metrics.PARKED_OLDEST.clear()
        raise
    now = time.time() * 1000 if now_ms is None else now_ms
    for label, topic in topics.items():
        got = found[topic]
        metrics.PARKED_WAITING.labels(label).set(got.waiting)
        if got.waiting == 0:
            metrics.PARKED_OLDEST.labels(label).set(0)
        elif got.oldest_ms is not None:
            metrics.PARKED_OLDEST.labels(label).set(max(0.0, (now - got.oldest_ms) / 1000))
        # (Records waiting but none read in time: the last age stands until the next.)
    return found


@app.task
async def measure_parked_backlog() -> None:
    """Runs for the worker's life."""
    await asyncio.sleep(FIRST_MEASURE_SECONDS)
    failing = False
    while True:
        try:
            await measure_once(settings)
            if failing:
                log.info("parked backlog measured again")
            failing = False
        except (KafkaError, OSError, TimeoutError, ConfigurationError) as exc:
            if not failing:  # once per outage, not once a minute
                log.warning("could not measure the parked backlog (%r); will retry", exc)
            failing = True
        await asyncio.sleep(MEASURE_SECONDS)
