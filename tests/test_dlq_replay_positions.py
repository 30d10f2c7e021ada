"""Where replays got to outlives their consumer group's offsets (review finding).

The replay assigns its partitions and commits only when it re-sends something: Kafka
drops such a group's offsets `offsets.retention.minutes` (7 days by default) after its
last commit, while parked records are kept until handled. After a quiet week every
record ever parked read as waiting, and the next replay re-sent them all. The embedded
broker drops no offsets: a group with none (what Kafka answers once they are gone) is
simulated by another group name."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaConnectionError

from paystream import dlq, replay_positions
from paystream.replay_positions import (
    Position,
    PositionsUnwritten,
    ReplayPositions,
    _key,
    read_positions,
)
from paystream.streams.admin import bootstrap_servers
from tests.test_dlq import _replay, _resent

pytestmark = [pytest.mark.asyncio(loop_scope="session")]


def _offsets_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dlq, "REPLAY_GROUP", f"{dlq.REPLAY_GROUP}-dropped-{uuid.uuid4().hex}")


async def test_a_replay_after_the_groups_offsets_are_dropped_re_sends_nothing_again(
    deployment_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    dep = await deployment_factory()
    settings = dep.settings
    await dep.produce(settings.dlq_topic, (b"acme", b"junk 1", 0), (b"acme", b"junk 2", 0))
    assert len((await _replay(settings, [settings.dlq_topic])).handled) == 2
    kept = await read_positions(settings, [TopicPartition(settings.dlq_topic, 0)])
    assert kept[TopicPartition(settings.dlq_topic, 0)].offset == 2
    _offsets_dropped(monkeypatch)
    again = await _replay(settings, [settings.dlq_topic])
    assert again.handled == [] and again.stale == []
    assert await _resent(settings) == [b"junk 1", b"junk 2"]  # once each
    # A record parked since is the one replayed next, and the position moves on.
    await dep.produce(settings.dlq_topic, (b"acme", b"junk 3", 0))
    assert [r.value for r in (await _replay(settings, [settings.dlq_topic])).handled] == [b"junk 3"]
    kept = await read_positions(settings, [TopicPartition(settings.dlq_topic, 0)])
    assert kept[TopicPartition(settings.dlq_topic, 0)].offset == 3


async def test_list_and_backlog_count_nothing_waiting_once_the_offsets_are_dropped(
    deployment_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    dep = await deployment_factory()
    settings = dep.settings
    await dep.produce(settings.retry_topic, (b"acme", b"junk 1", 1))
    await _replay(settings, [settings.retry_topic])
    _offsets_dropped(monkeypatch)
    records, waiting, done = await dlq.list_parked_and_done(
        settings, [settings.retry_topic], limit=None
    )
    assert (records, waiting, done) == ([], 0, {(settings.retry_topic, 1): 1})
    found = await dlq.backlog(settings, [settings.retry_topic])
    assert found[settings.retry_topic].waiting == 0


async def test_without_the_positions_topic_a_replay_still_runs_and_says_so(
    deployment_factory: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deployment that has not run `paystream topics` since: the group's offsets alone
    (as before), a warning, and no topic made by a send (a broker creating topics on
    demand would make one neither compacted nor kept)."""
    dep = await deployment_factory()
    settings = dep.settings.model_copy(
        update={"replay_positions_topic": f"missing-{uuid.uuid4().hex[:8]}"}
    )
    await dep.produce(settings.dlq_topic, (b"acme", b"junk 1", 0))
    monkeypatch.setattr(replay_positions, "_missing_said", False)
    with caplog.at_level(logging.WARNING, logger="paystream.replay_positions"):
        assert len((await _replay(settings, [settings.dlq_topic])).handled) == 1
    assert "run `paystream topics`" in caplog.text
    assert (await _replay(settings, [settings.dlq_topic])).handled == []
    assert await read_positions(settings, [TopicPartition(settings.dlq_topic, 0)]) == {}


async def test_a_position_of_a_topic_made_again_does_not_pass_over_its_new_records(
    deployment_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The topic's first incarnation was replayed to 5; deleted and made again (Kafka
    drops the group's offsets with it: simulated by another group name), 7 records
    parked since: the record before 5 is not the one the position names (review)."""
    dep = await deployment_factory()
    s = dep.settings
    kept = ReplayPositions(s)
    await kept.write({TopicPartition(s.dlq_topic, 0): Position(5, 1_000)})
    await kept.close()
    _offsets_dropped(monkeypatch)
    await dep.produce(s.dlq_topic, *((b"acme", f"new {i}".encode(), 0) for i in range(7)))
    assert (await dlq.backlog(s, [s.dlq_topic]))[s.dlq_topic].waiting == 7


async def test_the_next_replay_writes_a_position_that_could_not_be_written(
    deployment_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Committed but not written (a broker error, or a crash between the two): the next
    replay writes it, even with nothing to re-send (review finding)."""
    dep = await deployment_factory()
    s = dep.settings
    await dep.produce(s.dlq_topic, (b"acme", b"junk 1", 0), (b"acme", b"junk 2", 0))

    async def broker_blip(self: Any, committed: Any) -> None:
        raise KafkaConnectionError("blip")

    with monkeypatch.context() as m:
        m.setattr(ReplayPositions, "_write", broker_blip)
        with pytest.raises(PositionsUnwritten):
            await _replay(s, [s.dlq_topic])  # re-sent and committed, position unwritten
    assert (await _replay(s, [s.dlq_topic])).handled == []  # nothing to re-send
    _offsets_dropped(monkeypatch)  # a quiet week
    assert (await dlq.backlog(s, [s.dlq_topic]))[s.dlq_topic].waiting == 0


async def test_a_missing_positions_topic_is_warned_of_once(
    deployment_factory: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Every worker measures the backlog once a minute: not a warning each time."""
    monkeypatch.setattr(replay_positions, "_missing_said", False)
    dep = await deployment_factory()
    s = dep.settings.model_copy(update={"replay_positions_topic": f"missing-{uuid.uuid4().hex}"})
    await dep.produce(s.retry_topic, (b"acme", b"junk", 0))
    with caplog.at_level(logging.WARNING, logger="paystream.replay_positions"):
        for _ in range(3):
            await dlq.backlog(s, [s.retry_topic, s.dlq_topic])
    assert len([r for r in caplog.records if r.name == "paystream.replay_positions"]) == 1


async def _write_v1(settings: Any, tp: TopicPartition, offset: int) -> None:
    """A position without the timestamp it names (a write whose timestamp could not be read
    would be one): never trusted, so rewritten."""
    p = AIOKafkaProducer(bootstrap_servers=bootstrap_servers(settings.require_broker()), acks="all")
    await p.start()
    try:
        await p.send_and_wait(
            settings.replay_positions_topic, key=_key(tp), value=orjson.dumps({"offset": offset})
        )
    finally:
        await p.stop()


async def test_a_position_without_its_timestamp_is_repaired_before_the_offsets_drop(
    deployment_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    dep = await deployment_factory()
    s = dep.settings
    tp = TopicPartition(s.dlq_topic, 0)
    await dep.produce(s.dlq_topic, (b"acme", b"junk 1", 0), (b"acme", b"junk 2", 0))
    assert len((await _replay(s, [s.dlq_topic])).handled) == 2
    await _write_v1(s, tp, 2)
    assert (await _replay(s, [s.dlq_topic])).handled == []  # nothing to re-send
    assert (await read_positions(s, [tp]))[tp].timestamp_ms is not None  # rewritten
    _offsets_dropped(monkeypatch)  # a quiet week
    assert (await dlq.backlog(s, [s.dlq_topic]))[s.dlq_topic].waiting == 0


async def test_a_position_whose_timestamp_was_not_read_is_repaired(
    deployment_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`_timestamp_before` reads nothing in time (a slow broker): the position is left for
    the next replay to write, not written without its timestamp (never trusted then, and
    never rewritten as its offset matched; review finding)."""
    dep = await deployment_factory()
    s = dep.settings
    tp = TopicPartition(s.dlq_topic, 0)
    await dep.produce(s.dlq_topic, (b"acme", b"junk 1", 0), (b"acme", b"junk 2", 0))
    kept = ReplayPositions(s)
    await kept.write({tp: Position(0, None)})  # stale: differs from the group's next
    await kept.close()
    assert len((await _replay(s, [s.dlq_topic])).handled) == 2
    await _write_v1(s, tp, 1)  # committed 2, kept 1: unkept

    real = dlq._ParkedReader._timestamp_before

    async def slow(self: Any, tp_: Any, offset: int) -> int | None:
        return None  # not read in time

    monkeypatch.setattr(dlq._ParkedReader, "_timestamp_before", slow)
    assert (await _replay(s, [s.dlq_topic])).handled == []
    monkeypatch.setattr(dlq._ParkedReader, "_timestamp_before", real)
    assert (await _replay(s, [s.dlq_topic])).handled == []  # broker fine again
    _offsets_dropped(monkeypatch)
    assert (await dlq.backlog(s, [s.dlq_topic]))[s.dlq_topic].waiting == 0


async def test_no_record_before_the_start_leaks_after_verification(
    deployment_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`_timestamp_before` fetches offset-1 on the reader's consumer; the next fetch
    starts at the position, neither earlier nor later (also a --limit and --all run)."""
    dep = await deployment_factory()
    s = dep.settings
    await dep.produce(s.dlq_topic, *((b"acme", f"junk {i}".encode(), 0) for i in range(6)))
    assert len((await _replay(s, [s.dlq_topic], limit=3)).handled) == 3
    _offsets_dropped(monkeypatch)
    records, waiting, _ = await dlq.list_parked_and_done(s, [s.dlq_topic], limit=None)
    assert [r.offset for r in records] == [3, 4, 5] and waiting == 3
    records, _, _ = await dlq.list_parked_and_done(s, [s.dlq_topic], limit=None, everything=True)
    assert [r.offset for r in records] == list(range(6))
    dry = await _replay(s, [s.dlq_topic], dry_run=True, limit=1)
    assert [r.offset for r in dry.handled] == [3]
    got = await _replay(s, [s.dlq_topic], limit=2)
    assert [r.offset for r in got.handled] == [3, 4]
    # group offsets now 5 (another group name: fresh), positions 5; check_positions path
    got = await _replay(s, [s.dlq_topic])
    assert [r.offset for r in got.handled] == [5]
    assert await _resent(s) == [f"junk {i}".encode() for i in range(6)]


async def _not_read_in_time(self: Any, tp: Any, offset: int) -> int | None:
    raise dlq.PositionUnread("not read in time")


async def test_a_slow_read_of_a_kept_position_is_no_topic_made_again(
    deployment_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow broker is no proof of a topic made again (read so, everything replayed
    counted as waiting, and a replay re-sent it all; review finding): the measurement
    fails (the worker says so and tries again), the replay stops, nothing is re-sent."""
    dep = await deployment_factory()
    s = dep.settings
    await dep.produce(s.dlq_topic, (b"acme", b"junk 1", 0), (b"acme", b"junk 2", 0))
    assert len((await _replay(s, [s.dlq_topic])).handled) == 2
    _offsets_dropped(monkeypatch)  # a quiet week
    monkeypatch.setattr(dlq._ParkedReader, "_timestamp_before", _not_read_in_time)
    with pytest.raises(dlq.PositionUnread):
        await dlq.backlog(s, [s.dlq_topic])
    with pytest.raises(dlq.PositionUnread):
        await _replay(s, [s.dlq_topic])
    assert await _resent(s) == [b"junk 1", b"junk 2"]  # once each


async def test_the_record_a_position_names_not_read_in_time_raises(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class _Silent:
        async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[Any, int]:
            return dict.fromkeys(tps, 0)

        def seek(self, tp: TopicPartition, offset: int) -> None:
            pass

        async def getmany(self, *tps: Any, **kw: Any) -> dict[Any, Any]:
            return {}

    monkeypatch.setattr(dlq, "POSITION_READ_SECONDS", 0.01)
    reader = object.__new__(dlq._ParkedReader)
    reader.consumer = _Silent()  # type: ignore[assignment]
    with pytest.raises(dlq.PositionUnread, match="within 0 s"):
        await reader._timestamp_before(TopicPartition("paystream.commands.dlq", 0), 5)
