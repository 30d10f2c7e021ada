"""How many commands wait on the retry and dead-letter topics for a replay, and how long.

A parked command stays unanswered until an operator runs `paystream dlq replay`, and
past the providers' idempotency window a replay holds it back as stale. The alert on
parking (PaystreamCommandsParked) counts parks and resolves 15 minutes later whether or
not anyone replayed them; these gauges say what still waits. Every worker measures it
every PAYSTREAM_PARKED_MEASURE_SECONDS (the replay group's committed offsets to the
topics' ends, and the next record's timestamp), so it shows while any worker runs;
PaystreamParkedUnreplayed fires while a command has waited over an hour.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka.errors import KafkaError

from paystream import metrics
from paystream.agents.continuity import BROKER_ASK_SECONDS
from paystream.app import app, settings
from paystream.dlq import PositionUnread, TopicBacklog, backlog, parked_topics
from paystream.errors import ConfigurationError
from paystream.settings import Settings

__all__ = [
    "FIRST_MEASURE_SECONDS",
    "as_json",
    "measure_once",
]

log = logging.getLogger(__name__)

# Soon after start (a restarted worker shows the backlog at once), then every
# PAYSTREAM_PARKED_MEASURE_SECONDS (a minute).
FIRST_MEASURE_SECONDS = 5.0

# The latest measurement (label -> backlog, and when, in epoch ms), for the dashboard;
# None before the first and while the broker cannot be asked.
_latest: tuple[dict[str, TopicBacklog], int] | None = None


async def measure_once(s: Settings, *, now_ms: int | None = None) -> dict[str, TopicBacklog]:
    """Measure and set the gauges; on failure clear them (no stale figure) and raise."""
    global _latest
    topics = parked_topics(s)
    try:
        found = await asyncio.wait_for(backlog(s, list(topics.values())), BROKER_ASK_SECONDS)
    except BaseException:
        metrics.PARKED_WAITING.clear()
        metrics.PARKED_OLDEST.clear()
        _latest = None
        raise
    now = int(time.time() * 1000) if now_ms is None else now_ms
    _latest = ({label: found[topic] for label, topic in topics.items()}, now)
    metrics.PARKED_MEASURED_AT.set(now / 1000)
    for label, topic in topics.items():
        got = found[topic]
        metrics.PARKED_WAITING.labels(label).set(got.waiting)
        if got.waiting == 0:
            metrics.PARKED_OLDEST.labels(label).set(0)
        elif got.oldest_ms is not None:
            metrics.PARKED_OLDEST.labels(label).set(max(0.0, (now - got.oldest_ms) / 1000))
        # (Records waiting but none read in time: the last age stands until the next.)
    return found


def as_json(now_ms: int | None = None) -> dict[str, object] | None:
    """The latest measurement for /v1/stats: in all and by topic, ages in seconds."""
    if settings.parked_measure_seconds <= 0:
        return {"off": True}
    if _latest is None:
        return None
    by_label, at = _latest
    now = int(time.time() * 1000) if now_ms is None else now_ms

    def age(b: TopicBacklog) -> float | None:
        return None if b.oldest_ms is None else round(max(0, now - b.oldest_ms) / 1000, 1)

    ages = [a for b in by_label.values() if b.waiting and (a := age(b)) is not None]
    return {
        "waiting": sum(b.waiting for b in by_label.values()),
        "oldest_s": max(ages, default=None),
        "topics": {k: {"waiting": b.waiting, "oldest_s": age(b)} for k, b in by_label.items()},
        "measured_s_ago": round(max(0, now - at) / 1000, 1),
    }


@app.task
async def measure_parked_backlog() -> None:
    """Runs for the worker's life (unless PAYSTREAM_PARKED_MEASURE_SECONDS is 0)."""
    if settings.parked_measure_seconds <= 0:
        return
    # From now on a worker that cannot measure is seen (PaystreamParkedUnmeasured): its
    # gauges are gone then, and an alert on a missing figure would stay silent.
    metrics.PARKED_MEASURED_AT.set_to_current_time()
    await asyncio.sleep(FIRST_MEASURE_SECONDS)
    failing = False
    while True:
        try:
            await measure_once(settings)
            if failing:
                log.info("parked backlog measured again")
            failing = False
        except (KafkaError, OSError, TimeoutError, ConfigurationError, PositionUnread) as exc:
            if not failing:  # once per outage, not once a minute
                log.warning("could not measure the parked backlog (%r); will retry", exc)
            failing = True
        except Exception:
            # A measurement must never end the worker (a failed task stops it).
            if not failing:
                log.exception("measuring the parked backlog failed; will retry")
            failing = True
        await asyncio.sleep(settings.parked_measure_seconds)
