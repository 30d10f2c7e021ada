"""Connected accounts in the ledger (migration 0016): every outcome the pipeline emits of
one (created; read back enabled, restricted, rejected) is stored in ``events`` as the
sink translates it, never refused, and written to its ``connected_accounts`` row with an
audit entry that verifies; an onboarding link's outcome names no entity, so nothing of
it (its bearer URL above all) is stored; the row's status moves as the account's does
(CONNECTED_ACCOUNT_MOVES): a rejected account is never made enabled again."""

from __future__ import annotations

import uuid

import orjson
import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.ledger import tenant_session, verify_audit, write_events
from paystream.ledger.errors import InvalidEventError
from paystream.ledger.models import ConnectedAccount, Event
from paystream.ledger.sink import outcome_to_ledger_events
from paystream.tenancy.crypto import MasterKeyring
from tests.agents.conftest import running_harness
from tests.agents.harness import data, kind
from tests.ledger.factories import EventFactory, connected_account

pytestmark = pytest.mark.asyncio
LINK = {"refresh_url": "https://p.example/r", "return_url": "https://p.example/d"}


async def test_every_connected_account_outcome_is_stored(
    redis_url: str, app_engine: AsyncEngine, keyring: MasterKeyring
) -> None:
    async with running_harness(redis_url) as h:
        t = h.add_tenant()
        body = {
            "connected_account_id": "ca1",
            "country": "US",
            "email": "shop+restricted@example.com",
            "capabilities": ["card_payments", "transfers"],
            "metadata": {"shop": "7"},
        }
        made = await h.send("connected_account.create", t, body)
        link = await h.send(
            "connected_account.onboarding_link", t, {"connected_account_id": "ca1", **LINK}
        )
        read = await h.send("connected_account.refresh", t, {"connected_account_id": "ca1"})
    assert [kind(o) for o in (made, link, read)] == [
        "connected_account.created",
        "connected_account.onboarding_link_created",
        "connected_account.updated",
    ]
    assert outcome_to_ledger_events(link) == []  # (no entity: the URL goes nowhere)
    events = [e for o in (made, read) for e in outcome_to_ledger_events(o)]
    result = await write_events(app_engine, events, keyring=keyring)
    assert (result.events_written, result.entities_applied) == (2, 1)
    async with tenant_session(app_engine, t) as s:
        row = (await s.scalars(select(ConnectedAccount))).one()
        stored = (await s.scalars(select(Event).where(Event.tenant_id == t))).all()
    assert (row.connected_account_id, row.status, row.version) == ("ca1", "restricted", 2)
    assert row.provider_account_id == data(made)["object"]["provider_account_id"]
    assert (row.charges_enabled, row.payouts_enabled, row.details_submitted) == (
        False,
        False,
        True,
    )
    assert row.currently_due == ["individual.verification.document"]
    assert row.disabled_reason == "requirements.past_due"
    assert (row.capabilities, row.metadata_) == (["card_payments", "transfers"], {"shop": "7"})
    assert data(link)["url"].encode() not in orjson.dumps([e.data for e in stored])
    assert (await verify_audit(app_engine, t, keyring)).problems == []


async def test_a_rejected_account_is_never_made_enabled(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    t = f"ca-{uuid.uuid4().hex[:10]}"
    rejected = {"status": "rejected", "details_submitted": True, "currently_due": [],
                "disabled_reason": "rejected.fraud"}  # fmt: skip
    await write_events(
        app_engine,
        [
            connected_account(make_event, t, "ca1"),
            connected_account(make_event, t, "ca1", version=2, **rejected),
        ],
        keyring=keyring,
    )
    enabled = connected_account(
        make_event, t, "ca1", version=3, status="enabled", charges_enabled=True,
        payouts_enabled=True, details_submitted=True, currently_due=[], disabled_reason=None,
    )  # fmt: skip
    with pytest.raises(InvalidEventError, match="a connected account that is rejected cannot"):
        await write_events(app_engine, [enabled], keyring=keyring)
    async with tenant_session(app_engine, t) as s:
        row = (await s.scalars(select(ConnectedAccount))).one()
    assert (row.version, row.status) == (2, "rejected")
    # Restricted and enabled again, as new requirements come due and are met: taken.
    u = f"ca-{uuid.uuid4().hex[:10]}"
    moves = [
        connected_account(make_event, u, "ca2"),
        connected_account(make_event, u, "ca2", version=2, status="enabled", currently_due=[]),
        connected_account(make_event, u, "ca2", version=3, status="restricted"),
        connected_account(make_event, u, "ca2", version=4, status="enabled", currently_due=[]),
    ]
    await write_events(app_engine, moves, keyring=keyring)
    assert (await verify_audit(app_engine, u, keyring)).problems == []
    # A custom account enabled with its details never submitted, then disabled: taken
    # restricted (as the worker derives it: review h78m F1); pending again never.
    unsubmitted = {"details_submitted": False, "charges_enabled": False,
                   "payouts_enabled": False}  # fmt: skip
    v = f"ca-{uuid.uuid4().hex[:10]}"
    await write_events(
        app_engine,
        [
            connected_account(make_event, v, "ca3"),
            connected_account(
                make_event,
                v,
                "ca3",
                version=2,
                status="enabled",
                currently_due=[],
                charges_enabled=True,
                payouts_enabled=True,
                details_submitted=False,
            ),
            connected_account(make_event, v, "ca3", version=3, status="restricted", **unsubmitted),
        ],
        keyring=keyring,
    )
    pending = connected_account(make_event, v, "ca3", version=4, status="pending", **unsubmitted)
    with pytest.raises(InvalidEventError, match="restricted cannot become pending"):
        await write_events(app_engine, [pending], keyring=keyring)


async def test_another_tenant_sees_none_and_cannot_write_them(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    t, other = f"ca-{uuid.uuid4().hex[:10]}", f"ca-{uuid.uuid4().hex[:10]}"
    await write_events(app_engine, [connected_account(make_event, t, "ca1")], keyring=keyring)
    async with tenant_session(app_engine, other) as s:
        assert await s.scalar(text("SELECT count(*) FROM connected_accounts")) == 0
        updated = await s.execute(text("UPDATE connected_accounts SET status = 'enabled'"))
        assert updated.rowcount == 0  # type: ignore[attr-defined]
    with pytest.raises(DBAPIError, match="row-level security"):
        async with tenant_session(app_engine, other) as s:
            await s.execute(
                text(
                    "INSERT INTO connected_accounts (tenant_id, connected_account_id, status, "
                    "version, last_event_id, created_at, updated_at) VALUES "
                    "(:t, 'x', 'enabled', 1, 'e', now(), now())"
                ),
                {"t": t},
            )


@pytest.mark.parametrize(
    "tamper",
    [
        "UPDATE connected_accounts SET status = 'enabled'",
        "UPDATE connected_accounts SET status = 'pending', version = 1",
        "DELETE FROM connected_accounts",
    ],
)
async def test_connected_account_rows_only_move_forward_and_are_never_deleted(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory, tamper: str
) -> None:
    t = f"ca-{uuid.uuid4().hex[:10]}"
    await write_events(
        app_engine,
        [
            connected_account(make_event, t, "ca1"),
            connected_account(make_event, t, "ca1", version=2, status="restricted"),
        ],
        keyring=keyring,
    )
    with pytest.raises(DBAPIError, match=r"rows|permission denied"):
        async with tenant_session(app_engine, t) as s:
            await s.execute(text(tamper))
    assert (await verify_audit(app_engine, t, keyring)).problems == []
