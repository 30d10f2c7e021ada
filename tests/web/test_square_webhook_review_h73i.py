"""Review h73i: Square webhooks at the view (replays of a captured signed event; a
dispute whose payment paystream could not name)."""

from __future__ import annotations

import logging
import uuid
from types import SimpleNamespace
from typing import Any

import pytest

import paystream.web.webhooks as wh
from paystream.gateways.square import webhooks as sq
from tests.fixtures.square_fake import FAKE_SQUARE_LOCATION, square_event
from tests.web.test_square_webhook_view import TENANT, _payment, _post, seen  # noqa: F401

_DISPUTE = {"id": "dsp1", "state": "EVIDENCE_REQUIRED", "location_id": FAKE_SQUARE_LOCATION,
            "disputed_payment": {"payment_id": "sqpay1"},
            "due_at": "2030-01-02T00:00:00Z"}  # fmt: skip


@pytest.mark.asyncio
async def test_a_captured_dispute_event_replayed_is_not_read_and_refreshed_again(
    seen: SimpleNamespace,  # noqa: F811 (the view tests' fixture)
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Square signs no timestamp: a signed dispute.created captured once (a proxy's log)
    verifies for 73 hours. The dispute has moved on since (under_review here), so every
    replay costs a GetPayment with the tenant's token, a lookup, a budget slot and a sealed
    payment.refresh (after the 24 h idempotency TTL, a ListDisputes + GetPayment and an
    outcome too). Square only sends again what was not answered 2xx: an event id answered
    200 once is a duplicate and should cost nothing."""
    seen.row = {"provider_payment_id": "sqpay1", "status": "succeeded", "dispute_id": "d1"}
    seen.payment = _payment("COMPLETED")

    async def row(tenant: str, table: Any, kind: str, entity_id: str) -> dict[str, Any]:
        return {"provider_dispute_id": "dsp1", "status": "under_review", "evidence_due_by": None}

    monkeypatch.setattr(wh, "_row", row)
    event = square_event("dispute.created", _DISPUTE, event_id="ev-captured")
    status, body = await _post(event)
    assert (status, body.get("action")) == (200, "refresh"), body
    for _ in range(5):
        status, body = await _post(event)
        assert status == 200, body
    assert seen.reads == 1, f"{seen.reads} Square reads for one event id"
    assert len(seen.sent) == 1, f"{len(seen.sent)} refreshes for one event id"


@pytest.mark.asyncio
async def test_a_dispute_of_a_payment_paystream_could_not_name_is_logged(
    seen: SimpleNamespace,  # noqa: F811 (the view tests' fixture)
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A payment id over 31 characters (a UUID: 36) gets no reference_id: its dispute,
    at the tenant's own location, is acknowledged as "not paystream's" with no log line,
    and goes unanswered past its deadline unless someone refreshes the payment."""
    seen.payment = _payment("COMPLETED", reference_id=None)
    caplog.set_level(logging.WARNING)
    status, body = await _post(square_event("dispute.created", _DISPUTE, event_id="evu"))
    assert (status, body.get("action")) == (200, "ignored"), body
    assert any("dsp1" in r.getMessage() for r in caplog.records), "dispute dropped silently"


def test_a_uuid_payment_id_is_named_at_square() -> None:
    """UUIDs are the commonest producer-chosen id: none of their webhooks arrive."""
    assert sq.payment_reference(TENANT, str(uuid.uuid4())) is not None
