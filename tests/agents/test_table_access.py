"""The entity tables' own read and write paths (in memory) do what Faust's do: the same
values, the same changelog record for the current event's partition, the same sensor
calls. The agent harness uses plain dicts, so only these tests (and the e2e suite) see
them."""

from __future__ import annotations

import weakref
from typing import Any

import faust
import orjson
import pytest
from faust.sensors import Sensor
from faust.streams import _current_event

from paystream.tables.changelog import BatchedChangelogTable, collect_changelog

SOURCE = "paystream.commands"


class _Counting(Sensor):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, Any]] = []

    def on_table_get(self, table: Any, key: Any) -> None:
        self.calls.append(("get", key))

    def on_table_set(self, table: Any, key: Any, value: Any) -> None:
        self.calls.append(("set", key))


class _Message:
    topic = SOURCE

    def __init__(self, partition: int) -> None:
        self.partition = partition


class _Event:
    def __init__(self, partition: int) -> None:
        self.message = _Message(partition)


def _table(name: str) -> tuple[BatchedChangelogTable, _Counting]:
    app = faust.App(f"table-access-{name}", broker="kafka://127.0.0.1:1", store="memory://")
    sensor = _Counting()
    app.sensors.add(sensor)
    table = app.tables.add(BatchedChangelogTable(app, name=name, default=None, partitions=4))
    # What Faust checks once per source topic against the broker's partition counts.
    table._verified_source_topics_for_partitions.add(SOURCE)
    return table, sensor


@pytest.fixture
def event_on_partition_2() -> Any:
    event = _Event(2)
    token = _current_event.set(weakref.ref(event))  # type: ignore[arg-type]
    yield event
    _current_event.reset(token)


def test_reads_answer_as_a_mapping_does_and_are_seen_by_sensors() -> None:
    table, sensor = _table("reads")
    table.data["t:a"] = {"v": 1}
    assert table.get("t:a") == {"v": 1}
    assert table.get("t:missing") is None
    assert table.get("t:missing", "fallback") == "fallback"
    assert sensor.calls == [("get", "t:a"), ("get", "t:missing"), ("get", "t:missing")]


def test_a_write_in_a_batch_queues_its_record_for_the_event_partition(
    event_on_partition_2: Any,
) -> None:
    table, sensor = _table("writes")
    with collect_changelog() as batch:
        table["t:a"] = {"v": 1}
        table["t:a"] = {"v": 2}  # coalesced: the last write of the key
        table["t:b"] = {"v": 3}
        records = batch.records()
    assert table.data["t:a"] == {"v": 2} and table.get("t:b") == {"v": 3}
    assert [(r.topic, r.partition, r.key) for r in records] == [
        (table.changelog_topic.get_topic_name(), 2, b'"t:a"'),
        (table.changelog_topic.get_topic_name(), 2, b'"t:b"'),
    ]
    assert [orjson.loads(r.value) for r in records] == [{"v": 2}, {"v": 3}]
    assert [c for c in sensor.calls if c[0] == "set"] == [
        ("set", "t:a"),
        ("set", "t:a"),
        ("set", "t:b"),
    ]


def test_a_write_without_a_command_event_is_refused() -> None:
    # As Faust refuses it: the partition comes from the event being processed.
    table, _ = _table("no-event")
    with collect_changelog(), pytest.raises(TypeError):
        table["t:a"] = {"v": 1}
    assert table.get("t:a") is None and "t:a" not in table.data._key_partition
    assert table.get("t:a") is None


def test_a_batched_write_is_what_fausts_path_does(event_on_partition_2: Any) -> None:
    """The in-memory write (its batch queueing and key tracking inlined) against Faust's
    own ``__setitem__`` (which queues through ``send_changelog``): the same records, the
    same store, the same tracked partitions, the same sensor calls; also for a table's
    first write, before its store exists (Faust's path makes it)."""
    ours, our_sensor = _table("fast-writes")
    theirs, their_sensor = _table("faust-writes")
    assert ours._data is None  # no store yet: the first write takes Faust's path
    writes: list[tuple[str, Any]] = [
        ("t:a", {"v": 1}),
        ("t:b", {"v": 2, "nested": {"x": [1, 2]}}),
        ("t:a", {"v": 3}),  # coalesced
        ("t:\u00e9", {}),
        ("t:c", {"deep": {"er": None}}),
    ]
    with collect_changelog() as our_batch:
        for key, value in writes:
            ours[key] = value
        our_records = our_batch.records()
    with collect_changelog() as their_batch:
        for key, value in writes:
            faust.Table.__setitem__(theirs, key, value)
        their_records = their_batch.records()
    assert [(r.partition, r.key, r.value, r.headers) for r in our_records] == [
        (r.partition, r.key, r.value, r.headers) for r in their_records
    ]
    assert dict(ours.data.data) == dict(theirs.data.data)
    assert (
        ours.data._key_partition
        == theirs.data._key_partition
        == {
            "t:a": 2,
            "t:b": 2,
            "t:\u00e9": 2,
            "t:c": 2,
        }
    )
    assert our_sensor.calls == their_sensor.calls


def test_a_batched_write_with_the_producers_partitioner_is_refused(
    event_on_partition_2: Any,
) -> None:
    # (``use_partitioner``: no partition for the key; a batch cannot place its record.)
    table, _ = _table("partitioner")
    table.use_partitioner = True
    table.data  # noqa: B018 (the store made: the in-memory path)
    with collect_changelog(), pytest.raises(TypeError):
        table["t:a"] = {"v": 1}
    assert table.get("t:a") is None and "t:a" not in table.data._key_partition
