"""Entity rows are checked against the state their last audit entry recorded: the app
role may update a row (a version ahead, with an events row to match, which is all the
forward-only trigger asks), but it cannot write an audit entry under the key (review
finding: an amount rewritten from 1000 to 1, and `audit verify` stayed green)."""

from __future__ import annotations

import uuid

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.ledger import tenant_session, verify_audit, write_events
from paystream.tenancy.crypto import MasterKeyring
from tests.ledger.factories import EventFactory


async def test_a_row_the_app_role_rewrote_with_a_forged_event_is_reported(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    t = f"t{uuid.uuid4().hex[:8]}"
    await write_events(app_engine, [make_event.payment(t, "pay_1", amount=1000)], keyring=keyring)
    await write_events(app_engine, [make_event.payment(t, "pay_2", amount=500)], keyring=keyring)
    assert (await verify_audit(app_engine, t, keyring)).ok
    await _forge(
        app_engine,
        t,
        ("payment", "pay_1", 2),
        "UPDATE payments SET amount = 1, amount_captured = 1, version = 2, "
        "last_event_id = 'forged' WHERE payment_id = 'pay_1'",
    )
    result = await verify_audit(app_engine, t, keyring)
    assert result.problems == [
        "1 payment row(s) (pay_1) not as their last audit entry left them: changed without "
        "an audit entry (an events row alone vouches for nothing: the app role may insert one)"
    ]


async def test_a_rewrite_a_genuine_write_later_covered_is_still_reported(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    """The row rewritten, then moved on by the next genuine outcome (every column set
    again): the row matches its last entry, and only that entry's ``before``, read from
    the rewritten row, shows it (review finding: tampering healed on the next write)."""
    t = f"t{uuid.uuid4().hex[:8]}"
    await write_events(app_engine, [make_event.payment(t, "pay_1", amount=1000)], keyring=keyring)
    await _forge(
        app_engine,
        t,
        ("payment", "pay_1", 2),
        "UPDATE payments SET amount = 1, amount_captured = 1, version = 2, "
        "last_event_id = 'forged' WHERE payment_id = 'pay_1'",
    )
    later = make_event.payment(t, "pay_1", amount=1000, version=3)
    await write_events(app_engine, [later], keyring=keyring)
    result = await verify_audit(app_engine, t, keyring)
    assert result.problems == [
        "1 payment audit entr(ies) (seq 2) found the row other than the entity's entry "
        "before left it: changed between them without an audit entry (a later genuine "
        "write does not make that good)"
    ]


async def test_rows_as_the_ledger_wrote_them_verify(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    """Several versions of one payment, a refund, a customer erased: all as audited."""
    from paystream.ledger.privacy import erase_customer

    t = f"t{uuid.uuid4().hex[:8]}"
    for version in (1, 2, 3):
        await write_events(
            app_engine, [make_event.payment(t, "pay_1", version=version)], keyring=keyring
        )
    await write_events(app_engine, [make_event.customer(t, "cus_1")], keyring=keyring)
    await erase_customer(app_engine, t, "cus_1", keyring=keyring)
    await erase_customer(app_engine, t, "cus_ahead", keyring=keyring)  # a tombstone
    # Events after erasures, one batch moving an entity through several versions.
    await write_events(
        app_engine,
        [make_event.customer(t, "cus_1", version=2), make_event.customer(t, "cus_ahead")],
        keyring=keyring,
    )
    await write_events(
        app_engine,
        [make_event.payment(t, "pay_1", version=v, amount=100 * v) for v in (4, 5, 6)],
        keyring=keyring,
    )
    result = await verify_audit(app_engine, t, keyring)
    assert result.ok, result.problems


async def test_a_tombstone_rewritten_with_a_forged_event_is_reported(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    """A customer erased before any event of theirs: its erasure audits the tombstone
    without a version, and a rewrite with a forged event verified (review finding)."""
    from paystream.ledger.audit import _TOMBSTONE_VERSION
    from paystream.ledger.privacy import TOMBSTONE_VERSION, erase_customer

    assert _TOMBSTONE_VERSION == TOMBSTONE_VERSION
    t = f"t{uuid.uuid4().hex[:8]}"
    await erase_customer(app_engine, t, "cus_9", keyring=keyring)
    assert (await verify_audit(app_engine, t, keyring)).ok
    await _forge(
        app_engine,
        t,
        ("customer", "cus_9", 7),
        "UPDATE customers SET version = 7, last_event_id = 'forged', "
        "provider_customer_id = 'cus_attacker' WHERE customer_id = 'cus_9'",
    )
    assert not (await verify_audit(app_engine, t, keyring)).ok


async def test_an_erasure_without_an_audit_entry_is_reported(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    """Its ciphertext emptied and erased_at set by the app role, as the forward-only
    trigger allows at the same version: verified (review finding)."""
    t = f"t{uuid.uuid4().hex[:8]}"
    await write_events(app_engine, [make_event.customer(t, "cus_1")], keyring=keyring)
    async with tenant_session(app_engine, t) as s:
        await s.execute(
            text(
                "UPDATE customers SET email_ciphertext = NULL, name_ciphertext = NULL, "
                "address_ciphertext = NULL, erased_at = now()"
            )
        )
    assert not (await verify_audit(app_engine, t, keyring)).ok


async def _forge(
    engine: AsyncEngine, tenant: str, event: tuple[str, str, int], update: str
) -> None:
    """As the app role: an events row ``(entity type, id, version)``, then ``update``,
    which the forward-only trigger takes with that row to match."""
    entity_type, entity_id, version = event
    async with tenant_session(engine, tenant) as s:
        await s.execute(
            text(
                "INSERT INTO events (tenant_id, event_id, type, entity_type, entity_id, "
                "entity_version, time, data) VALUES (:t, 'forged', 'x', :et, :eid, :v, "
                "now(), '{}')"
            ),
            {"t": tenant, "et": entity_type, "eid": entity_id, "v": version},
        )
        await s.execute(text(update))
