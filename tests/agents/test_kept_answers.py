"""A record redelivered after a crash gets the rejection it was first answered with,
whatever its tenant's state is since: found by the generated-sequence test (a
`validation_error` became `tenant_suspended` on redelivery, one event id, two answers)
and, worse, a payment answered `tenant_suspended` was charged on its redelivery once the
tenant was active again."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from paystream.agents.answers import SHARD_OFFSETS, RecordAnswers
from paystream.agents.pipeline import Emit, Inbound
from paystream.tables.changelog import CHANGELOG_VALUE_MAX_BYTES
from tests.agents.harness import Harness, data, kind, new_tenant_id, outcome_of
from tests.agents.test_let_through import _charges
from tests.agents.test_let_through import _record as _read

pytestmark = pytest.mark.asyncio

PAY = {"amount": 2500, "currency": "USD", "payment_method_token": "pm_card_visa"}


def _record(tenant: str, body: dict[str, Any] = PAY, command_id: str = "k1") -> Inbound:
    return _read(tenant, command_id, body)


def _outcome(h: Harness, emits: list[Emit]) -> tuple[bytes | None, tuple[Any, ...]]:
    (out,) = [e.record for e in emits if e.topic == h.settings.events_topic]
    return out.value, tuple(out.headers)


@pytest.mark.parametrize("then", ["active", "removed"])
async def test_a_payment_refused_as_suspended_is_not_charged_when_redelivered_later(
    harness: Harness, then: str
) -> None:
    h = harness
    t = h.add_tenant(new_tenant_id(), status="suspended")
    record = dict(h.tenants[t])
    rec = _record(t)
    first = _outcome(h, await h.processor.process(rec))
    if then == "active":
        h.tenants[t] = {**record, "status": "active"}
    else:
        del h.tenants[t]
    again = _outcome(h, await h.processor.process(rec))  # the same record, redelivered
    assert again == first
    h.tenants[t] = {**record, "status": "active"}
    assert await _charges(h, t, h.tenants[t]) == 0
    # Sent again (a new record, same command): decided afresh, and charged once.
    out = outcome_of(h.settings, await h.processor.process(_record(t)))
    assert out is not None and kind(out) == "payment.succeeded"
    assert await _charges(h, t, h.tenants[t]) == 1


async def test_a_validation_error_stays_one_when_the_tenant_is_suspended_since(
    harness: Harness,
) -> None:
    h = harness
    t = h.add_tenant(new_tenant_id())
    rec = _record(t, {**PAY, "amount": -5})
    first = _outcome(h, await h.processor.process(rec))
    h.tenants[t] = {**h.tenants[t], "status": "suspended"}
    assert _outcome(h, await h.processor.process(rec)) == first


async def test_an_unknown_tenant_s_record_is_refused_again_once_the_tenant_exists(
    harness: Harness,
) -> None:
    h = harness
    t = new_tenant_id()
    rec = _record(t)
    first = _outcome(h, await h.processor.process(rec))
    h.add_tenant(t)
    assert _outcome(h, await h.processor.process(rec)) == first
    assert await _charges(h, t, h.tenants[t]) == 0


async def test_an_unusable_gateway_s_refusal_stands_for_its_record_once_fixed(
    harness: Harness,
) -> None:
    h = harness
    t = h.add_tenant(new_tenant_id(), gateway="stripe")  # no api_key: not configured
    rec = _record(t)
    first = _outcome(h, await h.processor.process(rec))
    h.tenants[t] = {**h.tenants[t], "gateway": "simulator"}  # the setup is fixed
    assert _outcome(h, await h.processor.process(rec)) == first
    out = outcome_of(h.settings, await h.processor.process(_record(t)))
    assert out is not None and kind(out) == "payment.succeeded"


async def test_another_record_at_the_same_offset_is_not_taken_for_the_kept_one(
    harness: Harness,
) -> None:
    """(A topic recreated, offsets counting from 0 again.)"""
    h = harness
    t = h.add_tenant(new_tenant_id(), status="suspended")
    rec = _record(t, command_id="k-first")
    await h.processor.process(rec)
    h.tenants[t] = {**h.tenants[t], "status": "active"}
    other = _record(t, command_id="k-other")
    other = Inbound(other.key, other.value, other.headers, other.timestamp_ms, other.topic,
                    rec.partition, rec.offset)  # fmt: skip
    out = outcome_of(h.settings, await h.processor.process(other))
    assert out is not None and kind(out) == "payment.succeeded", data(out)


async def test_every_rejection_is_kept_however_many_and_dropped_once_committed() -> None:
    """A stalled commit lets rejections pile up: each is kept (a cap of 800 a partition
    once left the rest to be decided afresh on redelivery, and charged)."""
    committed = [-1]
    table: dict[str, Any] = {}
    kept = RecordAnswers(table, lambda partition: committed[0])
    many = 30 * SHARD_OFFSETS
    for offset in range(many):
        kept.keep(3, offset, f"c{offset}", {"reason": "tenant_suspended"})
    assert all(kept.kept(3, o, f"c{o}") == {"reason": "tenant_suspended"} for o in range(many))
    assert kept.kept(3, 5, "c6") is None and kept.kept(3, many + 5, "x") is None
    assert table[RecordAnswers.index_key(3)]["shards"] == list(range(30))
    committed[0] = many - 10  # the partition's offsets committed past most of them
    kept.keep(3, 5_000, "c5000", {"reason": "unknown_tenant"})
    shards = table[RecordAnswers.index_key(3)]["shards"]
    assert shards == [29, 5_000 // SHARD_OFFSETS]  # the committed ones' records dropped
    assert not [k for k in table if k.startswith("answers\x003\x00") and not k.endswith(
        ("index", *(f"\x00{n}" for n in shards))
    )]  # fmt: skip
    assert kept.kept(3, many - 1, f"c{many - 1}") == {"reason": "tenant_suspended"}
    assert kept.kept(3, 5_000, "c5000") == {"reason": "unknown_tenant"}
    assert kept.kept(3, -1, "c") is None  # not read from Kafka: nothing kept


async def test_each_kept_record_stays_under_the_changelog_s_value_size() -> None:
    """Entries hold messages that echo ids (255 characters, each escaped up to 10 bytes
    in JSON) and validation errors (one per unknown field): a record past 1 MiB failed
    its batch on every redelivery. Every offset of a record at the largest entry kept."""
    table: dict[str, Any] = {}
    kept = RecordAnswers(table, lambda partition: -1)
    for offset in range(2 * SHARD_OFFSETS):
        kept.keep(0, offset, f"c{offset}", {"reason": "unknown_tenant", "message": "x" * 3950})
    assert kept.kept(0, 2 * SHARD_OFFSETS - 1, f"c{2 * SHARD_OFFSETS - 1}") is not None
    errors = [{"loc": f"field{i}", "msg": "Extra inputs are not permitted"} for i in range(500)]
    kept.keep(0, 10_000, "big", {"reason": "validation_error", "errors": errors})
    kept.keep(0, 10_001, "big2", {"reason": "gateway_not_configured", "message": "x" * 5000})
    sizes = [len(orjson.dumps(v)) for k, v in table.items() if not k.endswith("index")]
    assert max(sizes) <= CHANGELOG_VALUE_MAX_BYTES, sizes
    assert kept.kept(0, 10_001, "big2") is None  # too long to keep: decided afresh


async def test_a_validation_error_with_many_fields_is_answered_short_and_kept(
    harness: Harness,
) -> None:
    """Hundreds of unknown fields: the answer lists the first ten errors and says how many
    there were, so it fits what is kept (found again by validating the redelivered
    record instead, a later version's rules could have charged it)."""
    h = harness
    t = h.add_tenant(new_tenant_id())
    rec = _record(t, {**PAY, **{f"unexpected_{i}_{'x' * 150}": "y" for i in range(60)}})
    emits = await h.processor.process(rec)
    out = outcome_of(h.settings, emits)
    assert out is not None and data(out)["reason"] == "validation_error"
    assert (
        len(data(out)["errors"]) == 10 and "60 errors, the first 10 shown" in data(out)["message"]
    )
    assert all(len(e["loc"]) <= 100 for e in data(out)["errors"])
    first = _outcome(h, emits)
    assert h.processor.answers.kept(0, rec.offset, rec.headers["ce_id"].decode()) is not None
    h.tenants[t] = {**h.tenants[t], "status": "suspended"}
    assert _outcome(h, await h.processor.process(rec)) == first


async def test_the_kept_record_survives_recovery_replacement_and_an_older_shape() -> None:
    committed = [-1]
    table: dict[str, Any] = {}
    kept = RecordAnswers(table, lambda partition: committed[0])
    for offset in range(SHARD_OFFSETS + 10):
        kept.keep(1, offset, f"c{offset}", {"reason": "tenant_suspended"})
    kept.keep(1, 4, "c4", {"reason": "unknown_tenant"})  # the same offset again
    assert kept.kept(1, 4, "c4") == {"reason": "unknown_tenant"}
    # Recovered from the changelog (a copy) by a new worker: the prune it needs happens.
    committed[0] = SHARD_OFFSETS + 8
    recovered = orjson.loads(orjson.dumps(table))
    table.clear()
    table.update(recovered)
    again = RecordAnswers(table, lambda partition: committed[0])
    again.keep(1, 3 * SHARD_OFFSETS, "late", {"reason": "tenant_suspended"})
    assert table[RecordAnswers.index_key(1)]["shards"] == [1, 3]
    assert RecordAnswers.key_of(1, 0) not in table
    assert again.kept(1, SHARD_OFFSETS + 9, f"c{SHARD_OFFSETS + 9}") is not None
    # A value in a shape this version does not know: nothing to answer from, no error.
    table[RecordAnswers.key_of(1, 3 * SHARD_OFFSETS)] = {"3": {"id": "x", "data": {}}}
    assert again.kept(1, 3 * SHARD_OFFSETS, "late") is None
    again.keep(1, 3 * SHARD_OFFSETS + 1, "c21", {"reason": "tenant_suspended"})
    assert again.kept(1, 3 * SHARD_OFFSETS + 1, "c21") == {"reason": "tenant_suspended"}


async def test_a_record_kept_by_a_version_before_answers_until_committed() -> None:
    """Versions before kept a partition's rejections in one record: a redelivery after
    the upgrade still gets its answer there; the record goes once committed past."""
    committed = [-1]
    table: dict[str, Any] = {}
    tag = RecordAnswers({}, None)
    tag.keep(2, 7, "old", {"reason": "tenant_suspended"})
    [entry] = tag.table[RecordAnswers.key_of(2, 7)]["kept"].values()
    table[RecordAnswers.key(2)] = {"floor": -1, "bytes": 100, "kept": {"7": {**entry, "n": 100}}}
    kept = RecordAnswers(table, lambda partition: committed[0])
    assert kept.kept(2, 7, "old") == {"reason": "tenant_suspended"}
    assert kept.key_holding(2, 7) == RecordAnswers.key(2)
    kept.keep(2, 8, "new", {"reason": "unknown_tenant"})
    assert RecordAnswers.key(2) in table  # not committed yet
    committed[0] = 8
    kept.keep(2, 9, "newer", {"reason": "unknown_tenant"})
    assert RecordAnswers.key(2) not in table and kept.kept(2, 7, "old") is None
    assert kept.kept(2, 8, "new") == {"reason": "unknown_tenant"}


async def test_a_redelivered_rejection_writes_its_record_again_for_the_changelog(
    harness: Harness,
) -> None:
    """With RocksDB the store can be ahead of the changelog after a crash: the batch
    answering the redelivery must write the kept rejection again, or the next owner of
    the partition would decide the record afresh (and charge a refused payment)."""
    h = harness
    t = h.add_tenant(new_tenant_id(), status="suspended")
    rec = _record(t)
    await h.processor.process(rec)
    writes: list[str] = []
    table = h.processor.answers.table

    class Watched(dict[str, Any]):
        def __setitem__(self, key: str, value: Any) -> None:
            writes.append(key)
            super().__setitem__(key, value)

    watched = Watched(table)
    h.processor.answers.table = watched
    await h.processor.process(rec)
    assert writes == [RecordAnswers.key_of(0, rec.offset), RecordAnswers.index_key(0)]


async def test_a_kept_park_is_no_rejection_to_an_older_reader() -> None:
    """An older worker given the record reads only rejections (``kept``): a park under
    their tag would be answered as a rejection with no reason. It decides afresh."""

    answers = RecordAnswers({}, None)
    answers.keep_parked(0, 5, "cmd", {"refusal": "tenant_suspended"})
    assert answers.kept(0, 5, "cmd") is None
    assert answers.parked(0, 5, "cmd") == {"refusal": "tenant_suspended"}
    answers.keep(0, 6, "cmd2", {"reason": "tenant_suspended"})
    assert answers.parked(0, 6, "cmd2") is None


async def test_a_long_validation_error_is_cut_to_be_kept(harness: Harness) -> None:
    """Field names in a script of 4-byte characters made a `validation_error` too large
    to keep (the cut was by characters): redelivered after a suspension, the record was
    answered `tenant_suspended` under the same event id (review finding)."""
    h = harness
    t = h.add_tenant()
    metadata = {("\U0001f600" * 100) + str(i): "v" for i in range(12)}
    rec = _record(t, {**PAY, "metadata": metadata})
    first = _outcome(h, await h.raw(rec))
    again = outcome_of(h.settings, await h.raw(rec))
    assert again is not None and data(again)["reason"] == "validation_error"
    assert "shown" in data(again)["message"]
    h.tenants[t] = {**h.tenants[t], "status": "suspended"}
    assert _outcome(h, await h.raw(rec)) == first
