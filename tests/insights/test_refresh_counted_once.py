"""A payment read back (`payment.refresh`) is not a second attempt, and a status it
already had moves no money again: its creation was counted when it was answered."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from paystream.insights.observe import Observed, observe
from paystream.settings import CloudEventsMode
from paystream.streams.codec import decode_record
from paystream.streams.outcomes import CommandRef, encode_outcome
from tests.insights.test_runner import T0, Harness


def _seen(kind: str, data: dict[str, Any], command: str = "payment.refresh") -> Observed:
    cmd = CommandRef("acme", "c1", command, "c1", datetime.fromtimestamp(T0 / 1000, UTC))
    rec = encode_outcome(cmd, kind, data, CloudEventsMode.BINARY)
    seen = observe(decode_record(rec.key, rec.value, dict(rec.headers)))
    assert seen is not None
    return seen


def _payment(status: str, **fields: Any) -> dict[str, Any]:
    obj = {"amount": 900, "currency": "USD", "capture_method": "automatic", "status": status}
    return {"object": {**obj, **fields}}


def test_a_payment_succeeding_once_read_back_counts_its_money_and_the_issuers_answer() -> None:
    """Its creation was an attempt (waiting: answered by no issuer); read back, the
    issuer's answer is one in its own window (review h59g: declines read back counted
    alone there, against attempts counted windows before)."""
    created = _seen("payment.requires_action", _payment("requires_action"), "payment.create")
    assert (created.attempt, created.answered) == (True, False)
    settled = _seen(
        "payment.succeeded",
        {**_payment("succeeded", amount_captured=900), "previous_status": "requires_action"},
    )
    assert (settled.attempt, settled.answered, settled.captured) == (True, True, 900)


def test_a_status_read_back_unchanged_counts_nothing() -> None:
    for status in ("authorized", "requires_action", "processing"):
        seen = _seen(f"payment.{status}", {**_payment(status), "previous_status": status})
        assert (seen.attempt, seen.authorized, seen.captured) == (False, 0, 0), status


@pytest.mark.asyncio
async def test_a_window_counts_a_payment_authorised_once_read_back_once() -> None:
    h = Harness("refresh")
    await h.runner.run_batch(
        [
            h.event("payment.requires_action", _payment("requires_action"), cid="c1"),
            h.event(
                "payment.authorized",
                {**_payment("authorized"), "previous_status": "requires_action"},
                cid="c2",
            ),
            # read back again, still authorised: held once, not twice
            h.event(
                "payment.authorized",
                {**_payment("authorized"), "previous_status": "authorized"},
                cid="c3",
            ),
        ]
    )
    h.now = (T0 + 70_000) / 1000
    await h.runner.tick(lambda p: True)
    [window] = [e.get_data() for e in h.published]
    assert window["money"]["USD"]["authorized"] == 900, window


def test_a_dispute_read_back_or_reopened_counts_nothing() -> None:
    """A succeeded payment's refresh that records its dispute, or finds it reopened at
    Stripe (an inquiry escalated, a decision appealed: needs_response again), is
    `payment.succeeded` read back unchanged: no attempt, no money captured again. A
    dispute carried in `related` is opened only by the command that created it
    (test_disputes_counted.py), so a reopened one is not opened twice (review h72d).
    The dispute is as a real refresh carries it (the tenant's, created by another
    command, at version 3): one without a tenant was dropped as another tenant's before
    the opened rule was reached, and the check held whatever that rule did (h72l)."""
    dispute = {
        "tenant_id": "acme", "id": "dp_1", "created_by": "c0", "version": 3,
        "status": "needs_response", "amount": 900, "currency": "USD", "payment_id": "p1",
    }  # fmt: skip
    seen = _seen(
        "payment.succeeded",
        {
            **_payment("succeeded", amount_captured=900),
            "previous_status": "succeeded",
            "related": [
                {"entity_type": "dispute", "entity_id": "dp_1", "version": 3, "object": dispute}
            ],
        },
    )
    assert (seen.attempt, seen.answered, seen.captured, seen.refunded) == (False, False, 0, 0)
    assert (seen.disputes_opened, seen.disputes_lost) == ((), ())
