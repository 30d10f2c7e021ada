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
