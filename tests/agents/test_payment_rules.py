"""Payment rules found missing in review: each test is a command sequence that used to
pay out twice, park forever, drop a dispute, crash, or leave a failed payment behind."""

from __future__ import annotations

import copy
from collections import UserDict
from typing import Any

import pytest

from paystream.agents.handlers import Tables
from paystream.agents.pipeline import Inbound, _request_hash
from paystream.client import build_command
from paystream.gateways import base as gw
from paystream.gateways.simulator import SimulatorGateway
from paystream.settings import CloudEventsMode
from paystream.streams.codec import encode_event
from paystream.streams.commands import CreatePayment
from paystream.tenancy.models import Tenant
from tests.agents.harness import Harness, data, kind, new_tenant_id, outcome_of

pytestmark = pytest.mark.asyncio

USD_1000 = {"amount": 1000, "currency": "USD"}


def _gateway(h: Harness, tenant: str) -> SimulatorGateway:
    gateway = h.pool.get(Tenant.model_validate(h.tenants[tenant]))
    assert isinstance(gateway, SimulatorGateway)
    return gateway


async def _effects(h: Harness, tenant: str) -> list[tuple[str, int | None]]:
    return [(e.kind, e.amount) for e in await _gateway(h, tenant).effects()]


def _provider_down(harness: Harness, tenant: str) -> None:
    """Every provider call now fails (and the command would park): an answer must come
    from paystream's own rules. The simulator enforces the same ones, so with it up a
    missing rule here went unnoticed; on Stripe (localstripe is lenient) they are the
    only defence."""
    record = dict(harness.tenants[tenant])
    record["gateway_options"] = {"fail_rate": 1.0}
    harness.tenants[tenant] = record


async def _paid(harness: Harness, tenant: str, payment_id: str, **extra: Any) -> None:
    body = {"payment_id": payment_id, **USD_1000, "payment_method_token": "pm_card_visa"}
    out = await harness.send("payment.create", tenant, {**body, **extra})
    assert kind(out) in ("payment.succeeded", "payment.authorized")


async def test_paystreams_own_state_rules_answer_without_the_provider(harness: Harness) -> None:
    t = harness.add_tenant()
    await _paid(harness, t, "canceled", capture="manual")
    await harness.send("payment.cancel", t, {"payment_id": "canceled"})
    await _paid(harness, t, "succeeded")
    await _paid(harness, t, "authorized", capture="manual")
    await harness.send("customer.create", t, {"customer_id": "ann"})
    await harness.send("customer.create", t, {"customer_id": "bob"})
    for pm, owner in (("pm_ann", "ann"), ("pm_gone", "ann")):
        attached = await harness.send(
            "payment_method.attach",
            t,
            {"customer_id": owner, "payment_method_id": pm, "token": "pm_card_visa"},
        )
        assert kind(attached) == "payment_method.attached"
    await harness.send("payment_method.detach", t, {"payment_method_id": "pm_gone"})
    before = await _effects(harness, t)
    _provider_down(harness, t)
    charge = {**USD_1000, "payment_id": "new"}
    cases = [
        ("payment.capture", {"payment_id": "canceled"}, "invalid_state"),
        ("refund.create", {"payment_id": "canceled"}, "invalid_state"),
        ("payment.capture", {"payment_id": "succeeded"}, "invalid_state"),
        ("payment.cancel", {"payment_id": "succeeded"}, "invalid_state"),
        ("refund.create", {"payment_id": "authorized"}, "invalid_state"),  # nothing captured
        ("refund.create", {"payment_id": "succeeded", "amount": 1001}, "invalid_state"),
        ("payment.capture", {"payment_id": "authorized", "amount": 1001}, "validation_error"),
        ("payment.create", {**charge, "payment_method_id": "pm_gone"}, "invalid_state"),
        (
            "payment.create",
            {**charge, "payment_method_id": "pm_ann", "customer_id": "bob"},
            "invalid_state",
        ),
        ("customer.update", {"customer_id": "nobody", "name": "x"}, "not_found"),
    ]
    for command, body, reason in cases:
        emits, out = await harness.send_event(build_command(command, t, body))
        assert harness.settings.retry_topic not in [e.topic for e in emits], (command, body)
        assert out is not None and (kind(out), data(out)["reason"]) == (
            "command.rejected",
            reason,
        ), (command, body)
    assert await _effects(harness, t) == before


async def _lost_dispute(harness: Harness, tenant: str) -> str:
    """Payment "p1" of ``tenant``, disputed and the dispute accepted (lost): its id."""
    paid = await harness.send(
        "payment.create",
        tenant,
        {"payment_id": "p1", **USD_1000, "payment_method_token": "pm_card_createDispute"},
    )
    dispute_id = str(data(paid)["related"][0]["entity_id"])
    lost = await harness.send("dispute.accept", tenant, {"dispute_id": dispute_id})
    assert data(lost)["object"]["status"] == "lost"
    return dispute_id


async def test_no_refund_after_a_lost_dispute(harness: Harness) -> None:
    t = harness.add_tenant()
    await _lost_dispute(harness, t)
    _provider_down(harness, t)  # paystream's own rule, not the simulator's, must answer
    refund = await harness.send("refund.create", t, {"payment_id": "p1"})
    assert kind(refund) == "command.rejected" and data(refund)["reason"] == "invalid_state"
    assert "charged back" in data(refund)["message"]
    assert not any(k == "refund" for k, _ in await _effects(harness, t))


async def test_a_processing_error_decline_is_answered_not_parked_forever(
    harness: Harness,
) -> None:
    t = harness.add_tenant()
    emits, out = await harness.send_event(
        build_command(
            "payment.create",
            t,
            {**USD_1000, "payment_method_token": "pm_card_chargeDeclinedProcessingError"},
        )
    )
    assert out is not None and kind(out) == "payment.failed"
    assert data(out)["error"]["code"] == "processing_error"
    assert harness.settings.retry_topic not in [e.topic for e in emits]


async def test_a_dispute_reported_at_capture_is_recorded(harness: Harness) -> None:
    t = harness.add_tenant()
    await harness.send(
        "payment.create",
        t,
        {
            "payment_id": "p1",
            **USD_1000,
            "payment_method_token": "pm_card_createDispute",
            "capture": "manual",
        },
    )
    captured = await harness.send("payment.capture", t, {"payment_id": "p1"})
    assert kind(captured) == "payment.succeeded"
    [related] = data(captured)["related"]
    assert related["entity_type"] == "dispute"
    assert data(captured)["object"]["dispute_id"] == related["entity_id"]
    answered = await harness.send("dispute.accept", t, {"dispute_id": related["entity_id"]})
    assert kind(answered) == "dispute.closed"


async def test_a_payment_still_processing_at_the_provider_is_recorded_as_such(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = harness.add_tenant()
    gateway = _gateway(harness, t)
    real = gateway.create_payment

    async def processing(req: Any, *, idempotency_key: str) -> gw.PaymentResult:
        res = await real(req, idempotency_key=idempotency_key)
        return res.model_copy(update={"status": gw.PaymentStatus.PROCESSING})

    monkeypatch.setattr(gateway, "create_payment", processing)
    out = await harness.send(
        "payment.create",
        t,
        {"payment_id": "p1", **USD_1000, "payment_method_token": "pm_card_visa"},
    )
    assert kind(out) == "payment.processing" and data(out)["object"]["status"] == "processing"
    monkeypatch.undo()
    # nothing may act on it until the provider settles it
    refund = await harness.send("refund.create", t, {"payment_id": "p1"})
    assert data(refund)["reason"] == "invalid_state"


async def test_a_request_the_provider_refuses_is_rejected_without_a_failed_payment(
    harness: Harness,
) -> None:
    t = harness.add_tenant()
    await harness.send("customer.create", t, {"customer_id": "c1"})
    attached = await harness.send(
        "payment_method.attach",
        t,
        {"customer_id": "c1", "token": "pm_card_visa", "payment_method_id": "m1"},
    )
    await harness.send("payment_method.detach", t, {"payment_method_id": "m1"})
    # the provider refuses its detached card, named by its own id (invalid_state)
    token = data(attached)["object"]["provider_payment_method_id"]
    refused = await harness.send(
        "payment.create", t, {"payment_id": "p1", **USD_1000, "payment_method_token": token}
    )
    assert kind(refused) == "command.rejected" and data(refused)["reason"] == "invalid_state"
    assert f"{t}:p1" not in harness.tables.payments  # no failed p1 left behind
    corrected = {**USD_1000, "payment_method_token": "pm_card_visa"}
    # The provider keeps its refusal under p1's key (Stripe, for 24 h; the simulator as
    # Stripe): the corrected command under the same payment id is told the id is taken
    # there (review h68ai: not a conflict over a key the tenant never sent)...
    same_id = await harness.send("payment.create", t, {"payment_id": "p1", **corrected})
    assert data(same_id)["reason"] == "invalid_state"
    assert "taken at the provider" in data(same_id)["message"]
    # ...and goes through under a new one (as the README tells producers to send it).
    fixed = await harness.send("payment.create", t, {"payment_id": "p2", **corrected})
    assert kind(fixed) == "payment.succeeded"
    assert await _effects(harness, t) == [
        ("customer.created", None),
        ("payment_method.attached", None),
        ("payment_method.detached", None),
        ("charge", 1000),
    ]


async def test_a_dispute_the_provider_resolved_as_won_does_not_block_a_refund(
    harness: Harness,
) -> None:
    t = harness.add_tenant()
    paid = await harness.send(
        "payment.create",
        t,
        {"payment_id": "p1", **USD_1000, "payment_method_token": "pm_card_createDispute"},
    )
    dispute = data(paid)["related"][0]
    await harness.send(
        "dispute.submit_evidence",
        t,
        {"dispute_id": dispute["entity_id"], "evidence": {"uncategorized_text": "delivered"}},
    )
    # The card network decides at the provider; paystream's record still says under review.
    await _gateway(harness, t).resolve_dispute(dispute["object"]["provider_dispute_id"], won=True)
    refund = await harness.send("refund.create", t, {"payment_id": "p1", "amount": 100})
    assert kind(refund) == "refund.succeeded", data(refund)


@pytest.mark.parametrize("create", ["payment", "refund"])
async def test_a_create_parked_after_the_provider_applied_it_moves_money_once(
    harness: Harness, create: str
) -> None:
    """The provider applied the create but its answer was lost: parked, no outcome. The
    producer sends it again under a new command id (same entity id): the same create at
    the provider, so no second charge or refund; the parked original, re-driven, is
    answered with what the resend made."""
    t = new_tenant_id()
    entity = "p1" if create == "payment" else "r1"
    harness.add_tenant(
        t, gateway_options={"lose_response_first": {f"pse:{t}:{create}:{entity}": 3}}
    )
    pay = {"payment_id": "p1", **USD_1000, "payment_method_token": "pm_card_visa"}
    body: dict[str, Any] = pay
    if create == "refund":
        await harness.send("payment.create", t, pay)
        body = {"refund_id": "r1", "payment_id": "p1", "amount": 500}
    first = build_command(f"{create}.create", t, body, command_id=f"cmd-{create}")
    emits, out = await harness.send_event(first)
    assert out is None and [e.topic for e in emits] == [harness.settings.retry_topic]
    again = await harness.send(f"{create}.create", t, body, command_id=f"cmd-{create}-2")
    assert kind(again) == ("payment.succeeded" if create == "payment" else "refund.succeeded")
    _, replayed = await harness.send_event(first)  # `paystream dlq replay`
    assert replayed is not None and kind(replayed) == kind(again)
    assert data(replayed)["answered_by"] == f"cmd-{create}-2"
    assert data(replayed)["object"] == data(again)["object"]
    moved = [k for k, _ in await _effects(harness, t) if k in ("charge", "refund")]
    assert moved == (["charge"] if create == "payment" else ["charge", "refund"])


async def test_a_customer_the_provider_no_longer_has_can_still_be_erased(
    harness: Harness,
) -> None:
    """Its delete was applied at the provider but parked (or it was deleted in the
    provider's dashboard): erasure used to be refused as not_found, for good."""
    t = new_tenant_id()
    harness.add_tenant(t, gateway_options={"lose_response_first": {f"ps:{t}:cmd-del": 3}})
    await harness.send("customer.create", t, {"customer_id": "c1", "email": "ann@example.com"})
    delete = build_command("customer.delete", t, {"customer_id": "c1"}, command_id="cmd-del")
    emits, _ = await harness.send_event(delete)
    assert [e.topic for e in emits] == [harness.settings.retry_topic]
    erased = await harness.send("customer.erase", t, {"customer_id": "c1"})
    assert kind(erased) == "customer.erased"
    assert data(erased)["provider_deletion"] == "not_found"  # the operator can tell
    assert "ann@example.com" not in str(harness.tables.customers[f"{t}:c1"])


def _made_through(harness: Harness, table: dict[str, Any], key: str, provider: str) -> None:
    table[key] = {**table[key], "provider": provider}


async def test_entities_made_through_another_provider_are_not_sent_to_the_current_one(
    harness: Harness,
) -> None:
    """The tenant moved to another provider: an old payment's capture or refund, or an old
    customer's delete, would send provider ids the new provider never issued (and its
    `not_found` for a delete read as "deleted"). They are refused as invalid_state;
    erasure still erases here and says the provider's copy was not deleted."""
    t = harness.add_tenant()
    await harness.send("customer.create", t, {"customer_id": "c1", "email": "ann@example.com"})
    pay = {"payment_id": "p1", **USD_1000, "payment_method_token": "pm_card_visa"}
    await harness.send("payment.create", t, {**pay, "capture": "manual"})
    await harness.send("payment.create", t, {**pay, "payment_id": "p2"})
    for table, key in [
        (harness.tables.customers, f"{t}:c1"),
        (harness.tables.payments, f"{t}:p1"),
        (harness.tables.payments, f"{t}:p2"),
    ]:
        _made_through(harness, table, key, "stripe")
    refused = [
        await harness.send("payment.capture", t, {"payment_id": "p1"}),
        await harness.send("payment.cancel", t, {"payment_id": "p1"}),
        await harness.send("refund.create", t, {"payment_id": "p2", "amount": 100}),
        await harness.send("customer.update", t, {"customer_id": "c1", "name": "Ann"}),
        await harness.send("customer.delete", t, {"customer_id": "c1"}),
        await harness.send("payment.create", t, {**pay, "payment_id": "p3", "customer_id": "c1"}),
    ]
    for out in refused:
        assert (kind(out), data(out)["reason"]) == ("command.rejected", "invalid_state")
        assert "made through stripe" in data(out)["message"]
    erased = await harness.send("customer.erase", t, {"customer_id": "c1"})
    assert kind(erased) == "customer.erased"
    assert data(erased)["provider_deletion"] == "other_provider"
    moved = [k for k, _ in await _effects(harness, t)]
    assert moved == ["customer.created", "authorization", "charge"]  # nothing after


async def test_a_delete_says_what_the_provider_did(harness: Harness) -> None:
    t = harness.add_tenant()
    await harness.send("customer.create", t, {"customer_id": "c1"})
    deleted = await harness.send("customer.delete", t, {"customer_id": "c1"})
    assert (kind(deleted), data(deleted)["provider_deletion"]) == ("customer.deleted", "deleted")


async def test_a_redelivered_erasure_scrubs_the_stored_outcomes_again(
    harness: Harness,
) -> None:
    """A crash kept the customer's erased record but lost the batch's idempotency writes:
    the erasure, redelivered, scrubs the stored outcomes again, so a retry of the old
    create does not publish the erased email."""
    t = harness.add_tenant()
    create = build_command(
        "customer.create", t, {"customer_id": "c1", "email": "ann@example.com", "name": "Ann"}
    )
    await harness.send_event(create)
    before = copy.deepcopy(dict(harness.idempotency))
    erase = build_command("customer.erase", t, {"customer_id": "c1"})
    await harness.send_event(erase)
    harness.idempotency.clear()
    harness.idempotency.update(before)  # the crash lost these writes
    _, again = await harness.send_event(erase)
    assert again is not None and kind(again) == "customer.erased"
    _, retried = await harness.send_event(create)
    assert retried is not None and "ann@example.com" not in str(data(retried))


def _payment_record(harness: Harness, tenant: str, body: dict[str, Any], offset: int) -> Inbound:
    """A payment.create as read from the commands topic (so a redelivery is recognised)."""
    event = build_command("payment.create", tenant, body)
    rec = encode_event(event, tenant.encode(), CloudEventsMode.BINARY)
    return Inbound(
        key=rec.key,
        value=rec.value,
        headers=dict(rec.headers),
        timestamp_ms=1_790_000_000_000,
        topic=harness.settings.commands_topic,
        partition=0,
        offset=offset,
    )


@pytest.mark.parametrize("since", ["suspended", "removed"])
async def test_a_redelivered_record_keeps_its_answer_after_the_tenant_changed(
    harness: Harness, since: str
) -> None:
    """Charged and answered, then the worker crashed before committing; meanwhile the
    tenant was suspended (or removed). The redelivered record gets the answer it got,
    byte for byte, not a rejection contradicting a payment already made."""
    t = harness.add_tenant()
    pay = {"payment_id": "p1", **USD_1000, "payment_method_token": "pm_card_visa"}
    inbound = _payment_record(harness, t, pay, offset=7)
    first = await harness.raw(inbound)
    if since == "suspended":
        harness.tenants[t] = {**harness.tenants[t], "status": "suspended"}
    else:
        del harness.tenants[t]
    again = await harness.raw(inbound)
    assert [e.record for e in again] == [e.record for e in first]
    # A new command of the tenant is refused as before.
    refused = await harness.send("payment.create", t, {**pay, "payment_id": "p2"})
    assert data(refused)["reason"] in {"tenant_suspended", "unknown_tenant"}


class _Recording(UserDict[str, Any]):
    """A table that notes every write (each would be a changelog record)."""

    def __init__(self, name: str, log: list[tuple[str, str]]) -> None:
        super().__init__()
        self.name, self.log = name, log

    def __setitem__(self, key: str, value: Any) -> None:
        self.log.append((self.name, key))
        super().__setitem__(key, value)


async def test_a_redelivered_record_writes_its_entries_to_the_changelog_again(
    harness: Harness,
) -> None:
    """With RocksDB a table set reaches the local store before the batch's changelog is
    produced: after a crash the store holds what the changelog lacks. The redelivered
    record, answered from its stored outcome, writes its entries again, so they reach the
    changelog this time (they used to write nothing)."""
    writes: list[tuple[str, str]] = []
    names = ("customers", "payment_methods", "payments", "refunds", "disputes")
    harness.tables = Tables(*(_Recording(n, writes) for n in names))
    harness.idempotency = _Recording("idempotency", writes)
    harness.__post_init__()
    t = harness.add_tenant(limits={"commands_per_second": 100})
    pay = {"payment_id": "p1", **USD_1000, "payment_method_token": "pm_card_visa"}
    inbound = _payment_record(harness, t, pay, offset=42)
    first = await harness.raw(inbound)
    writes.clear()
    again = await harness.raw(inbound)
    assert [e.record for e in again] == [e.record for e in first]
    assert {"payments", "idempotency"} <= {name for name, _ in writes}


async def test_a_create_parked_by_an_older_version_keeps_its_provider_key(
    harness: Harness,
) -> None:
    """A record an older version wrote (no entity_keys flag) means the command was first
    sent under the command-scoped key: re-driven, it keeps that key, so the provider
    replays the create instead of charging again under a new one."""
    t = new_tenant_id()
    legacy = f"ps:{t}:cmd-old"
    harness.add_tenant(t, gateway_options={"lose_response_first": {legacy: 3}})
    pay = {"payment_id": "p1", **USD_1000, "payment_method_token": "pm_card_visa"}
    command = build_command("payment.create", t, pay, command_id="cmd-old")
    # In flight at an older version's crash: its record, as that version wrote it.
    data = CreatePayment.model_validate(pay).model_dump(mode="json")
    request_hash = _request_hash("payment.create", data)
    harness.idempotency[f"{t}:cmd-old"] = {
        "command_id": "cmd-old",
        "command_type": "payment.create",
        "request_hash": request_hash,
        "state": "in_flight",
        "expires_at": 4_000_000_000.0,
    }
    parked, _ = await harness.send_event(command)  # the provider applies; answers lost
    assert [e.topic for e in parked] == [harness.settings.retry_topic]
    _, replayed = await harness.send_event(command)  # `paystream dlq replay`
    assert replayed is not None and kind(replayed) == "payment.succeeded"
    charges = [e for e in await _gateway(harness, t).effects() if e.kind == "charge"]
    assert [e.idempotency_key for e in charges] == [legacy]


async def test_a_client_key_naming_an_entity_is_not_its_provider_key(harness: Harness) -> None:
    """Entity-scoped provider keys have a namespace of their own: a capture sent under
    the idempotency key "payment:p1" is not taken for p1's create at the provider."""
    t = harness.add_tenant()
    auth = {"payment_id": "p1", **USD_1000, "payment_method_token": "pm_card_visa"}
    await harness.send("payment.create", t, {**auth, "capture": "manual"})
    captured = await harness.send(
        "payment.capture", t, {"payment_id": "p1"}, idempotency_key="payment:p1"
    )
    assert kind(captured) == "payment.succeeded"


async def test_a_command_id_reused_for_another_request_is_a_conflict_not_a_replay(
    harness: Harness,
) -> None:
    """Two payment.create under one command id (another source's, say) with their own
    idempotency keys and amounts: the second was answered with the first's outcome, a
    payment.succeeded for 1000 when 2500 was asked and nothing was charged."""
    t = harness.add_tenant()
    body = {**USD_1000, "payment_method_token": "pm_card_visa"}
    first = await harness.send(
        "payment.create", t, body, command_id="1", idempotency_key="k1", source="/shop-a"
    )
    assert kind(first) == "payment.succeeded"
    again = await harness.send(
        "payment.create", t, body, command_id="1", idempotency_key="k1", source="/shop-a"
    )
    assert again.get_id() == first.get_id()  # the same command: its outcome
    other = await harness.send(
        "payment.create",
        t,
        {**body, "amount": 2500},
        command_id="1",
        idempotency_key="k2",
        source="/shop-b",
    )
    assert (kind(other), data(other)["reason"]) == ("command.rejected", "idempotency_conflict")
    assert [a for k, a in await _effects(harness, t) if k == "charge"] == [1000]


@pytest.mark.parametrize(("first_key", "second_key"), [("k1", "k2"), (None, "k2"), ("k1", None)])
async def test_a_command_id_reused_for_another_entity_is_a_conflict(
    harness: Harness, first_key: str | None, second_key: str | None
) -> None:
    """Under one command id, p1 for 1000 then p2 for 5000: both were charged, and both
    outcomes had the same event id, so the ledger kept one charge of the two."""
    t = harness.add_tenant()
    pay = {"payment_method_token": "pm_card_visa", "currency": "USD"}
    first = await harness.send(
        "payment.create",
        t,
        {**pay, "payment_id": "p1", "amount": 1000},
        command_id="1",
        idempotency_key=first_key,
    )
    assert kind(first) == "payment.succeeded"
    second = await harness.send(
        "payment.create",
        t,
        {**pay, "payment_id": "p2", "amount": 5000},
        command_id="1",
        idempotency_key=second_key,
    )
    assert (kind(second), data(second)["reason"]) == ("command.rejected", "idempotency_conflict")
    assert [a for k, a in await _effects(harness, t) if k == "charge"] == [1000]
    again = await harness.send(  # the first, redelivered: still its own outcome
        "payment.create",
        t,
        {**pay, "payment_id": "p1", "amount": 1000},
        command_id="1",
        idempotency_key=first_key,
    )
    assert again.get_id() == first.get_id()


async def test_an_idempotency_key_with_a_control_character_is_refused(harness: Harness) -> None:
    t = harness.add_tenant()
    out = await harness.send(
        "customer.create", t, {"customer_id": "c1"}, attributes={"idempotencykey": "\x1fid:x"}
    )
    assert data(out)["reason"] == "validation_error" and "control" in data(out)["message"]


async def _park_p2(harness: Harness) -> tuple[str, Any]:
    """A tenant, and its payment p2 (5000, id 1, key kB) parked: the provider failed."""
    t = new_tenant_id()
    harness.add_tenant(t, gateway_options={"fail_first": {f"pse:{t}:payment:p2": 3}})
    body = {"payment_method_token": "pm_card_visa", "currency": "USD", "amount": 5000}
    parked = build_command(
        "payment.create", t, {**body, "payment_id": "p2"}, command_id="1", idempotency_key="kB"
    )
    emits, _ = await harness.send_event(parked)
    assert [e.topic for e in emits] == [harness.settings.retry_topic]
    return t, parked


async def test_a_parked_command_is_not_stopped_by_a_later_use_of_its_id(
    harness: Harness,
) -> None:
    """Parked (let through once: the provider may have charged), then another request ran
    under the same id: re-driven, the parked one must still run, not conflict."""
    t, parked_cmd = await _park_p2(harness)
    pay = {"payment_method_token": "pm_card_visa", "currency": "USD"}
    # What an older version let run meanwhile (it kept no record of which request id
    # 1 names): a default-key command under the same id.
    harness.idempotency.pop(f"{t}:\x1fid:1")
    first = await harness.send(
        "payment.create", t, {**pay, "payment_id": "p1", "amount": 1000}, command_id="1"
    )
    assert kind(first) == "payment.succeeded"
    _, redriven = await harness.send_event(parked_cmd)  # `paystream dlq replay`
    assert redriven is not None and kind(redriven) == "payment.succeeded"


async def test_an_unremembered_refusal_does_not_claim_its_command_id(harness: Harness) -> None:
    """A refusal that is not remembered (the tenant's setup was wrong) leaves the id free
    for the corrected request, as it leaves the idempotency key."""
    t = harness.add_tenant()
    await harness.send("customer.create", t, {"customer_id": "c1"})
    harness.tables.customers[f"{t}:c1"] = {**harness.tables.customers[f"{t}:c1"], "provider": "x"}
    refused = await harness.send(
        "customer.update", t, {"customer_id": "c1", "name": "A"}, command_id="u1",
        idempotency_key="ku",
    )  # fmt: skip
    assert data(refused)["reason"] == "invalid_state"
    harness.tables.customers[f"{t}:c1"] = {
        **harness.tables.customers[f"{t}:c1"],
        "provider": "simulator",
    }
    fixed = await harness.send(
        "customer.update", t, {"customer_id": "c1", "name": "B"}, command_id="u1",
        idempotency_key="ku2",
    )  # fmt: skip
    assert kind(fixed) == "customer.updated"


async def test_erasure_leaves_no_request_hash_of_the_personal_data(harness: Harness) -> None:
    t = harness.add_tenant()
    await harness.send(
        "customer.create",
        t,
        {"customer_id": "c1", "email": "ann@example.com", "name": "Ann"},
        command_id="x1",
        idempotency_key="k1",
    )
    create_hash = harness.idempotency[f"{t}:k1"]["request_hash"]
    await harness.send("customer.erase", t, {"customer_id": "c1"})
    assert create_hash not in str(harness.idempotency)
    assert create_hash not in str(harness.tables.customers)


async def test_a_create_redelivered_after_its_customers_erasure_keeps_its_answer(
    harness: Harness,
) -> None:
    """Erasure replaced the create's request hash: its redelivery (a crash before the
    commit) was then an idempotency_conflict, contradicting the customer.created sent."""
    t = harness.add_tenant()
    create = build_command("customer.create", t, {"customer_id": "c1", "email": "a@b.example"})
    _, created = await harness.send_event(create)
    await harness.send("customer.erase", t, {"customer_id": "c1"})
    _, again = await harness.send_event(create)
    assert created is not None and again is not None
    assert (kind(again), again.get_id()) == ("customer.created", created.get_id())


async def test_a_refusal_frees_only_the_id_record_it_wrote(harness: Harness) -> None:
    """An unremembered refusal under id u1 deleted the record an earlier command under
    u1 wrote: a third, different request under u1 then ran. (u1 sent again under
    another key is now the command it was: its first answer, not a refusal of its own.)"""
    t = harness.add_tenant()
    pay = {"payment_id": "p9", "amount": 500, "currency": "USD",
           "payment_method_token": "pm_card_visa", "capture": "manual"}  # fmt: skip
    await harness.send("payment.create", t, pay)
    await harness.send("payment.cancel", t, {"payment_id": "p9"})
    capture = {"payment_id": "p9"}
    first = await harness.send("payment.capture", t, capture, command_id="u1", idempotency_key="ka")
    assert data(first)["reason"] == "invalid_state"  # remembered; u1 names this request
    del harness.tables.payments[f"{t}:p9"]  # (no command removes one: a lost record)
    again = await harness.send("payment.capture", t, capture, command_id="u1", idempotency_key="kb")
    assert data(again)["reason"] == "invalid_state" and again.get_id() == first.get_id()
    gone = await harness.send("payment.capture", t, capture, command_id="u2", idempotency_key="kb")
    assert data(gone)["reason"] == "not_found"  # not remembered
    third = await harness.send(
        "payment.capture", t, {"payment_id": "p9", "amount": 100}, command_id="u1",
        idempotency_key="kc",
    )  # fmt: skip
    assert data(third)["reason"] == "idempotency_conflict"


async def test_a_parked_key_resent_under_a_used_id_is_a_conflict(harness: Harness) -> None:
    """The let-through exemption is the parked command's own: its key re-sent under an
    id another request already used does not run under that id."""
    t, _ = await _park_p2(harness)
    pay = {"payment_method_token": "pm_card_visa", "currency": "USD"}
    other = await harness.send(
        "payment.create", t, {**pay, "payment_id": "p7", "amount": 1000}, command_id="2",
        idempotency_key="k2",
    )  # fmt: skip
    assert kind(other) == "payment.succeeded"
    resent = await harness.send(
        "payment.create", t, {**pay, "payment_id": "p2", "amount": 5000}, command_id="2",
        idempotency_key="kB",
    )  # fmt: skip
    assert data(resent)["reason"] == "idempotency_conflict"


async def test_an_erased_customers_command_id_is_not_free_for_another_request(
    harness: Harness,
) -> None:
    t = harness.add_tenant()
    await harness.send("customer.create", t, {"customer_id": "c1"})
    await harness.send("customer.create", t, {"customer_id": "c2"})
    first = await harness.send(
        "customer.update", t, {"customer_id": "c1", "name": "A"}, command_id="u",
        idempotency_key="k1",
    )  # fmt: skip
    assert kind(first) == "customer.updated"
    await harness.send("customer.erase", t, {"customer_id": "c1"})
    other = await harness.send(
        "customer.update", t, {"customer_id": "c2", "name": "B"}, command_id="u",
        idempotency_key="k2",
    )  # fmt: skip
    assert data(other)["reason"] == "idempotency_conflict"


async def test_an_id_record_past_its_window_is_taken_over_by_the_next_request(
    harness: Harness,
) -> None:
    """Expired but not purged yet: the next request under the id must write its own
    record, or a third request, inside the second's window, ran unchecked."""
    t = harness.add_tenant()
    pay = {"payment_method_token": "pm_card_visa", "currency": "USD", "amount": 1000}

    async def pay_under_u(payment_id: str, key: str) -> Any:
        body = {**pay, "payment_id": payment_id}
        return await harness.send("payment.create", t, body, command_id="u", idempotency_key=key)

    assert kind(await pay_under_u("p1", "k1")) == "payment.succeeded"
    # p1's window is over (its records not purged yet):
    harness.idempotency.pop(f"{t}:k1")
    id_key = f"{t}:\x1fid:u"
    harness.idempotency[id_key] = {**harness.idempotency[id_key], "expires_at": 0.0}
    assert kind(await pay_under_u("p2", "k2")) == "payment.succeeded"
    assert harness.idempotency[id_key]["expires_at"] > 0  # p2's now
    assert data(await pay_under_u("p3", "k3"))["reason"] == "idempotency_conflict"


async def test_a_refund_of_a_fully_refunded_payment_says_nothing_is_left(
    harness: Harness,
) -> None:
    t = harness.add_tenant()
    await harness.send("payment.create", t, {"payment_id": "p1", **USD_1000,
                                             "payment_method_token": "pm_card_visa"})  # fmt: skip
    assert kind(await harness.send("refund.create", t, {"payment_id": "p1"})) == "refund.succeeded"
    out = await harness.send("refund.create", t, {"payment_id": "p1"})
    assert data(out)["reason"] == "invalid_state"
    assert data(out)["message"] == "payment p1 has nothing left to refund"


async def test_a_cancel_the_provider_answers_with_another_status_says_that_status(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outcome is what the provider says the payment is now (as for a capture), not
    `payment.canceled` whatever it answered: here it was captured meanwhile."""
    t = harness.add_tenant()
    body = {"payment_id": "p1", **USD_1000, "payment_method_token": "pm_card_visa"}
    assert kind(await harness.send("payment.create", t, {**body, "capture": "manual"})) == (
        "payment.authorized"
    )
    gateway = _gateway(harness, t)

    async def captured_meanwhile(req: gw.CancelPayment, idempotency_key: str) -> Any:
        capture = gw.CapturePayment(provider_payment_id=req.provider_payment_id)
        return await gateway.capture_payment(capture, idempotency_key=idempotency_key)

    monkeypatch.setattr(gateway, "cancel_payment", captured_meanwhile)
    out = await harness.send("payment.cancel", t, {"payment_id": "p1"})
    assert kind(out) == "payment.succeeded"
    assert harness.tables.payments[f"{t}:p1"]["status"] == "succeeded"


async def test_a_saved_card_pays_for_its_customer_without_naming_them(harness: Harness) -> None:
    """Stripe refuses a saved payment method without its customer (parameter_missing),
    and the simulator as well: paystream names the card's customer itself."""
    t = harness.add_tenant()
    await harness.send("customer.create", t, {"customer_id": "c1"})
    attach = {"customer_id": "c1", "payment_method_id": "pm1", "token": "pm_card_visa"}
    assert kind(await harness.send("payment_method.attach", t, attach)) == (
        "payment_method.attached"
    )
    pay = {"payment_id": "p1", **USD_1000, "payment_method_id": "pm1"}
    out = await harness.send("payment.create", t, pay)
    assert kind(out) == "payment.succeeded", data(out)
    assert data(out)["object"]["customer_id"] == "c1"


async def test_a_declined_payment_keeps_the_providers_payment_id(harness: Harness) -> None:
    """Declined, the provider's payment still exists (Stripe: requires_payment_method):
    the entity names it, as the outcome's error does, so it can be found there."""
    t = harness.add_tenant()
    out = await harness.send(
        "payment.create",
        t,
        {"payment_id": "p1", **USD_1000, "payment_method_token": "pm_card_chargeDeclined"},
    )
    assert kind(out) == "payment.failed"
    pi = data(out)["error"]["provider_payment_id"]
    assert pi and pi.startswith("pi_")
    assert data(out)["object"]["provider_payment_id"] == pi
    assert harness.tables.payments[f"{t}:p1"]["provider_payment_id"] == pi


async def test_a_deleted_customers_saved_card_is_refused_by_paystream(harness: Harness) -> None:
    """A saved card named alone brings its customer along: deleted, it is refused here
    as a deleted customer named outright is (not parked while the provider is down, nor
    answered with the provider's own customer id)."""
    t = harness.add_tenant()
    await harness.send("customer.create", t, {"customer_id": "c1"})
    attach = {"customer_id": "c1", "payment_method_id": "pm1", "token": "pm_card_visa"}
    assert kind(await harness.send("payment_method.attach", t, attach)) == (
        "payment_method.attached"
    )
    assert kind(await harness.send("customer.delete", t, {"customer_id": "c1"})) == (
        "customer.deleted"
    )
    _provider_down(harness, t)
    emits, out = await harness.send_event(
        build_command(
            "payment.create", t, {"payment_id": "p1", **USD_1000, "payment_method_id": "pm1"}
        )
    )
    assert harness.settings.retry_topic not in [e.topic for e in emits]
    assert out is not None and data(out)["reason"] == "not_found"
    assert data(out)["message"] == "no such customer: c1"


async def test_a_partial_captures_summary_shows_the_captured_amount(harness: Harness) -> None:
    """The dashboard's recent outcomes show what a command moved: 6.00 of a 10.00
    authorisation, as a refund's row shows the refund."""
    t = harness.add_tenant()
    await harness.send(
        "payment.create",
        t,
        {
            "payment_id": "p1",
            **USD_1000,
            "payment_method_token": "pm_card_visa",
            "capture": "manual",
        },
    )
    emits, out = await harness.send_event(
        build_command("payment.capture", t, {"payment_id": "p1", "amount": 600})
    )
    assert out is not None and data(out)["object"]["amount_captured"] == 600
    [summary] = [e.summary for e in emits if e.topic == harness.settings.events_topic]
    assert summary is not None and summary["amount"] == 600


async def test_a_capture_over_the_authorised_amount_names_both_in_money(harness: Harness) -> None:
    """As the refund and limit messages do: "10.01 USD", not a bare 1001 (review finding)."""
    t = harness.add_tenant()
    await _paid(harness, t, "authorized", capture="manual")
    out = await harness.send("payment.capture", t, {"payment_id": "authorized", "amount": 1001})
    assert data(out)["reason"] == "validation_error"
    assert "capture amount 10.01 USD exceeds the authorised 10.00 USD" in data(out)["message"]


# ---- rules the simulator enforced too, so that a missing one went unseen (mutation
# testing: each test fails with its rule removed or off by one) -------------------------


async def _refused_without_the_provider(
    harness: Harness, tenant: str, command: str, body: dict[str, Any], reason: str
) -> Any:
    """``command`` answered from paystream's own rules: rejected, never parked, nothing
    asked of the provider."""
    before = await _effects(harness, tenant)
    _provider_down(harness, tenant)
    emits, out = await harness.send_event(build_command(command, tenant, body))
    assert harness.settings.retry_topic not in [e.topic for e in emits], (command, body)
    assert out is not None and (kind(out), data(out)["reason"]) == ("command.rejected", reason)
    assert await _effects(harness, tenant) == before
    return out


async def test_partial_refunds_add_up_toward_what_is_left_to_refund(harness: Harness) -> None:
    t = harness.add_tenant()
    await _paid(harness, t, "p1")
    for _ in range(2):
        refund = await harness.send("refund.create", t, {"payment_id": "p1", "amount": 300})
        assert kind(refund) == "refund.succeeded"
    [related] = [r for r in data(refund)["related"] if r["entity_type"] == "payment"]
    assert related["object"]["amount_refunded"] == 600
    out = await _refused_without_the_provider(
        harness, t, "refund.create", {"payment_id": "p1", "amount": 500}, "invalid_state"
    )
    assert "refundable 4.00 USD" in data(out)["message"]


async def test_capturing_exactly_the_authorised_amount_is_a_full_capture(
    harness: Harness,
) -> None:
    t = harness.add_tenant()
    await _paid(harness, t, "p1", capture="manual")
    out = await harness.send("payment.capture", t, {"payment_id": "p1", "amount": 1000})
    assert kind(out) == "payment.succeeded", data(out)
    assert data(out)["object"]["amount_captured"] == 1000


@pytest.mark.parametrize(
    ("command", "body"),
    [
        ("dispute.accept", {}),
        ("dispute.submit_evidence", {"evidence": {"uncategorized_text": "x"}, "submit": True}),
    ],
)
async def test_a_closed_dispute_is_refused_by_paystream_itself(
    harness: Harness, command: str, body: dict[str, Any]
) -> None:
    t = harness.add_tenant()
    dispute_id = await _lost_dispute(harness, t)
    out = await _refused_without_the_provider(
        harness, t, command, {"dispute_id": dispute_id, **body}, "invalid_state"
    )
    assert "is lost" in data(out)["message"]


async def test_a_decline_the_error_vocabulary_does_not_name_is_still_a_failed_payment(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP 402 is the provider's "the card was declined", whatever code it names: a
    failed payment, not the command's fault (a rejection would be remembered)."""
    from paystream.gateways.errors import ErrorCode, GatewayError

    async def declined(*args: Any, **kwargs: Any) -> Any:
        raise GatewayError(
            ErrorCode.INVALID_REQUEST, "Your card was declined.", provider="simulator",
            http_status=402,
        )  # fmt: skip

    monkeypatch.setattr(SimulatorGateway, "create_payment", declined)
    t = harness.add_tenant()
    out = await harness.send(
        "payment.create", t, {"payment_id": "p1", **USD_1000, "payment_method_token": "pm_x"}
    )
    assert kind(out) == "payment.failed", data(out)


async def test_another_request_under_a_used_key_is_a_conflict_paystream_finds_itself(
    harness: Harness,
) -> None:
    """Not left to the provider's own key check (mutation testing: a request hash that
    ignored the amount was caught only by the simulator's fingerprint)."""
    t = harness.add_tenant()
    body = {**USD_1000, "payment_method_token": "pm_card_visa"}
    await harness.send("payment.create", t, body, idempotency_key="order-9")
    before = await _effects(harness, t)
    _provider_down(harness, t)
    emits, out = await harness.send_event(
        build_command("payment.create", t, {**body, "amount": 1001}, idempotency_key="order-9")
    )
    assert harness.settings.retry_topic not in [e.topic for e in emits]
    assert out is not None and data(out)["reason"] == "idempotency_conflict"
    assert await _effects(harness, t) == before


@pytest.mark.parametrize(("spare", "hashed"), [(0, False), (1, True)])
async def test_a_provider_key_is_hashed_only_past_stripes_255_characters(
    harness: Harness, spare: int, hashed: bool
) -> None:
    t = harness.add_tenant()
    key = "k" * (255 - len(f"ps:{t}:") + spare)
    body = {**USD_1000, "payment_method_token": "pm_card_visa"}
    await harness.send("payment.create", t, body, idempotency_key=key)
    [charge] = await _gateway(harness, t).effects()
    sent = charge.idempotency_key
    assert len(sent) <= 255
    assert (sent.startswith(f"ps:{t}:sha256:"), sent == f"ps:{t}:{key}") == (hashed, not hashed)


@pytest.mark.parametrize(("extra", "too_large"), [(0, False), (1, True)])
async def test_a_command_of_exactly_the_size_limit_runs_and_one_byte_more_does_not(
    harness: Harness, extra: int, too_large: bool
) -> None:
    t = harness.add_tenant()
    cmd = build_command("payment.create", t, {**USD_1000, "payment_method_token": "pm_card_visa"})
    rec = encode_event(cmd, t.encode(), CloudEventsMode.BINARY)
    limit = harness.settings.command_max_bytes
    value = rec.value + b" " * (limit - len(rec.value) + extra)  # JSON allows the spaces
    emits = await harness.raw(Inbound(rec.key, value, dict(rec.headers), 0, "c", 0, 5))
    out = [e for e in emits if e.topic == harness.settings.events_topic]
    assert out, [e.topic for e in emits]
    reason = data(outcome_of(harness.settings, emits)).get("reason")
    assert (reason == "payload_too_large") is too_large, reason


def _digest_of(key: str) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


async def test_a_key_shaped_like_a_long_keys_digest_is_another_request(
    harness: Harness,
) -> None:
    """An over-long key reaches the provider as "sha256:<digest>". A client key of that
    very shape is a different key of ours: sent as it was, the provider answered the
    second refund with the first one's effect, and paystream recorded 600 refunded
    against the provider's 300 (review finding)."""
    t = harness.add_tenant()
    await _paid(harness, t, "p1")
    long_key = "r" * 250
    first, second = [
        await harness.send(
            "refund.create", t, {"payment_id": "p1", "amount": 300}, idempotency_key=key
        )
        for key in (long_key, _digest_of(long_key))
    ]
    assert kind(first) == kind(second) == "refund.succeeded"
    refunds = [data(out)["object"]["provider_refund_id"] for out in (first, second)]
    assert refunds[0] != refunds[1]
    assert await _effects(harness, t) == [("charge", 1000), ("refund", 300), ("refund", 300)]
    assert harness.tables.payments[f"{t}:p1"]["amount_refunded"] == 600


async def test_a_create_under_a_digest_shaped_key_charges_on_its_own(harness: Harness) -> None:
    t = harness.add_tenant()
    body = {**USD_1000, "payment_method_token": "pm_card_visa"}
    long_key = "k" * 250
    outs = [
        await harness.send("payment.create", t, body, idempotency_key=key)
        for key in (long_key, _digest_of(long_key))
    ]
    assert [kind(o) for o in outs] == ["payment.succeeded", "payment.succeeded"]
    provider_ids = {data(o)["object"]["provider_payment_id"] for o in outs}
    assert len(provider_ids) == 2
    assert await _effects(harness, t) == [("charge", 1000), ("charge", 1000)]


async def test_a_digest_shaped_key_let_through_by_an_older_version_keeps_its_provider_key(
    harness: Harness,
) -> None:
    """An older version sent a digest-shaped key to the provider as it is: a command it
    let through (no ``digest_keys_apart`` in its record) is re-driven under that key, so
    the provider replays the charge instead of making a second one."""
    t = new_tenant_id()
    key = _digest_of("anything")
    legacy = f"ps:{t}:{key}"
    harness.add_tenant(t, gateway_options={"lose_response_first": {legacy: 3}})
    pay = {**USD_1000, "payment_method_token": "pm_card_visa"}
    command = build_command("payment.create", t, pay, command_id="cmd-old", idempotency_key=key)
    request_hash = _request_hash(
        "payment.create", CreatePayment.model_validate(pay).model_dump(mode="json")
    )
    harness.idempotency[f"{t}:{key}"] = {
        "entity_keys": True,
        "command_id": "cmd-old",
        "command_type": "payment.create",
        "request_hash": request_hash,
        "state": "in_flight",
        "expires_at": 4_000_000_000.0,
    }
    parked, _ = await harness.send_event(command)  # the provider applies; answers lost
    assert [e.topic for e in parked] == [harness.settings.retry_topic]
    assert "digest_keys_apart" not in harness.idempotency[f"{t}:{key}"]
    _, replayed = await harness.send_event(command)  # `paystream dlq replay`
    assert replayed is not None and kind(replayed) == "payment.succeeded"
    charges = [e for e in await _gateway(harness, t).effects() if e.kind == "charge"]
    assert [e.idempotency_key for e in charges] == [legacy]


async def test_a_new_digest_shaped_key_is_recorded_as_hashed(harness: Harness) -> None:
    t = harness.add_tenant()
    key = _digest_of("anything")
    out = await harness.send(
        "payment.create", t, {**USD_1000, "payment_method_token": "pm_card_visa"},
        idempotency_key=key,
    )  # fmt: skip
    assert kind(out) == "payment.succeeded"
    assert harness.idempotency[f"{t}:{key}"]["digest_keys_apart"] is True
    charges = [e for e in await _gateway(harness, t).effects() if e.kind == "charge"]
    assert [e.idempotency_key for e in charges] == [f"ps:{t}:{_digest_of(key)}"]
