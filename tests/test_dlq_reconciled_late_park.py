"""`--include-stale-as-of T` re-sends as reconciled a stale park the run at T never read
(review h67h): one whose record time (CreateTime, set by the worker's producer when it
built the batch) is before T but that landed on the retry topic after that run read the
topic's ends (a park produced during a broker hiccup, delivered seconds late). The run
now keeps, beside its time, where it read each partition to."""

from __future__ import annotations

import time
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from paystream.dlq import RECONCILED_HEADER, replay
from paystream.first_attempt import FIRST_ATTEMPT_HEADER
from paystream.streams.admin import bootstrap_servers
from tests.fixtures.pipeline import RawSend
from tests.test_dlq import _resent_records

pytestmark = [pytest.mark.asyncio(loop_scope="session")]


async def test_a_stale_park_landing_after_the_checked_run_read_is_not_reconciled(
    deployment_factory: Any,
) -> None:
    dep = await deployment_factory()
    settings = dep.settings
    two_days_ago = b"%d" % (int(time.time() * 1000) - 2 * 86_400_000)
    old = ((FIRST_ATTEMPT_HEADER, two_days_ago),)
    # A stale park the first run shows the operator (so that it prints its time).
    await dep.produce(
        settings.retry_topic, RawSend(key=b"acme", value=b"shown", partition=0, headers=old)
    )
    # A worker's park of another stale command, its record batch built (its CreateTime
    # set) as the worker's batch producer builds one, and delivered late.
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers(settings.require_broker()))
    await producer.start()
    try:
        batch = producer.create_batch()
        assert batch.append(key=b"acme", value=b"never shown", timestamp=None, headers=list(old))
        time.sleep(0.01)

        first = await replay(settings, [settings.retry_topic])
        assert first.stale == 1 and first.complete
        assert [h.where for h in first.held_back] == [f"{settings.retry_topic}[0]@0"]

        await (await producer.send_batch(batch, settings.retry_topic, partition=1))
    finally:
        await producer.stop()

    # The operator checked "shown" with the provider, and names the first run's time.
    await replay(settings, [settings.retry_topic], stale_checked_as_of_ms=first.started_ms)
    reconciled = [
        r.value for r in await _resent_records(settings) if RECONCILED_HEADER in dict(r.headers)
    ]
    assert reconciled == [b"shown"], (
        f"re-sent as reconciled: {reconciled}; nobody was shown 'never shown', stale for a "
        "day past the provider's key window"
    )
