"""Which entities retention removes, and how the sweep walks the tables: a bounded
number of keys per batch, active partitions only, a rest between passes.

The tables here are dicts carrying a memory store's key → partition bookkeeping (as
tables/changelog.py keeps it for Faust's memory store); tests/e2e/test_entity_retention.py
runs the sweep in a real worker on both stores."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from faust.stores.memory import Store as MemoryStore
from faust.streams import current_event
from rocksdict import Options, Rdict

from paystream.errors import ConfigurationError
from paystream.settings import load_settings
from paystream.tables import retention
from paystream.tables.retention import RetentionSweep, expired, last_change, settled

DAY = 86400.0
RETENTION = 540 * DAY
NOW = 2_000_000_000.0
OLD = NOW - RETENTION - 1
TOPIC = "paystream.commands"


def entity(kind: str, *ats: float | None, **fields: Any) -> dict[str, Any]:
    applied = {
        f"c{i}": {"type": f"{kind}.x", "data": {}, **({} if at is None else {"at": at})}
        for i, at in enumerate(ats)
    }
    return {"entity_type": kind, "id": "e", "tenant_id": "t", "applied": applied, **fields}


class Table(dict[str, Any]):
    """A dict table with a memory store's key → partition bookkeeping; each deletion
    notes the changelog partition Faust would send its tombstone to."""

    def __init__(self, name: str, rows: dict[str, tuple[int, dict[str, Any]]]) -> None:
        super().__init__({key: value for key, (_, value) in rows.items()})
        self.name = name
        self.data = object.__new__(MemoryStore)
        self.data.data = self  # (the store's dict: these rows)
        self.data._key_partition = {key: p for key, (p, _) in rows.items()}
        self.tombstones: list[tuple[str, int]] = []

    def __delitem__(self, key: str) -> None:
        event = current_event()
        assert event is not None, "deleted outside a partition's context"
        self.tombstones.append((key, event.message.partition))
        super().__delitem__(key)
        self.data._key_partition.pop(key, None)  # (as BatchedChangelogTable.on_key_del)


def test_last_change_is_the_newest_remembered_outcome() -> None:
    assert last_change(entity("payment", 5.0, 9.0, 7.0)) == 9.0
    assert last_change(entity("payment", None, 3.0)) == 3.0
    assert last_change(entity("payment", None)) is None  # an older version's: unknown
    assert last_change({"applied": None}) is None


@pytest.mark.parametrize(
    ("record", "is_settled"),
    [
        (entity("payment", OLD, status="requires_capture"), True),
        (entity("refund", OLD), True),
        (entity("dispute", OLD), True),
        (entity("customer", OLD, deleted=False), False),  # new payments may name it
        # Deleted only: it may still be erased, which needs the record (review finding).
        (entity("customer", OLD, deleted=True), False),
        (entity("customer", OLD, deleted=True, erased=True), True),
        (entity("payment_method", OLD, attached=True), False),
        (entity("payment_method", OLD, attached=False), True),
        (entity("something_else", OLD), False),
    ],
)
def test_what_is_settled(record: dict[str, Any], is_settled: bool) -> None:
    assert settled(record) is is_settled
    assert expired(record, NOW, RETENTION) is is_settled


def test_an_attached_method_goes_with_its_settled_customer() -> None:
    """Deleting a customer leaves their methods attached: they go once the customer is
    settled and as old, not before; a customer not found (or not readable) keeps them."""
    method = entity("payment_method", OLD, attached=True, customer_id="c")
    live = entity("customer", OLD)
    deleted_long_ago = entity("customer", OLD, deleted=True, erased=True)
    deleted_lately = entity("customer", OLD, NOW - DAY, deleted=True, erased=True)
    for owner, gone in [
        (live, False),
        (deleted_long_ago, True),
        (deleted_lately, False),
        (None, False),  # not found may be not readable here: kept
        (retention.UNREADABLE, False),
    ]:
        assert expired(method, NOW, RETENTION, lambda cid, o=owner: o) is gone, owner
    assert not expired(method, NOW, RETENTION)  # no customer to ask: kept
    # Deleted and not erased (kept itself, for an erasure): its methods go all the same
    # (review finding: kept for ever, with the customer).
    only_deleted = entity("customer", OLD, deleted=True)
    assert expired(method, NOW, RETENTION, lambda cid: only_deleted)
    deleted_lately_only = entity("customer", OLD, NOW - DAY, deleted=True)
    assert not expired(method, NOW, RETENTION, lambda cid: deleted_lately_only)
    recent = entity("payment_method", NOW - DAY, attached=True, customer_id="c")
    assert not expired(recent, NOW, RETENTION, lambda cid: None)  # changed lately itself


def test_expiry_counts_from_the_last_change() -> None:
    assert not expired(entity("payment", OLD, NOW - DAY), NOW, RETENTION)  # refunded lately
    assert expired(entity("payment", NOW - RETENTION), NOW, RETENTION)  # exactly as old
    assert not expired(entity("payment", None), NOW, RETENTION)  # unknown age: kept
    assert not expired(None, NOW, RETENTION)
    assert not expired("garbage", NOW, RETENTION)


def sweep(tables: list[Table], actives: set[int], **kw: Any) -> RetentionSweep:
    return RetentionSweep(tables, RETENTION, TOPIC, lambda: actives, **kw)


def test_expired_entities_of_active_partitions_get_a_tombstone_on_their_partition() -> None:
    payments = Table(
        "payments",
        {
            "t1:old": (1, entity("payment", OLD)),
            "t1:new": (1, entity("payment", NOW)),
            "t2:old": (2, entity("payment", OLD)),  # a standby's: its owner removes it
        },
    )
    customers = Table(
        "customers",
        {
            "t1:gone": (1, entity("customer", OLD, deleted=True, erased=True)),
            "t1:live": (1, entity("customer", OLD)),
        },
    )
    s = sweep([payments, customers], actives={1})
    assert s.step(NOW) == 2
    assert payments.tombstones == [("t1:old", 1)]
    assert customers.tombstones == [("t1:gone", 1)]
    assert set(payments) == {"t1:new", "t2:old"} and set(customers) == {"t1:live"}


def test_a_sweep_asks_a_methods_own_tenant_for_its_customer() -> None:
    customers = Table(
        "customers",
        {
            "t1:c": (1, entity("customer", OLD, deleted=True, erased=True)),
            "t2:c": (2, entity("customer", OLD)),  # same id, another tenant: live
        },
    )
    methods = Table(
        "payment_methods",
        {
            "t1:pm": (1, entity("payment_method", OLD, attached=True, customer_id="c")),
            "t2:pm": (2, entity("payment_method", OLD, attached=True, customer_id="c")),
        },
    )
    assert sweep([methods, customers], actives={1, 2}).step(NOW) == 2
    assert set(customers) == {"t2:c"} and set(methods) == {"t2:pm"}


def test_a_batch_examines_at_most_its_budget_and_a_pass_then_rests() -> None:
    rows = {f"t:{i}": (0, entity("payment", OLD)) for i in range(10)}
    payments = Table("payments", rows)
    s = sweep([payments], actives={0}, budget=4, rest_seconds=600)
    assert [s.step(NOW) for _ in range(3)] == [4, 4, 2]
    assert not payments
    payments["t:late"] = entity("payment", OLD)
    payments.data._key_partition["t:late"] = 0
    assert s.step(NOW + 599) == 0  # resting
    assert s.step(NOW + 600) == 1  # the next pass


def test_a_batch_stops_examining_keys_once_its_time_is_spent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Slow reads (RocksDB decodes every value) end the batch's share early: the rest of
    the pass waits for the next batch."""
    rows = {f"t:{i}": (0, entity("payment", OLD)) for i in range(100)}
    payments = Table("payments", rows)
    clock = iter(range(10_000))
    monkeypatch.setattr(retention.time, "perf_counter", lambda: float(next(clock)) / 1000)
    s = sweep([payments], actives={0}, budget=256, budget_seconds=0.0)
    assert s.step(NOW) == retention._CLOCK_EVERY - 1  # the clock read once, spent
    assert len(payments) == 100 - (retention._CLOCK_EVERY - 1)


def test_keys_changed_or_deleted_during_a_pass_are_judged_as_they_are_now() -> None:
    payments = Table(
        "payments", {"t:a": (0, entity("payment", OLD)), "t:b": (0, entity("payment", OLD))}
    )
    s = sweep([payments], actives={0}, budget=1)
    assert s.step(NOW) == 1
    payments["t:b"] = entity("payment", OLD, NOW)  # refunded meanwhile: changed now
    assert s.step(NOW) == 0
    assert "t:b" in payments
    payments2 = Table("payments", {"t:c": (0, entity("payment", OLD))})
    s2 = sweep([payments2], actives={0})
    dict.__delitem__(payments2, "t:c")  # gone before the sweep reached it
    assert s2.step(NOW) == 0 and payments2.tombstones == []


def test_a_rebalance_starts_a_fresh_pass_over_what_the_worker_holds_now() -> None:
    payments = Table("payments", {"t:a": (0, entity("payment", OLD))})
    s = sweep([payments], actives={0}, rest_seconds=600)
    assert s.step(NOW) == 1
    payments["t:b"] = entity("payment", OLD)
    payments.data._key_partition["t:b"] = 0
    s.restart()  # (partitions moved: recovered keys may be new to this worker)
    assert s.step(NOW + 1) == 1


def test_zero_retention_keeps_everything() -> None:
    payments = Table("payments", {"t:a": (0, entity("payment", 0.0))})
    assert RetentionSweep([payments], 0, TOPIC, lambda: {0}).step(NOW) == 0
    assert "t:a" in payments


def test_a_store_that_cannot_be_walked_is_left_alone(caplog: pytest.LogCaptureFixture) -> None:
    payments = Table("payments", {"t:a": (0, entity("payment", OLD))})
    payments.data = object()  # type: ignore[assignment]
    s = sweep([payments], actives={0})
    assert s.step(NOW) == 0 and s.step(NOW + 601) == 0
    assert "t:a" in payments
    assert sum("cannot be walked" in r.message for r in caplog.records) == 1  # said once


@pytest.mark.parametrize("seconds", [1, 29 * int(DAY)])
def test_retention_shorter_than_30_days_is_refused(seconds: int) -> None:
    with pytest.raises(ConfigurationError, match="ENTITY_RETENTION_SECONDS"):
        load_settings(entity_retention_seconds=seconds)


def test_retention_default_and_off() -> None:
    assert load_settings().entity_retention_seconds == 540 * int(DAY)
    assert load_settings(entity_retention_seconds=0).entity_retention_seconds == 0


def test_a_rocksdb_partition_is_read_a_chunk_at_a_time_past_its_offset_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every key once, in order, across chunk boundaries, without Faust's offset key; a
    partition closed mid-walk (moved by a rebalance) ends its keys there."""
    monkeypatch.setattr(retention, "_ROCKSDB_CHUNK", 3)
    db = Rdict(str(tmp_path / "p0"), options=Options(raw_mode=True))
    keys = [f'"t:{i:02d}"'.encode() for i in range(8)]
    for k in keys:
        db[k] = b"{}"
    offset_key = b"__faust\0offset__"
    db[offset_key] = b"41"
    store = SimpleNamespace(_dbs={0: db}, offset_key=offset_key)
    try:
        assert list(retention._rocksdb_keys(store, 0)) == keys
        walk = retention._rocksdb_keys(store, 0)
        assert [next(walk) for _ in range(3)] == keys[:3]
        store._dbs.clear()  # revoked: closed and dropped by Faust
        assert list(walk) == []
    finally:
        db.close()


def test_a_method_judged_after_its_customer_left_stays() -> None:
    """Walked after its customer was removed, a method cannot tell gone from unreadable:
    kept (so the worker walks methods first)."""
    customers = Table("customers", {"t:c": (0, entity("customer", OLD, deleted=True, erased=True))})
    methods = Table(
        "payment_methods",
        {"t:pm": (0, entity("payment_method", OLD, attached=True, customer_id="c"))},
    )
    assert sweep([customers, methods], actives={0}).step(NOW) == 1
    assert set(methods) == {"t:pm"}


def test_a_closed_rocksdb_partition_reads_as_unreadable(tmp_path: Path) -> None:
    db = Rdict(str(tmp_path / "p0"), options=Options(raw_mode=True))
    try:
        db[b'"t:c"'] = b'{"entity_type": "customer"}'
        store = SimpleNamespace(
            _dbs={0: db},
            use_rocksdict=True,
            _encode_key=lambda key: json.dumps(key).encode(),
            _decode_value=json.loads,
        )
        table = SimpleNamespace(data=store)
        assert retention._read_in(table, 0, "t:c") == {"entity_type": "customer"}
        assert retention._read_in(table, 0, "t:other") is None
        store._dbs.clear()
        assert retention._read_in(table, 0, "t:c") is retention.UNREADABLE
    finally:
        db.close()


def test_a_pass_follows_the_assignment_as_it_changes() -> None:
    """A pass begun just before a new assignment (the batch a hand-over waited for ends
    in a step) kept the partitions it began with, and went on deleting on one now
    another worker's, from a standby copy maybe far behind (review finding)."""
    payments = Table("payments", {f"t1:old{i}": (1, entity("payment", OLD)) for i in range(6)})
    actives = {1}
    s = sweep([payments], actives=actives, budget=2)
    assert s.step(NOW) == 2  # a pass begun while partition 1 is this worker's
    actives.clear()  # assigned away: a standby copy of it stays here
    actives.add(0)
    assert s.step(NOW) == 0 and s.step(NOW) == 0
    assert len(payments.tombstones) == 2


def _deleted_customer(*ats: float) -> dict[str, Any]:
    """A deleted customer whose create outcome (and record) hold their personal data."""
    record = entity("customer", *ats, deleted=True, email="ada@example.com", name="Ada",
                    description="VIP", metadata={"phone": "+44 20"})  # fmt: skip
    record["id"] = "cus_1"
    record["applied"]["c0"] = {
        "type": "customer.created",
        "data": {"entity_type": "customer", "entity_id": "cus_1",
                 "object": {"id": "cus_1", "email": "ada@example.com", "name": "Ada"}},
        "hash": "h-of-the-personal-data",
        "salt": "0:7",
        "at": ats[0],
    }  # fmt: skip
    return record


def test_a_deleted_customer_past_retention_is_kept_without_personal_data() -> None:
    """Deleted, never erased, the customer was kept for ever with their email and name
    (in the record and in the outcomes it remembers): the tables keep them for an
    erasure still, without the personal data (review finding)."""
    customers = Table("customers", {"t:cus_1": (1, _deleted_customer(OLD))})
    s = sweep([customers], actives={1})
    assert s.step(NOW) == 0 and customers.tombstones == []
    kept = customers["t:cus_1"]
    text = json.dumps(kept)
    for personal in ("ada@example.com", "Ada", "VIP", "+44 20", "h-of-the-personal-data"):
        assert personal not in text, personal
    assert kept["deleted"] is True and not kept.get("erased")
    assert kept["applied"]["c0"]["at"] == OLD and kept["applied"]["c0"]["salt"] == "0:7"
    assert last_change(kept) == OLD
    # Nothing more to take out: not written again by later passes.
    assert retention.minimized(kept, NOW, RETENTION) is None
    # Deleted lately, or not deleted, or erased: not this sweep's to change.
    for record in (
        _deleted_customer(OLD, NOW - DAY),
        {**_deleted_customer(OLD), "deleted": False},
    ):
        assert retention.minimized(record, NOW, RETENTION) is None


def test_expiring_tables_are_walked_with_their_own_judge_even_with_retention_off() -> None:
    """The idempotency records of tenants with no traffic here (the purge runs on a
    tenant's own commands only) go with the sweep: a table with its own judge of an
    expired key, its tombstones on each key's partition (review finding)."""
    records = Table(
        "idempotency",
        {
            "idle:k1": (0, {"expires_at": NOW - 1}),
            "idle:k2": (0, {"expires_at": NOW + 1}),
            "gone:k1": (1, {"expires_at": NOW - 5}),
            "theirs:k1": (3, {"expires_at": NOW - 5}),  # a standby partition
        },
    )
    judged: list[str] = []

    def judge(key: Any, value: Any, now: float) -> bool:
        judged.append(key)
        return float(value["expires_at"]) <= now

    sweep = RetentionSweep([], 0, TOPIC, lambda: {0, 1})  # entity retention off
    sweep.expiring.append((records, judge))
    assert sweep.step(NOW) == 2
    assert sorted(records.tombstones) == [("gone:k1", 1), ("idle:k1", 0)]
    assert set(records) == {"idle:k2", "theirs:k1"}
    assert "theirs:k1" not in judged
