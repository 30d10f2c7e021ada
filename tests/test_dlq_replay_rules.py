"""DLQ replay rules the suite did not pin (mutation testing, round 3)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

import paystream.dlq as dlq
from paystream.dlq import RECONCILED_HEADER, ParkedRecord, replay, stale_after_ms
from paystream.first_attempt import FIRST_ATTEMPT_HEADER
from paystream.streams.admin import bootstrap_servers
from tests.fixtures.pipeline import RawSend
from tests.test_dlq import _resent_records

pytestmark = [pytest.mark.asyncio(loop_scope="session")]


async def test_a_first_attempt_later_than_the_park_cannot_make_a_command_look_fresh() -> None:
    """The first attempt came before the park: a header saying later (a worker clock ahead,
    a corrupt value) must not make a stale command look fresh, to be re-sent and charged
    again by a provider that has forgotten its key."""
    parked_at = 1_000_000
    rec = ParkedRecord(
        "retry", 0, 1, b"acme", b"{}",
        ((FIRST_ATTEMPT_HEADER, b"%d" % (parked_at + 86_400_000)),), parked_at,
    )  # fmt: skip
    assert rec.first_seen_ms == parked_at


async def test_a_replay_never_carries_a_reconciled_mark_it_did_not_set(
    deployment_factory: Any,
) -> None:
    """The mark tells the worker to run a command past the provider's window: only
    `--include-stale-as-of` may set it, for what the operator checked. A parked record
    still carrying one (dead-lettered after a reconciled re-send) is re-sent without it."""
    dep = await deployment_factory()
    settings = dep.settings
    await dep.produce(
        settings.dlq_topic,
        RawSend(
            key=b"acme",
            value=b"{}",
            partition=0,
            headers=(("paystream-dlq-reason", b"internal_error"), (RECONCILED_HEADER, b"1")),
        ),
    )
    await replay(settings, [settings.dlq_topic])
    [resent] = await _resent_records(settings)
    names = [k for k, _ in resent.headers]
    assert RECONCILED_HEADER not in names
    assert "paystream-dlq-reason" not in names


async def test_a_long_replay_commits_as_it_goes(
    deployment_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Progress is committed every COMMIT_EVERY re-sends, not only at the end: a replay
    killed outright (no clean-up runs) is repeated only from its last commit."""

    class Killed(BaseException):
        pass

    dep = await deployment_factory()
    settings = dep.settings
    await dep.produce(settings.retry_topic, *((b"acme", b"cmd %d" % i, 0) for i in range(8)))
    monkeypatch.setattr(dlq, "COMMIT_EVERY", 3)

    async def killed(producer: Any, *args: Any, **kw: Any) -> None:  # SIGKILL: no commit
        await producer.stop()  # (only so that the test leaks no producer)

    monkeypatch.setattr(dlq, "_finish", killed)

    def kill_at_7(done: int, total: int) -> None:
        if done == 7:
            raise Killed

    with pytest.raises(Killed):
        await replay(settings, [settings.retry_topic], progress=kill_at_7)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers(settings.require_broker()),
        group_id=dlq.REPLAY_GROUP,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        committed = await consumer.committed(TopicPartition(settings.retry_topic, 0))
    finally:
        await consumer.stop()
    assert committed == 6


async def test_a_run_cut_short_by_a_limit_does_not_vouch_for_the_stale_records(
    deployment_factory: Any,
) -> None:
    """Only a run that reached every waiting record may name its start for
    --include-stale-as-of: after a --limit run, stale records it never saw (nobody checked
    them with the provider) would be re-sent marked reconciled, and charged again."""
    dep = await deployment_factory()
    settings = dep.settings
    await dep.produce(settings.retry_topic, *((b"acme", b"cmd %d" % i, 0) for i in range(3)))
    later = int(time.time() * 1000) + stale_after_ms(settings) + 60_000
    cut = await replay(settings, [settings.retry_topic], now_ms=later, limit=1)
    assert cut.stale == 1 and not cut.complete
    whole = await replay(settings, [settings.retry_topic], now_ms=later)
    assert whole.stale == 3 and whole.complete


async def test_records_parked_after_a_replay_began_wait_for_the_next_run(
    deployment_factory: Any,
) -> None:
    """A replay reads up to the ends it saw at its start: what is parked meanwhile (its
    own re-sends failing again, say) is not re-sent again by the same run."""
    dep = await deployment_factory()
    settings = dep.settings
    await dep.produce(settings.retry_topic, *((b"acme", b"old %d" % i, 0) for i in range(3)))
    reader = dlq._ParkedReader(settings, [settings.retry_topic], committed_only=True)
    await reader.start()
    try:
        await dep.produce(settings.retry_topic, *((b"acme", b"new %d" % i, 0) for i in range(3)))
        # Drop what the consumer fetched ahead already: the next fetch returns all six.
        await reader.consumer.seek_to_beginning(TopicPartition(settings.retry_topic, 0))
        got = [rec.value async for batch in reader.batches() for rec in batch]
    finally:
        await reader.stop()
    assert got == [b"old 0", b"old 1", b"old 2"]


async def test_only_a_source_on_the_commands_topic_names_the_partition() -> None:
    """A source on another topic (an older commands topic, partitioned otherwise) says
    nothing about where the tenant's state is now: the producer's partitioner decides."""

    def parked(source: bytes) -> ParkedRecord:
        return ParkedRecord("retry", 0, 1, b"acme", b"{}", (("paystream-source", source),))

    parts = {0, 1, 2, 3}
    assert dlq._source_partition(parked(b"cmds/2/41"), "cmds", parts) == 2
    assert dlq._source_partition(parked(b"cmds-v1/2/41"), "cmds", parts) is None
    assert dlq._source_partition(parked(b"cmds/7/41"), "cmds", parts) is None


async def test_a_fenced_commit_outranks_a_producer_that_failed_to_stop() -> None:
    """Both went wrong on the way out: the replay exits 4 (another replay committed),
    not 1 for the producer (review finding)."""

    class _Producer:
        async def stop(self) -> None:
            raise OSError("broker gone")

    class _Fenced:
        async def commit(self, sent: Any) -> None:
            raise dlq.ConcurrentReplayError("another `paystream dlq replay` committed")

    with pytest.raises(dlq.ConcurrentReplayError):
        await dlq._finish(_Producer(), _Fenced(), {}, quiet=False)  # type: ignore[arg-type]
