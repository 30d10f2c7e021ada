"""The sink against rows the application role tampered with (review findings): a damaged
data key parks its customer's events only, a key under a master key the keyring lacks
and an audit seq planted ahead of the head stall the sink for an operator; neither
retries one event forever nor parks every later one."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.ledger import write_events
from paystream.ledger.session import tenant_session
from paystream.ledger.sink import FailureKind, LedgerSink, classify_failure
from paystream.tenancy.crypto import CryptoError, MasterKey, MasterKeyring, customer_key_ref
from tests.ledger.factories import EventFactory


def _tenant() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


async def test_a_customer_whose_data_key_was_altered_is_parked_alone(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    t = _tenant()
    await write_events(app_engine, [make_event.customer(t, "cus_1")], keyring=keyring)
    async with tenant_session(app_engine, t) as s:
        await s.execute(
            text("UPDATE data_keys SET wrapped_key = :blob WHERE key_ref = :ref"),
            {"blob": b"\x01" + bytes(59), "ref": customer_key_ref("cus_1")},
        )
    sink = LedgerSink(app_engine, keyring)
    damaged = make_event.customer(t, "cus_1", version=2, name="Ada King")
    others = [make_event.customer(t, "cus_2"), make_event.payment(t, "pay_1")]
    # (Bounded: before the fix this retried for good.)
    result = await asyncio.wait_for(sink.write_batch([others[0], damaged, others[1]]), 60)
    assert [(d.event_id, d.reason) for d in result.dead_letters] == [
        (damaged.event_id, "data_key_unreadable")
    ]
    assert result.written.events_written == 2
    assert sink.failed_attempts == 0  # (classified "unexpected", it was retried for good)


def test_a_key_under_a_master_key_not_configured_waits_for_the_operator() -> None:
    other = MasterKeyring(MasterKey.generate())
    with pytest.raises(CryptoError) as missing:
        other.get("mk-0000000000000000")
    assert classify_failure(missing.value) == FailureKind.CONFIG
    assert classify_failure(CryptoError("ciphertext failed authentication")) == FailureKind.DATA


async def test_an_audit_row_planted_ahead_of_the_head_stalls_rather_than_parks(
    app_engine: AsyncEngine,
    owner_engine: AsyncEngine,
    keyring: MasterKeyring,
    make_event: EventFactory,
) -> None:
    """A row planted at head + 1 (linked to the head: migration 0009 refuses one that
    extends no chain, as one at head + 2 did): every later batch meets it. As a data
    error each event was parked in turn, the tenant's whole outcome stream
    dead-lettered."""
    t = _tenant()
    await write_events(app_engine, [make_event.payment(t, "pay_1")], keyring=keyring)
    plant = text(
        "INSERT INTO audit_log (tenant_id, seq, occurred_at, actor, action, "
        "entity_type, entity_id, prev_hash, hash) VALUES (:t, :seq, now(), 'x', 'x', "
        "'payment', 'pay_x', :prev, :h)"
    )
    with pytest.raises(Exception, match="audit_log rows extend their chain"):
        async with tenant_session(app_engine, t) as s:
            await s.execute(plant, {"t": t, "seq": 3, "prev": bytes(32), "h": bytes(32)})
    async with tenant_session(app_engine, t) as s:
        head = (await s.execute(text("SELECT seq, hash FROM audit_heads"))).one()
        await s.execute(
            plant, {"t": t, "seq": head.seq + 1, "prev": bytes(head.hash), "h": bytes(32)}
        )
    batch = [make_event.payment(t, "pay_2"), make_event.payment(t, "pay_3")]
    with pytest.raises(Exception) as planted:
        await write_events(app_engine, batch, keyring=keyring)
    assert classify_failure(planted.value) == FailureKind.CONFIG


async def test_verify_names_a_key_deleted_outside_an_erasure_and_a_damaged_one(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    """Nothing audits `data_keys`: a key deleted by the app role shredded the customer's
    PII with every row verifying (review finding). An erasure's own deletion is fine."""
    from paystream.ledger import verify_audit
    from paystream.ledger.privacy import erase_customer

    t = _tenant()
    events = [make_event.customer(t, c) for c in ("cus_1", "cus_2", "cus_3", "cus_4")]
    await write_events(app_engine, events, keyring=keyring)
    await erase_customer(app_engine, t, "cus_4", keyring=keyring)
    assert (await verify_audit(app_engine, t, keyring)).ok
    async with tenant_session(app_engine, t) as s:
        await s.execute(
            text("DELETE FROM data_keys WHERE key_ref = :ref"), {"ref": customer_key_ref("cus_1")}
        )
        await s.execute(
            text("UPDATE data_keys SET wrapped_key = :blob WHERE key_ref = :ref"),
            {"blob": b"\x01" + bytes(59), "ref": customer_key_ref("cus_2")},
        )
        await s.execute(
            text("UPDATE data_keys SET master_key_id = 'mk-0000000000000000' WHERE key_ref = :r"),
            {"r": customer_key_ref("cus_3")},
        )
    assert (await verify_audit(app_engine, t, keyring)).problems == [
        "1 customer(s) (cus_1) have no data key and were not erased: "
        "the key was deleted outside an erasure",
        "1 customer(s) (cus_2): the data key does not unwrap under the master key it names "
        "(altered or damaged)",
        "1 customer(s) (cus_3): the data key is wrapped under a master key not in the "
        "keyring (PAYSTREAM_RETIRED_MASTER_KEYS)",
    ]


async def test_verify_names_an_event_planted_under_an_id_the_ledger_had_yet_to_store(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    """The genuine outcome under that id is taken for a replay and skipped: the row never
    moves to its version, and every row still matches its last audit entry."""
    from paystream.ledger import verify_audit

    t = _tenant()
    await write_events(app_engine, [make_event.payment(t, "pay_1")], keyring=keyring)
    genuine = make_event.payment(t, "pay_1", version=2, status="refunded")
    async with tenant_session(app_engine, t) as s:
        await s.execute(
            text(
                "INSERT INTO events (tenant_id, event_id, type, entity_type, entity_id, "
                "entity_version, time, data) VALUES (:t, :id, :type, 'payment', 'pay_1', 2, "
                "now(), '{}')"
            ),
            {"t": t, "id": genuine.event_id, "type": genuine.type},
        )
    written = await write_events(app_engine, [genuine], keyring=keyring)
    assert written.duplicates == 1  # (what the attacker wanted)
    assert (await verify_audit(app_engine, t, keyring)).problems == [
        f"1 stored payment event(s) ({genuine.event_id}) ahead of their entity row: never "
        "applied (an events row the app role inserted under an id not stored yet; the "
        "genuine outcome was skipped as its replay)"
    ]
