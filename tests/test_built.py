"""Models built without validation (paystream.built) are the validated ones, and an
entity's stored fields taken as they stand are its JSON dump."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from paystream.agents.pipeline import _stored_fields
from paystream.built import built, frozen_record
from paystream.gateways import base as gw
from paystream.money import Money
from paystream.tables.records import (
    CustomerRecord,
    DisputeRecord,
    EntityRecord,
    PaymentRecord,
    RefundRecord,
    StoredOutcome,
)

_PAYMENT: dict[str, Any] = {
    "entity_type": "payment",
    "tenant_id": "t1",
    "id": "pay_x",
    "version": 0,
    "provider": "simulator",
    "created_by": "c1",
    "applied": {},
    "status": "succeeded",
    "amount": 1234,
    "currency": "USD",
    "capture_method": "automatic",
    "amount_captured": 1234,
    "amount_refunded": 0,
    "customer_id": None,
    "payment_method_id": "pm1",
    "provider_payment_id": "pi_x",
    "provider_charge_id": None,
    "failure_code": None,
    "failure_message": None,
    "next_action": {"type": "redirect_to_url", "redirect_to_url": {"url": "u"}},
    "dispute_id": None,
    "customer_action_delivered": True,
    "amount_tax": None,
    "tax_calculation_id": None,
    "connected_account_id": None,
    "application_fee_amount": None,
    "amount_transferred": None,
}


def _same(made: BaseModel, validated: BaseModel) -> None:
    assert made == validated
    assert type(made) is type(validated)
    assert made.model_fields_set == validated.model_fields_set
    assert made.model_dump(mode="json") == validated.model_dump(mode="json")
    assert list(made.model_dump()) == list(validated.model_dump())
    assert made.model_dump_json() == validated.model_dump_json()


@pytest.mark.parametrize(
    ("model", "fields"),
    [
        (PaymentRecord, _PAYMENT),
        (Money, {"amount": 5, "currency": "JPY"}),
        (StoredOutcome, {"type": "payment.succeeded", "data": {"a": [1, {"b": None}]}}),
        (
            gw.CreatePayment,
            {
                "amount": Money(amount=7, currency="EUR"),
                "provider_customer_id": None,
                "provider_payment_method_id": "pm_card_visa",
                "capture_method": gw.CaptureMethod.MANUAL,
                "description": "d",
                "statement_descriptor": None,
                "return_url": None,
                "metadata": {"k": "v"},
                "destination_account": "acct_1",
                "application_fee_amount": 2,
            },
        ),
    ],
)
def test_a_built_model_is_the_validated_one(model: type[BaseModel], fields: dict[str, Any]) -> None:
    _same(built(model, dict(fields)), model.model_validate(fields))


def test_fields_missing_or_out_of_order_are_refused() -> None:
    fields = dict(_PAYMENT)
    del fields["dispute_id"]
    with pytest.raises(TypeError):
        built(PaymentRecord, fields)
    with pytest.raises(TypeError):
        built(Money, {"currency": "USD", "amount": 1})
    with pytest.raises(TypeError):
        built(Money, {"amount": 1, "currency": "USD", "other": 2})


def test_a_frozen_built_model_stays_frozen() -> None:
    money = built(Money, {"amount": 1, "currency": "USD"})
    with pytest.raises(ValidationError):
        money.amount = 2  # type: ignore[misc]
    assert hash(money) == hash(Money(amount=1, currency="USD"))


def _dumped(record: EntityRecord) -> dict[str, Any]:
    """The JSON dump a record is stored as: without ``applied``, and without the fields
    added since that are None (an earlier version refuses a field it does not know)."""
    dumped = record.model_dump(mode="json", exclude={"applied"})
    from paystream.agents.pipeline import _WRITTEN_WHEN_SET

    for name in _WRITTEN_WHEN_SET:
        if dumped.get(name, True) is None:
            del dumped[name]
    return dumped


def _records() -> list[EntityRecord]:
    base = {"tenant_id": "t1", "id": "e1", "provider": "simulator", "created_by": "c1"}
    applied = {"c1": {"type": "x", "data": {}}}
    return [
        PaymentRecord.model_validate({**_PAYMENT, "next_action": None, "applied": applied}),
        PaymentRecord.model_validate(_PAYMENT),  # a dict field: dumped
        PaymentRecord.model_validate({**_PAYMENT, "next_action": None, "provider_charge_id": "ch"}),
        PaymentRecord.model_validate(
            {**_PAYMENT, "next_action": None, "amount_tax": 200, "tax_calculation_id": "taxcalc_1"}
        ),
        CustomerRecord(**base, provider_customer_id="cus", email="a@b.c", metadata={"k": "v"}),
        CustomerRecord(**base, provider_customer_id="cus"),
        RefundRecord(
            **base,
            payment_id="p",
            status="succeeded",
            amount=5,
            currency="USD",
            provider_refund_id="re",
        ),
        RefundRecord(
            **base,
            payment_id="p",
            status="succeeded",
            amount=5,
            currency="USD",
            provider_refund_id="re",
            reason="duplicate",
        ),
        DisputeRecord(
            **base,
            payment_id="p",
            status="needs_response",
            amount=5,
            currency="USD",
            provider_dispute_id="dp",
            evidence_submitted=True,
        ),
        DisputeRecord(
            **base,
            payment_id="p",
            status="needs_response",
            amount=5,
            currency="USD",
            provider_dispute_id="dp",
            reason="fraudulent",
            evidence_due_by="2026-12-12T10:00:00Z",
        ),
    ]


@pytest.mark.parametrize("record", _records(), ids=lambda r: type(r).__name__)
def test_stored_fields_are_the_json_dump(record: EntityRecord) -> None:
    record.version += 1
    if isinstance(record, PaymentRecord):
        record.status = "failed"  # (changed as a handler changes it)
    dumped = _dumped(record)
    fields = _stored_fields(record)
    assert fields == dumped
    assert list(fields) == list(dumped)
    assert all(type(fields[k]) is type(dumped[k]) for k in fields)


def test_a_field_holding_an_enum_member_is_dumped() -> None:
    record = PaymentRecord.model_validate({**_PAYMENT, "next_action": None})
    record.status = gw.PaymentStatus.SUCCEEDED  # (a str subclass: not taken as it stands)
    fields = _stored_fields(record)
    assert type(fields["status"]) is str and fields["status"] == "succeeded"


def test_a_bool_in_an_int_field_is_dumped() -> None:
    record = PaymentRecord.model_validate({**_PAYMENT, "next_action": None})
    record.amount_captured = True  # (the dump writes 1)
    fields = _stored_fields(record)
    assert fields["amount_captured"] == 1 and type(fields["amount_captured"]) is int
    record.amount_captured = 5
    assert _stored_fields(record) == _dumped(record)


def test_payments_refunds_and_disputes_take_the_fast_path() -> None:
    from paystream.agents import pipeline

    for record in _records():
        _stored_fields(record)
    assert {PaymentRecord, RefundRecord, DisputeRecord} <= set(pipeline._PLAIN_KINDS)
    assert CustomerRecord not in pipeline._PLAIN_KINDS  # (its metadata: dumped)


def _frozen_record_classes() -> list[type]:
    from paystream.agents.pipeline import Emit, Inbound
    from paystream.gateways.simulator.store import Effect
    from paystream.streams.codec import KafkaRecord
    from paystream.streams.outcomes import CommandRef

    return [Inbound, Emit, KafkaRecord, CommandRef, Effect]


@pytest.mark.parametrize("cls", _frozen_record_classes(), ids=lambda c: c.__name__)
def test_frozen_record_classes_are_their_dict(cls: type) -> None:
    """What ``frozen_record`` relies on, for every class paystream makes with it."""
    import dataclasses

    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
    assert not hasattr(cls, "__post_init__") and "__slots__" not in cls.__dict__
    fields = dataclasses.fields(cls)
    assert all(f.default_factory is dataclasses.MISSING for f in fields)  # type: ignore[misc]
    values = {f.name: f"v{i}" for i, f in enumerate(fields)}
    made, full = frozen_record(cls, dict(values)), cls(**values)
    assert made == full and hash(made) == hash(full) and repr(made) == repr(full)
    assert dataclasses.asdict(made) == dataclasses.asdict(full)
    assert vars(made) == vars(full) and list(vars(made)) == list(vars(full))
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.x = 1  # type: ignore[attr-defined]
