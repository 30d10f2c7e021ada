"""Card data a hostile outcome carries outside the entity snapshot: refused like card
data in the snapshot (review h64f: it was stored, some of it in the append-only audit
log, where no role short of the owner disabling its triggers can ever remove it)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.agents.ledger_sink import RawRecord, translate_records
from paystream.ledger.errors import ForbiddenDataError
from paystream.ledger.session import tenant_session
from paystream.ledger.sink import LedgerSink, outcome_to_ledger_events
from paystream.settings import CloudEventsMode
from paystream.streams.codec import encode_event
from paystream.tenancy.crypto import MasterKeyring
from tests.ledger.test_sink import payment_outcome
from tests.ledger.test_sink_never_stalls import _write_within

PAN = "4111111111111111"  # Luhn-valid test card number


def _tenant() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


async def _store(app_engine: AsyncEngine, keyring: MasterKeyring, rec: RawRecord) -> Any:
    translated = translate_records([rec])
    sink = LedgerSink(app_engine, keyring, initial_backoff=0.05, max_backoff=0.1)
    await _write_within(sink, translated.events, seconds=3)
    return translated


async def _stored_text(app_engine: AsyncEngine, tenant: str) -> str:
    async with tenant_session(app_engine, tenant) as s:
        events = (await s.execute(text(
            "SELECT event_id, type, causation_id, entity_id, data::text FROM events"
        ))).all()  # fmt: skip
        audit = (await s.execute(text("SELECT entity_id, action FROM audit_log"))).all()
    # (Plain tuples: a Row's repr cuts long strings short.)
    return "\n".join(repr(tuple(r)) for r in [*events, *audit])


@pytest.mark.parametrize("where", ["entity_id", "type", "causationid", "id"])
async def test_a_card_number_in_an_outcome_s_ids_or_type_is_not_stored(
    app_engine: AsyncEngine, keyring: MasterKeyring, where: str
) -> None:
    """The same number in the entity's snapshot is refused (forbidden_data); in the
    outcome's entity_id, type, causation id or id it was stored, in events and (entity_id,
    type) in audit_log, which is append-only."""
    tenant = _tenant()
    rec = encode_event(
        payment_outcome(tenant, "pay_x", 1, command_id="cmd_plain"),
        tenant.encode(),
        CloudEventsMode.BINARY,
    )
    headers, value = dict(rec.headers), rec.value
    if where == "entity_id":
        data = json.loads(value)
        data["entity_id"] = f"pay_{PAN}"  # (the snapshot's own "id" stays pay_x)
        value = json.dumps(data).encode()
    elif where == "type":
        headers["ce_type"] = f"com.paystream.payment.succeeded.{PAN}".encode()
    elif where == "causationid":
        headers["ce_causationid"] = f"cmd_{PAN}".encode()
    else:
        headers["ce_id"] = f"evt_{PAN}".encode()
    translated = await _store(
        app_engine, keyring, RawRecord(rec.key, value, headers, 1.7e9, "ev/0/0")
    )
    stored = await _stored_text(app_engine, tenant)
    assert PAN not in stored, f"card number stored ({where}); dead letters: {translated.dead}"


@pytest.mark.parametrize(
    "action",
    [
        PAN,
        {"type": PAN},
        [
            {
                "type": "redirect_to_url",
                "redirect_to_url": {
                    "url": f"https://bank.example/?pan={PAN}&client_secret=pi_1_secret_x"
                },
            }
        ],
    ],
)
async def test_a_card_number_in_a_next_action_is_not_stored(
    app_engine: AsyncEngine, keyring: MasterKeyring, action: Any
) -> None:
    """`next_action` is left out of the card scan (the provider's free text) on the
    grounds that the ledger keeps a next action "as its type alone"; but only a mapping
    was cut down to its type, and the type itself was kept unscanned: a next action given
    as a string or a list was stored whole (a client secret with it), card number and
    all."""
    tenant = _tenant()
    rec = encode_event(
        payment_outcome(tenant, "pay_na", 1, status="requires_action", next_action=action),
        tenant.encode(),
        CloudEventsMode.BINARY,
    )
    await _store(
        app_engine, keyring, RawRecord(rec.key, rec.value, dict(rec.headers), 1.7e9, "ev/0/0")
    )
    stored = await _stored_text(app_engine, tenant)
    assert PAN not in stored
    assert "client_secret" not in stored


# A next action nested elsewhere than the snapshot's own (in metadata, a provider error)
# is kept whole: scanned whole (review h64h: only its type was, as the snapshot's own).
NESTED = [
    {"metadata": {"next_action": {"type": "note", "ref": PAN}}},
    {"metadata": {"order": {"next_action": {"type": "x", "url": f"https://x/?pan={PAN}"}}}},
    {"error": {"code": "card_declined", "next_action": {"type": "x", "card": PAN}}},
]


@pytest.mark.parametrize("extra", NESTED)
def test_a_card_number_under_a_nested_next_action_is_refused(extra: dict[str, Any]) -> None:
    with pytest.raises(ForbiddenDataError):
        outcome_to_ledger_events(payment_outcome("acme", "pay_n", 1, **extra))


@pytest.mark.parametrize("extra", NESTED[:1])
async def test_a_card_number_under_a_nested_next_action_is_not_stored(
    app_engine: AsyncEngine, keyring: MasterKeyring, extra: dict[str, Any]
) -> None:
    tenant = f"t{uuid.uuid4().hex[:8]}"
    rec = encode_event(
        payment_outcome(tenant, "pay_n", 1, **extra), tenant.encode(), CloudEventsMode.BINARY
    )
    await _store(
        app_engine, keyring, RawRecord(rec.key, rec.value, dict(rec.headers), 1.7e9, "ev/0/0")
    )
    assert PAN not in await _stored_text(app_engine, tenant)
