"""Changelog records stay under the broker's message size (one it refuses fails the batch
on every redelivery): an entity sheds the oldest outcomes it keeps for replays."""

from __future__ import annotations

import faust
import orjson

from paystream.tables.changelog import (
    CHANGELOG_VALUE_MAX_BYTES,
    BatchedChangelogTable,
    collect_changelog,
)
from paystream.tables.records import shed_applied


def _table() -> BatchedChangelogTable:
    app = faust.App("changelog-size-test", broker="kafka://127.0.0.1:1", store="memory://")
    return app.tables.add(BatchedChangelogTable(app, name="things", default=None, partitions=4))


def _entity(outcomes: int, each: int) -> dict[str, object]:
    applied = {
        f"cmd{i}": {"type": "customer.updated", "data": {"m": "y" * each}} for i in range(outcomes)
    }
    return {"id": "c1", "version": outcomes, "applied": applied}


def test_an_entity_over_the_limit_keeps_its_newest_outcomes() -> None:
    table = _table()
    with collect_changelog() as batch:
        batch.add(table, 0, "t:c1", _entity(16, 100_000), None)
        batch.add(table, 1, "t:small", _entity(16, 100), None)
        batch.add(table, 2, "t:gone", None, "raw")  # a deletion, as Faust passes it
        big, small, gone = batch.records()
    assert gone.value is None
    assert len(big.value) <= CHANGELOG_VALUE_MAX_BYTES
    kept = orjson.loads(big.value)["applied"]
    assert list(kept) == [f"cmd{i}" for i in range(12, 16)]  # the newest, in order
    assert len(orjson.loads(small.value)["applied"]) == 16  # under the limit: untouched


def test_shedding_always_ends() -> None:
    one = _entity(1, 10)
    shed = shed_applied(one)
    assert shed is not None and shed["applied"] == {}
    assert shed_applied(shed) is None
    assert shed_applied({"status": "x"}) is None and shed_applied(None) is None


def test_plain_json_records_are_the_bytes_faust_writes() -> None:
    """The batch's own JSON call gives Faust's changelog bytes: separators, key order,
    non-ASCII text, floats, big ints, datetimes, decimals and non-str keys included."""
    import datetime
    import decimal

    from faust.serializers import codecs

    table = _table()
    values: list[dict[object, object]] = [
        {"b": 1, "a": [1.5, 1e300, -0.0, 2**63 - 1, None, True], "é": "ü\u2028\U0001f600"},
        {"at": datetime.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=datetime.UTC)},
        {"naive": datetime.datetime(2026, 1, 2), "d": datetime.date(2026, 1, 2)},
        {"amount": decimal.Decimal("10.50"), 3: "int key", "nested": {"x": {"y": []}}},
        _entity(16, 10),
    ]
    with collect_changelog() as batch:
        for i, value in enumerate(values):
            batch.add(table, i % 4, f"k\u00e9{i}", value, None)
        records = batch.records()
    topic = table.changelog_topic
    for i, (record, value) in enumerate(zip(records, values, strict=True)):
        assert record.key == codecs.dumps("json", f"k\u00e9{i}")
        assert record.key == topic.prepare_key(f"k\u00e9{i}", None)[0]
        assert record.value == codecs.dumps("json", value)
        assert record.value == topic.prepare_value(value, None)[0]
        assert (record.topic, record.partition, record.headers) == (
            topic.get_topic_name(),
            i % 4,
            [],
        )


def test_plain_json_fast_call_falls_back_for_any_key_not_exactly_a_str() -> None:
    """The batch first serialises without OPT_NON_STR_KEYS and falls back to Faust's call
    when orjson refuses a key: every kind of key (nested too) gives Faust's bytes, as an
    exact ``bytes`` object, and a value Faust cannot serialise fails as it does."""
    import datetime
    import enum

    import pytest
    from faust.serializers import codecs

    class Text(str):
        pass

    class Colour(enum.Enum):
        RED = 1

    class Named(enum.StrEnum):
        A = "a"

    class Mapping(dict):  # type: ignore[type-arg]
        pass

    table = _table()
    values: list[dict[object, object]] = [
        {Text("k"): 1},
        {"a": {"b": {Text("c"): [1, {"d": 2}]}}},
        {Named.A: 1, Colour.RED: 2},
        {1: "one", "1": "also one"},  # two "1" keys, as Faust writes them
        {None: 1, True: 2, 1.5: 3},
        {datetime.date(2026, 1, 2): "date key"},
        {"list": [{"x": 1}, {2: "y"}]},
        {"sub": Mapping({3: "in a dict subclass"})},
        {"plain": {"only": ["str", "keys"]}, "t": Text("value")},
    ]
    with collect_changelog() as batch:
        for i, value in enumerate(values):
            batch.add(table, 0, Text(f"k{i}") if i == 0 else f"k{i}", value, None)
        records = batch.records()
    for i, (record, value) in enumerate(zip(records, values, strict=True)):
        assert record.value == codecs.dumps("json", value), value
        assert type(record.value) is bytes and type(record.key) is bytes
        assert record.key == codecs.dumps("json", f"k{i}")
    with collect_changelog() as batch:
        batch.add(table, 0, "bad", {"s": "\ud800"}, None)  # a lone surrogate
        with pytest.raises(TypeError):
            codecs.dumps("json", {"s": "\ud800"})
        with pytest.raises(TypeError):
            batch.records()
