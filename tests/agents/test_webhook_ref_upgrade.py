"""A create first sent by a version before the webhook reference (no paystream_payment
in its metadata), re-driven by this one at a provider that sends webhooks.

The simulator compares parameters sent again under a key as Stripe does (and refuses
others with idempotency_error), so it stands in for Stripe here, given the WEBHOOKS
capability. (Review finding: the re-drive was parked provider_key_conflict, for good.)
"""

from __future__ import annotations

from typing import Any

import pytest

from paystream.gateways import base as gw
from paystream.gateways.base import Capability
from paystream.tenancy.models import Tenant
from tests.agents.harness import Harness, data, kind, new_tenant_id
from tests.agents.test_command_id_resent import _PAY, _c1_parked_under_k1, _effects, _rec
from tests.agents.test_let_through import _answer, _command

pytestmark = pytest.mark.asyncio


def _with_webhooks(h: Harness, tenant: str) -> None:
    gateway = h.pool.get(Tenant.model_validate(h.tenants[tenant]))
    gateway.capabilities = gateway.capabilities | {Capability.WEBHOOKS}  # type: ignore[misc]


async def test_a_create_parked_before_the_upgrade_is_answered_when_redriven(
    harness: Harness,
) -> None:
    h = harness
    t = await _c1_parked_under_k1(h)  # charged at the provider, its answer lost: parked
    assert await _effects(h, t, "charge") == 1
    _with_webhooks(h, t)  # the upgrade: creates now carry the reference
    redrive = await h.processor.process(_rec(t, "payment.create", _PAY, "c1", "k1", redrive=True))
    assert [e.topic for e in redrive] == [h.settings.events_topic]
    assert dict(redrive[0].record.headers)["ce_type"] == b"com.paystream.payment.succeeded"
    assert await _effects(h, t, "charge") == 1


async def test_a_new_create_carries_the_reference_and_is_not_sent_twice(
    harness: Harness,
) -> None:
    """Only one let through is sent again without it: a new create's refusal stands."""
    h = harness
    t = await _c1_parked_under_k1(h)
    _with_webhooks(h, t)
    # A new command under the provider key the parked one used (k1), with the reference:
    # the provider refuses the other parameters, and no second request is made.
    other = await h.processor.process(
        _rec(t, "payment.create", {**_PAY, "amount": 5001}, "c2", "k1")
    )
    assert [e.topic for e in other] == [h.settings.events_topic]
    assert dict(other[0].record.headers)["ce_type"] == b"com.paystream.command.rejected"
    assert await _effects(h, t, "charge") == 1


# ---- refunds: their reference (gw.refund_ref), and the rest without an amount ----------

_CHARGE = {"payment_id": "p1", "amount": 2000, "currency": "USD",
           "payment_method_token": "pm_card_visa"}  # fmt: skip


def _record_requests(h: Harness, tenant: str, operation: str = "create_refund") -> list[Any]:
    """The requests the tenant's gateway is sent for ``operation`` from now on."""
    gateway = h.pool.get(Tenant.model_validate(h.tenants[tenant]))
    sent: list[Any] = []
    call = getattr(gateway, operation)

    async def recorded(req: Any, *, idempotency_key: str) -> Any:
        sent.append(req)
        return await call(req, idempotency_key=idempotency_key)

    setattr(gateway, operation, recorded)
    return sent


async def test_a_refund_carries_its_reference_where_webhooks_are_sent(harness: Harness) -> None:
    h, t = harness, new_tenant_id()
    h.add_tenant(t)
    _with_webhooks(h, t)
    sent = _record_requests(h, t)
    await _answer(h, _command(t, "payment.create", _CHARGE, "c1"))
    body = {"payment_id": "p1", "refund_id": "r1", "metadata": {"order": "o-1"}}
    out = await _answer(h, _command(t, "refund.create", body, "c2"))
    assert kind(out) == "refund.succeeded", data(out)
    [req] = sent
    assert (req.amount, req.metadata) == (None, {"order": "o-1", gw.REFUND_REF_KEY: f"{t}:r1"})
    # The refund's own record keeps the producer's metadata only.
    assert data(out)["object"].get("metadata", {}).get(gw.REFUND_REF_KEY) is None


@pytest.mark.parametrize("amount", [None, 700], ids=["the rest", "an amount"])
async def test_a_refund_parked_before_the_upgrade_is_answered_when_redriven(
    harness: Harness, amount: int | None
) -> None:
    """First sent by an older version (the amount the table had left named, no
    reference), its answer lost: re-driven by this one, refused by the provider as other
    parameters under the key, then sent once more as it was first sent and answered."""
    h, t = harness, new_tenant_id()
    key = f"pse:{t}:refund:r2"
    h.add_tenant(t, gateway_options={"fail_first": {key: 3}})
    await _answer(h, _command(t, "payment.create", _CHARGE, "c1"))
    body: dict[str, Any] = {"payment_id": "p1", "refund_id": "r2"}
    if amount is not None:
        body["amount"] = amount
    parked = await h.processor.process(_command(t, "refund.create", body, "c3"))
    assert [e.topic for e in parked] == [h.settings.retry_topic]
    gateway = h.pool.get(Tenant.model_validate(h.tenants[t]))
    ppid = h.tables.payments[f"{t}:p1"]["provider_payment_id"]
    old = await gateway.create_refund(
        gw.CreateRefund(provider_payment_id=ppid, amount=amount or 2000), idempotency_key=key
    )
    _with_webhooks(h, t)  # the upgrade: refunds now carry the reference
    sent = _record_requests(h, t)
    out = await _answer(h, _command(t, "refund.create", body, "c3"))
    assert kind(out) == "refund.succeeded", data(out)
    assert data(out)["object"]["provider_refund_id"] == old.provider_refund_id
    assert [r.metadata for r in sent] == [{gw.REFUND_REF_KEY: f"{t}:r2"}, {}]
    assert await _effects(h, t, "refund") == 1
    assert h.tables.payments[f"{t}:p1"]["amount_refunded"] == (amount or 2000)


async def test_a_refund_sent_with_its_reference_is_answered_after_webhooks_are_taken_away(
    harness: Harness,
) -> None:
    """Parked with its answer lost while the tenant had `webhooks`; re-driven after its
    capabilities were narrowed: sent without the reference it is refused under the key,
    then with it, and answered (review finding: parked for good)."""
    h, t = harness, new_tenant_id()
    key = f"pse:{t}:refund:r2"
    h.add_tenant(t, gateway_options={"fail_first": {key: 3}})
    _with_webhooks(h, t)
    await _answer(h, _command(t, "payment.create", _CHARGE, "c1"))
    body = {"payment_id": "p1", "refund_id": "r2", "amount": 700}
    parked = await h.processor.process(_command(t, "refund.create", body, "c3"))
    assert [e.topic for e in parked] == [h.settings.retry_topic]
    gateway = h.pool.get(Tenant.model_validate(h.tenants[t]))
    ppid = h.tables.payments[f"{t}:p1"]["provider_payment_id"]
    ref = {gw.REFUND_REF_KEY: f"{t}:r2"}
    first = await gateway.create_refund(
        gw.CreateRefund(provider_payment_id=ppid, amount=700, metadata=ref), idempotency_key=key
    )
    gateway.capabilities = gateway.capabilities - {Capability.WEBHOOKS}  # type: ignore[misc]
    sent = _record_requests(h, t)
    out = await _answer(h, _command(t, "refund.create", body, "c3"))
    assert kind(out) == "refund.succeeded", data(out)
    assert data(out)["object"]["provider_refund_id"] == first.provider_refund_id
    assert [r.metadata for r in sent] == [{}, ref]
    assert await _effects(h, t, "refund") == 1


async def test_a_refund_whose_metadata_is_full_is_not_sent_twice_alike(harness: Harness) -> None:
    """50 metadata keys take no reference: its ways with and without it are one request,
    sent once (review finding: sent twice, refused twice)."""
    h, t = harness, new_tenant_id()
    key = f"pse:{t}:refund:r2"
    h.add_tenant(t, gateway_options={"fail_first": {key: 3}})
    _with_webhooks(h, t)
    await _answer(h, _command(t, "payment.create", _CHARGE, "c1"))
    full = {f"k{i}": "v" for i in range(50)}
    body = {"payment_id": "p1", "refund_id": "r2", "metadata": full}
    parked = await h.processor.process(_command(t, "refund.create", body, "c3"))
    assert [e.topic for e in parked] == [h.settings.retry_topic]
    gateway = h.pool.get(Tenant.model_validate(h.tenants[t]))
    ppid = h.tables.payments[f"{t}:p1"]["provider_payment_id"]
    # Another request under the key (an amount nobody names here): every way is refused.
    await gateway.create_refund(
        gw.CreateRefund(provider_payment_id=ppid, amount=5, metadata=full), idempotency_key=key
    )
    sent = _record_requests(h, t)
    redriven = await h.processor.process(_command(t, "refund.create", body, "c3"))
    assert [e.topic for e in redriven] == [h.settings.retry_topic]
    ways = [(r.amount, len(r.metadata)) for r in sent]
    assert ways == [(None, 50), (2000, 50)]


async def test_a_create_sent_with_its_reference_is_answered_after_webhooks_are_taken_away(
    harness: Harness,
) -> None:
    """The payment's create, sent by paystream with its reference while the tenant had
    `webhooks` and its answer lost (parked), re-driven after its capabilities were
    narrowed: refused without the reference under the key, then sent with it and
    answered; charged once (review finding: only ever sent without it, parked for good)."""
    h, t = harness, new_tenant_id()
    h.add_tenant(t, gateway_options={"lose_response_first": {f"pse:{t}:payment:p1": 3}})
    _with_webhooks(h, t)
    charge = {**_CHARGE, "metadata": {"order": "o-9"}}
    parked = await h.processor.process(_command(t, "payment.create", charge, "c1"))
    assert [e.topic for e in parked] == [h.settings.retry_topic]
    assert await _effects(h, t, "charge") == 1  # made at the provider, its answer lost
    gateway = h.pool.get(Tenant.model_validate(h.tenants[t]))
    gateway.capabilities = gateway.capabilities - {Capability.WEBHOOKS}  # type: ignore[misc]
    sent = _record_requests(h, t, "create_payment")
    out = await _answer(h, _command(t, "payment.create", charge, "c1"))
    assert kind(out) == "payment.succeeded", data(out)
    assert [r.metadata for r in sent] == [
        {"order": "o-9"},
        gw.payment_ref({"order": "o-9"}, t, "p1"),
    ]
    assert await _effects(h, t, "charge") == 1


# ---- one-off invoices: their reference (gw.invoice_ref) ------------------------------


async def _invoice_parked(h: Harness, t: str, key: str) -> tuple[dict[str, Any], Any]:
    """A customer with a saved card, and an invoice.create (c9, invoice in1) parked on
    its key's failures: its body, and the gateway the requests of ``create_invoice`` are
    recorded at (the first: the create as it was sent)."""
    h.add_tenant(t, gateway_options={"fail_first": {key: 3}})
    cus = await _answer(h, _command(t, "customer.create", {"customer_id": "cu1"}, "c7"))
    assert kind(cus) == "customer.created", data(cus)
    attach = {"customer_id": "cu1", "token": "pm_card_visa", "payment_method_id": "pm1"}
    assert kind(await _answer(h, _command(t, "payment_method.attach", attach, "c8"))) == (
        "payment_method.attached"
    )
    body = {"customer_id": "cu1", "payment_method_id": "pm1", "currency": "EUR",
            "invoice_id": "in1", "metadata": {"order": "o-1"},
            "line_items": [{"description": "Hours", "amount": 2500}]}  # fmt: skip
    return body, _record_requests(h, t, "create_invoice")


async def test_an_invoice_carries_its_reference_where_webhooks_are_sent(
    harness: Harness,
) -> None:
    h, t = harness, new_tenant_id()
    body, sent = await _invoice_parked(h, t, "unused")
    _with_webhooks(h, t)
    out = await _answer(h, _command(t, "invoice.create", body, "c9"))
    assert kind(out) == "invoice.created", data(out)
    [req] = sent
    assert req.metadata == {"order": "o-1", gw.INVOICE_REF_KEY: f"{t}:in1"}
    # The invoice's own record keeps the producer's metadata only.
    assert data(out)["object"]["metadata"] == {"order": "o-1"}


async def test_an_invoice_parked_before_the_upgrade_is_answered_when_redriven(
    harness: Harness,
) -> None:
    """First sent by an older version (no reference), its answer lost: re-driven by this
    one, refused by the provider as other parameters under the key, then sent once more
    as it was first sent and answered: the same invoice, made once."""
    h, t = harness, new_tenant_id()
    key = f"pse:{t}:invoice:in1"
    body, sent = await _invoice_parked(h, t, key)
    parked = await h.processor.process(_command(t, "invoice.create", body, "c9"))
    assert [e.topic for e in parked] == [h.settings.retry_topic]
    gateway = h.pool.get(Tenant.model_validate(h.tenants[t]))
    old = await gateway.create_invoice(sent[0], idempotency_key=key)  # (it reached it)
    _with_webhooks(h, t)  # the upgrade: invoices now carry the reference
    sent.clear()
    out = await _answer(h, _command(t, "invoice.create", body, "c9"))
    assert kind(out) == "invoice.created", data(out)
    assert data(out)["object"]["provider_invoice_id"] == old.provider_invoice_id
    assert [r.metadata for r in sent] == [
        {"order": "o-1", gw.INVOICE_REF_KEY: f"{t}:in1"},
        {"order": "o-1"},
    ]
