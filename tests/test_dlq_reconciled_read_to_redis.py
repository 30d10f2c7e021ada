"""`--include-stale-as-of T` and the parks the run at T never read (reviews h67h, h67j): one
whose record time (CreateTime, set by the worker's producer when it built the batch) is
before T but that landed after that run read the topic's ends (a park produced during a
broker hiccup, delivered late) was re-sent as reconciled. The run keeps, beside its time,
where it read each partition to. With Redis failing, a Redis error reading those positions
fell back to record times, and a run whose positions Redis did not take still had its
time recorded."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis
from aiokafka import AIOKafkaProducer

from paystream.dlq import RECONCILED_HEADER, replay
from paystream.errors import PaystreamError
from paystream.first_attempt import FIRST_ATTEMPT_HEADER
from paystream.held_back import HeldBackTimes
from paystream.streams.admin import bootstrap_servers
from tests.fixtures.pipeline import RawSend
from tests.test_dlq import _resent_records

pytestmark = [pytest.mark.asyncio(loop_scope="session")]


async def _first_run_with_a_late_park(dep: Any) -> Any:
    settings = dep.settings
    two_days_ago = b"%d" % (int(time.time() * 1000) - 2 * 86_400_000)
    old = ((FIRST_ATTEMPT_HEADER, two_days_ago),)
    await dep.produce(
        settings.retry_topic, RawSend(key=b"acme", value=b"shown", partition=0, headers=old)
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers(settings.require_broker()))
    await producer.start()
    try:
        batch = producer.create_batch()
        assert batch.append(key=b"acme", value=b"never shown", timestamp=None, headers=list(old))
        time.sleep(0.01)  # (the batch stamped a few ms before the run's time, as built)
        first = await replay(settings, [settings.retry_topic])
        assert first.stale == 1 and first.complete
        await (await producer.send_batch(batch, settings.retry_topic, partition=1))
    finally:
        await producer.stop()
    return first


async def test_a_stale_park_landing_after_the_checked_run_read_is_not_reconciled(
    deployment_factory: Any,
) -> None:
    dep = await deployment_factory()
    settings = dep.settings
    first = await _first_run_with_a_late_park(dep)
    assert [h.where for h in first.held_back] == [f"{settings.retry_topic}[0]@0"]
    # The operator checked "shown" with the provider, and names the first run's time.
    await replay(settings, [settings.retry_topic], stale_checked_as_of_ms=first.started_ms)
    assert await _reconciled(settings) == [b"shown"], (
        "nobody was shown 'never shown', stale for a day past the provider's key window"
    )


async def _reconciled(settings: Any) -> list[Any]:
    return [
        r.value for r in await _resent_records(settings) if RECONCILED_HEADER in dict(r.headers)
    ]


async def test_a_redis_error_reading_where_the_run_read_to_does_not_reconcile_a_late_park(
    deployment_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI checked the named time against Redis (it answered), then Redis times out
    once when the replay asks where that run read to: the replay goes on judging by time
    alone, and re-sends as reconciled the park nobody was shown."""
    dep = await deployment_factory()
    settings = dep.settings
    first = await _first_run_with_a_late_park(dep)

    def blip(self: Any, as_of_ms: int) -> Any:
        raise redis.exceptions.TimeoutError("Timeout reading from socket")

    monkeypatch.setattr(HeldBackTimes, "read_to", blip)
    try:
        await replay(settings, [settings.retry_topic], stale_checked_as_of_ms=first.started_ms)
    except PaystreamError:
        return  # refused: nothing re-sent as reconciled blindly (the fix)
    reconciled = await _reconciled(settings)
    assert reconciled == [b"shown"], (
        f"re-sent as reconciled after a Redis blip: {reconciled} ('never shown' was shown "
        "to nobody, a day past the provider's key window)"
    )


async def test_a_run_whose_read_to_redis_did_not_take_is_not_vouched_for(
    deployment_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis refuses the read-to write at the end of the first run (a blip), then takes
    the printed time the CLI records right after: the time is named without --no-lease,
    and the replay judges by time alone (a log warning only)."""
    from paystream.cli.dlq import _record_printed

    dep = await deployment_factory()
    settings = dep.settings

    def refused(self: Any, *a: Any) -> None:
        raise redis.exceptions.ConnectionError("Connection reset by peer")

    with monkeypatch.context() as m:
        m.setattr(HeldBackTimes, "record_read_to", refused)
        first = await _first_run_with_a_late_park(dep)
    # As `dlq replay` does after a complete run that held records back (fix: only when
    # where it read to was kept beside it, in the same Redis transaction).
    if getattr(first, "read_to_kept", True):
        _record_printed(settings, first.started_ms, "retry")
    times = HeldBackTimes(settings.redis_url, settings.commands_topic)
    try:
        printed = times.printed(first.started_ms, "retry")
    finally:
        times.close()
    if not printed:
        return  # the CLI refuses the time: the operator runs again (the fix)
    try:
        await replay(settings, [settings.retry_topic], stale_checked_as_of_ms=first.started_ms)
    except PaystreamError:
        return
    reconciled = await _reconciled(settings)
    assert reconciled == [b"shown"], f"re-sent as reconciled: {reconciled}"
