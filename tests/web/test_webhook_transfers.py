"""Stripe's transfer events (transfer.reversed, .updated) bring a sealed
``transfer.refresh`` of the transfer their metadata names, through the same bounds as a
payout's event (lookups, budget, 503 while unrecorded and recent, dropped once old);
another tenant's or account's are ignored, and so are the echoes of what paystream holds
(its own reversal's amount) and events about a transfer reversed entirely here.
In process: the view alone (tests/web/test_webhook_lookups.py's fakes), and the refresh
command built for real."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace
from typing import Any

import pytest

import paystream.web.webhooks as wh
from paystream.gateways.base import TRANSFER_REF_KEY
from paystream.gateways.stripe.webhooks import (
    EVERY_FOLLOWED_EVENT,
    FOLLOWED_TRANSFER_EVENTS,
    transfer_notice,
)
from paystream.gateways.webhook_notices import TransferNotice
from tests.web.test_webhook_lookups import (  # noqa: F401 (seen: a fixture)
    TENANT,
    _post,
    assert_a_sealed_refresh,
    held_rows,
    seen,
)

pytestmark = pytest.mark.asyncio


def _event(
    kind: str = "transfer.reversed",
    *,
    event_id: str = "evt_t1",
    tenant: str = TENANT,
    transfer: str = "tr_a",
    provider_id: str = "tr_1",
    amount_reversed: Any = 2_000,
    created: int | None = None,
    **fields: Any,
) -> dict[str, Any]:
    obj = {
        "id": provider_id,
        "object": "transfer",
        "amount": 6_000,
        "amount_reversed": amount_reversed,
        "metadata": {TRANSFER_REF_KEY: f"{tenant}:{transfer}"},
    }
    return {
        "id": event_id,
        "type": kind,
        "created": int(time.time()) if created is None else created,
        "data": {"object": obj},
        **fields,
    }


def _body(**kw: Any) -> bytes:
    return json.dumps(_event(**kw)).encode()


@pytest.fixture
def rows(seen: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:  # noqa: F811
    held = {"tr_a": {"provider_transfer_id": "tr_1", "status": "created", "amount_reversed": 0}}
    return held_rows(seen, monkeypatch, "transfer_id", held)


async def test_the_followed_transfer_events_name_paystreams_transfer() -> None:
    assert {"transfer.reversed", "transfer.updated"} == FOLLOWED_TRANSFER_EVENTS
    assert FOLLOWED_TRANSFER_EVENTS <= EVERY_FOLLOWED_EVENT  # (the generated docs list them)
    notice = transfer_notice(_event(account="acct_9"))
    assert notice == TransferNotice(
        "evt_t1", "transfer.reversed", TENANT, "tr_a", "tr_1", 2_000, "acct_9", notice.created
    )
    assert transfer_notice(_event("transfer.created")) is None  # (paystream made it)
    unnamed = _event()
    unnamed["data"]["object"]["metadata"] = {}
    assert transfer_notice(unnamed) is None  # (made in the dashboard, or before the ref)
    assert transfer_notice(_event(amount_reversed="2000")).amount_reversed is None  # type: ignore[union-attr]
    assert transfer_notice(_event(amount_reversed=True)).amount_reversed is None  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", ["transfer.reversed", "transfer.updated"])
async def test_a_transfer_event_brings_its_refresh(
    seen: SimpleNamespace,  # noqa: F811
    rows: dict[str, Any],
    kind: str,
) -> None:
    status_code, body = await _post(_body(kind=kind))
    assert (status_code, body["action"]) == (200, "refresh"), body
    (notice,) = seen.notices
    assert isinstance(notice, TransferNotice)
    assert (notice.transfer_id, notice.provider_transfer_id) == ("tr_a", "tr_1")
    assert notice.amount_reversed == 2_000
    assert len(seen.sent) == 1


async def test_another_tenants_or_accounts_transfer_event_is_ignored(
    seen: SimpleNamespace,  # noqa: F811
    rows: dict[str, Any],
) -> None:
    status, body = await _post(_body(tenant="other"))
    assert (status, body["action"]) == (200, "ignored"), body
    assert "another tenant's transfer" in body["why"]
    status, body = await _post(_body(event_id="evt_t2", account="acct_other"))
    assert (status, body["action"]) == (200, "ignored"), body
    assert "another account's transfer" in body["why"]
    assert seen.sent == []


async def test_echoes_and_reversed_transfers_are_not_refreshed(
    seen: SimpleNamespace,  # noqa: F811
    rows: dict[str, Any],
) -> None:
    # The echo of paystream's own transfer.reverse: the amount reversed it holds.
    rows["tr_a"].update(status="partially_reversed", amount_reversed=2_000)
    status, body = await _post(_body())
    assert (status, body["action"]) == (200, "ignored") and "as recorded" in body["why"]
    # A transfer.updated of its metadata (nothing reversed): the same.
    rows["tr_a"].update(status="created", amount_reversed=0)
    status, body = await _post(_body(event_id="evt_t2", kind="transfer.updated", amount_reversed=0))
    assert body["action"] == "ignored" and "as recorded" in body["why"], body
    rows["tr_a"].update(status="reversed", amount_reversed=6_000)  # (final)
    status, body = await _post(_body(event_id="evt_t3", amount_reversed=6_000))
    assert body["action"] == "ignored" and "reversed already" in body["why"], body
    rows["tr_a"].update(status="created", amount_reversed=0, provider_transfer_id="tr_other")
    status, body = await _post(_body(event_id="evt_t4"))
    assert body["action"] == "ignored" and "another provider transfer" in body["why"], body
    assert seen.sent == []
    # Reversed beyond what paystream holds (outside it): news; one that does not say, read.
    rows["tr_a"]["provider_transfer_id"] = "tr_1"
    status, body = await _post(_body(event_id="evt_t5"))
    assert body["action"] == "refresh" and len(seen.sent) == 1, body
    status, body = await _post(_body(event_id="evt_t6", amount_reversed=None))
    assert body["action"] == "refresh" and len(seen.sent) == 2, body


async def test_an_unrecorded_transfer_is_asked_again_while_recent_then_dropped(
    seen: SimpleNamespace,  # noqa: F811
    rows: dict[str, Any],
) -> None:
    status, _ = await _post(_body(transfer="tr_parked"))
    assert status == 503  # (its create's answer in flight, or parked)
    old = int(time.time()) - wh.UNRECORDED_RETRY_SECONDS - 60
    status, body = await _post(_body(event_id="evt_t3", transfer="tr_parked", created=old))
    assert (status, body["action"]) == (200, "ignored") and "transfer" in body["why"]
    assert seen.sent == []


async def test_transfer_events_share_the_tenants_refresh_budget(
    seen: SimpleNamespace,  # noqa: F811
    rows: dict[str, Any],
) -> None:
    answers = [(await _post(_body(event_id=f"evt_b{i}")))[0] for i in range(30)]
    assert len(seen.sent) == 10 and answers.count(503) == 20  # the budget's burst (1/s)


async def test_the_refresh_is_a_sealed_transfer_refresh(monkeypatch: pytest.MonkeyPatch) -> None:
    notice = TransferNotice("evt_9", "transfer.reversed", TENANT, "tr_a", "tr_1", 2_000, None)
    assert_a_sealed_refresh(monkeypatch, notice, "transfer.refresh", {"transfer_id": "tr_a"})
