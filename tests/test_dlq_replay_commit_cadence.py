"""A replay killed outright (SIGKILL, OOM, node loss) repeats at most COMMIT_EVERY
re-sends, even with a partition held back beside the one being re-sent (review h67h)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

import paystream.dlq as dlq
from paystream.dlq import replay
from paystream.first_attempt import FIRST_ATTEMPT_HEADER
from paystream.streams.admin import bootstrap_servers
from tests.fixtures.pipeline import RawSend

pytestmark = [pytest.mark.asyncio(loop_scope="session")]

N = 150  # records per partition
HELD, FRESH = 1, 0


async def test_a_killed_replay_beside_a_held_partition_committed_as_it_went(
    deployment_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Partition 1 of the retry topic starts with a command first run two days ago (held
    back, with everything after it); partition 0 holds 150 fresh ones. The replay is
    killed outright after re-sending 140 of them: it should have committed at least 100
    (it commits every COMMIT_EVERY = 100). It committed none, because the count it
    commits on also counts the held-back records, and every 100th record it handled was
    one of those: the next replay re-sends all 140 again (each answered a second time)."""

    class Killed(BaseException):
        pass

    dep = await deployment_factory()
    settings = dep.settings
    two_days_ago = int(time.time() * 1000) - 2 * 86_400_000
    stale = RawSend(
        key=b"acme", value=b"stale", partition=HELD,
        headers=((FIRST_ATTEMPT_HEADER, b"%d" % two_days_ago),),
    )  # fmt: skip
    await dep.produce(
        settings.retry_topic,
        stale,
        *((b"acme", b"held %d" % i, HELD) for i in range(N)),
        *((b"acme", b"fresh %d" % i, FRESH) for i in range(N)),
    )

    # The first fetch brings both partitions at once (as one broker's fetch response can:
    # here made sure of, not left to timing), the fresh partition's records first.
    original_fetch = dlq._ParkedReader.fetch

    async def fetch_both(self: Any, partitions: Any = None, **kw: Any) -> list[Any]:
        out: list[Any] = []
        while len(out) < 2 * N + 1 and self.pending:
            out += await original_fetch(self, partitions, **kw)
        return sorted(out, key=lambda r: (r.partition != FRESH, r.offset))

    monkeypatch.setattr(dlq._ParkedReader, "fetch", fetch_both)

    async def killed(producer: Any, *args: Any, **kw: Any) -> None:  # SIGKILL: no commit
        await producer.stop()  # (only so that the test leaks no producer)

    monkeypatch.setattr(dlq, "_finish", killed)
    resent = 0

    def observe(_rec: Any, what: str) -> None:
        nonlocal resent
        if what == dlq.REPLAYED:
            resent += 1
            if resent == 140:
                raise Killed

    with pytest.raises(Killed):
        await replay(settings, [settings.retry_topic], observe=observe)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers(settings.require_broker()),
        group_id=dlq.REPLAY_GROUP,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        committed = await consumer.committed(TopicPartition(settings.retry_topic, FRESH))
    finally:
        await consumer.stop()
    assert (committed or 0) >= 100, (
        f"committed {committed} after 140 re-sends: the next replay re-sends them all again"
    )
