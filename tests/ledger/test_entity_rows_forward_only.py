"""Entity rows only move forward (revision 0006): the application role cannot rewrite a
row at its version, move it back, or change its keys; what the writer and erasure do
still works (review finding: a rewrite at a lower version went unaudited, `audit verify`
passed, and a replayed event then applied again)."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.ledger import tenant_session
from paystream.ledger.audit import verify_audit
from paystream.ledger.models import Customer, Payment
from paystream.ledger.privacy import erase_customer
from paystream.ledger.sink import FailureKind, _sqlstate, classify_failure
from paystream.ledger.writer import write_events
from paystream.tenancy.crypto import MasterKeyring
from tests.ledger.factories import EventFactory


async def _refused(
    engine: AsyncEngine, tenant: str, match: str, *statements: str, **params: str
) -> None:
    """The statements, run as the app role in one tenant session, are refused, with the
    trigger's own SQLSTATE (0007): the sink dead-letters such a write rather than wait
    for grants that are not missing."""
    with pytest.raises(DBAPIError, match=match) as refused:
        async with tenant_session(engine, tenant) as s:
            for statement in statements:
                await s.execute(text(statement), params)
    assert _sqlstate(refused.value) == "PSR01"
    assert classify_failure(refused.value) == FailureKind.DATA


async def _payment(engine: AsyncEngine, tenant: str) -> Payment:
    async with tenant_session(engine, tenant) as s:
        return (await s.scalars(select(Payment))).one()


@pytest.mark.parametrize(
    "tamper",
    [
        "amount = 1, amount_captured = 1, currency = 'JPY', version = 1",  # rewound
        "amount = 1, amount_captured = 1",  # rewritten at its version
        "payment_id = 'p2'",  # another key
        "created_at = created_at + interval '1 day'",  # moved later
        "amount = 1, version = version + 1",  # forward, but by no event of its own
    ],
    ids=["rewind", "same-version", "rekey", "created-later", "forward-unexplained"],
)
async def test_the_app_role_cannot_rewrite_a_payment(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory, tamper: str
) -> None:
    t = f"fw-{abs(hash(tamper)) % 10**8}"
    await write_events(
        app_engine,
        [
            make_event.payment(t, "p1", version=1),
            make_event.payment(t, "p1", version=2, amount=5000, amount_captured=5000),
        ],
        keyring=keyring,
    )
    await _refused(
        app_engine, t, "payments rows", f"UPDATE payments SET {tamper} WHERE payment_id = 'p1'"
    )
    p = await _payment(app_engine, t)
    assert (p.version, p.amount, p.currency) == (2, 5000, "USD")
    assert (await verify_audit(app_engine, t, keyring)).problems == []
    # A replayed version 2 stays a duplicate; version 3 applies.
    await write_events(
        app_engine, [make_event.payment(t, "p1", version=2, amount=7)], keyring=keyring
    )
    assert (await _payment(app_engine, t)).amount == 5000
    await write_events(
        app_engine, [make_event.payment(t, "p1", version=3, amount=9)], keyring=keyring
    )
    assert (await _payment(app_engine, t)).amount == 9


async def test_an_earlier_event_arriving_later_still_moves_created_at_back(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    first = make_event.payment("fw-created", "p1", version=1)
    second = make_event.payment("fw-created", "p1", version=2)
    await write_events(app_engine, [second], keyring=keyring)
    await write_events(app_engine, [first], keyring=keyring)  # e.g. from the dead letters
    p = await _payment(app_engine, "fw-created")
    assert p.version == 2 and p.created_at == first.time < second.time


async def test_erasure_still_blanks_a_customer_but_nothing_else_at_its_version(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    t = "fw-erase"
    await write_events(app_engine, [make_event.customer(t, "cus_1")], keyring=keyring)
    # Not an erasure: personal data blanked without erased_at, or erased_at set with the
    # ciphertext kept.
    for tamper in ("email_ciphertext = NULL", "erased_at = now()"):
        await _refused(app_engine, t, "customers rows", f"UPDATE customers SET {tamper}")
    assert await erase_customer(app_engine, t, "cus_1", keyring=keyring) is True
    async with tenant_session(app_engine, t) as s:
        c = (await s.scalars(select(Customer))).one()
    assert c.erased_at is not None and c.email_ciphertext is None and c.version == 1
    for undo in ("erased_at = NULL", "erased_at = NULL, version = version + 1"):
        # Erased once, for good.
        await _refused(app_engine, t, "customers rows", f"UPDATE customers SET {undo}")
    # A later event of the erased customer still moves it forward, without its data.
    await write_events(app_engine, [make_event.customer(t, "cus_1", version=2)], keyring=keyring)
    async with tenant_session(app_engine, t) as s:
        c = (await s.scalars(select(Customer))).one()
    assert c.version == 2 and c.erased_at is not None and c.email_ciphertext is None


async def test_another_entitys_event_does_not_move_a_row(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    """Tenants choose ids: a customer event whose entity id is a payment's id, at the
    version wanted, let the app role move that payment (review finding)."""
    t = "fw-cross"
    await write_events(app_engine, [make_event.payment(t, "pay_x", amount=5000)], keyring=keyring)
    customer = [make_event.customer(t, "pay_x", version=v) for v in (1, 2, 3)]
    await write_events(app_engine, customer, keyring=keyring)
    await _refused(
        app_engine,
        t,
        "payments rows move forward by an event",
        "UPDATE payments SET amount = 1, version = 3, last_event_id = :e "
        "WHERE payment_id = 'pay_x'",
        e=customer[2].event_id,
    )
    assert (await _payment(app_engine, t)).amount == 5000


async def test_an_erased_customer_gets_no_personal_data_back(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    """Even with an event of its own at the new version (a forged one), an erased row
    takes no ciphertext back (review finding)."""
    t = "fw-refill"
    await write_events(app_engine, [make_event.customer(t, "cus_1")], keyring=keyring)
    assert await erase_customer(app_engine, t, "cus_1", keyring=keyring)
    await _refused(
        app_engine,
        t,
        "customers rows stay erased",
        "INSERT INTO events (tenant_id, event_id, type, entity_type, entity_id, "
        "entity_version, time, data) VALUES (:t, 'forged', 'x', 'customer', "
        "'cus_1', 2, now(), '{}')",
        "UPDATE customers SET email_ciphertext = '\\x01'::bytea, version = 2, "
        "last_event_id = 'forged'",
        t=t,
    )


async def test_a_temporary_table_cannot_stand_in_for_the_events(
    app_engine: AsyncEngine, owner_engine: AsyncEngine, keyring: MasterKeyring,
    make_event: EventFactory,
) -> None:  # fmt: skip
    """The trigger looked `events` up through the caller's search path, whose temporary
    schema comes first: a temporary `events` holding a made-up event let the app role
    rewrite a payment with no event and no audit entry (review finding, revision 0008).
    The role may create no temporary table now; granted one all the same (a database
    whose owner did not run the migrations), the trigger still reads the real events."""
    t = "fw-temp"
    await write_events(app_engine, [make_event.payment(t, "p1", amount=1000)], keyring=keyring)
    temp = (
        "CREATE TEMP TABLE events (tenant_id text, event_id text, entity_type text, "
        "entity_id text, entity_version bigint) ON COMMIT DROP"
    )
    with pytest.raises(DBAPIError, match="permission denied"):
        async with tenant_session(app_engine, t) as s:
            await s.execute(text(temp))
    grant = "GRANT TEMPORARY ON DATABASE {db} TO paystream_app"
    async with owner_engine.begin() as conn:
        db = (await conn.execute(text("SELECT current_database()"))).scalar_one()
        await conn.execute(text(grant.format(db=f'"{db}"')))
    try:
        await _refused(
            app_engine,
            t,
            "payments rows",
            temp,
            "INSERT INTO events VALUES (:t, 'forged', 'payment', 'p1', 2)",
            "UPDATE payments SET amount = 1, version = 2, last_event_id = 'forged' "
            "WHERE payment_id = 'p1'",
            t=t,
        )
    finally:
        async with owner_engine.begin() as conn:
            await conn.execute(text(grant.replace("GRANT", "REVOKE").replace(" TO ", " FROM ")
                                    .format(db=f'"{db}"')))  # fmt: skip
    assert (await _payment(app_engine, t)).amount == 1000
    assert (await verify_audit(app_engine, t, keyring)).problems == []
