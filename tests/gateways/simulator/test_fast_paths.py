"""The simulator's fast paths against their full paths: the request fingerprint written
without ``model_dump`` (``model_fingerprint``) is the fingerprint of the dumped request,
for every request model it writes directly; an effect made whole (``Effect.of``) is the
dataclass made as usual; a payment charged to a card that simply succeeds (``_charge``)
is the full path's payment, write for write."""

from __future__ import annotations

import dataclasses
import random
import types
import typing
from enum import StrEnum
from typing import Any, cast

import orjson
import pytest
from pydantic import BaseModel

from paystream.gateways import base as gw
from paystream.gateways.simulator import operations as ops
from paystream.gateways.simulator.cards import Behaviour, card_for_token
from paystream.gateways.simulator.gateway import _answer
from paystream.gateways.simulator.store import (
    PLAIN_REQUESTS,
    Effect,
    SimulatorStore,
    Tx,
    model_fingerprint,
    request_fingerprint,
)
from paystream.ids import ID_LENGTH, letters
from paystream.money import Money

# ---- the request fingerprint --------------------------------------------------------

_PLAIN_LEAVES: set[Any] = {str, int, bool, type(None), dict[str, str]}


def _plain(annotation: Any) -> bool:
    """A field type orjson writes as ``model_dump(mode="json")`` does."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return all(_plain(arg) for arg in typing.get_args(annotation))
    if annotation in _PLAIN_LEAVES or annotation in PLAIN_REQUESTS:
        return True
    if typing.get_origin(annotation) is typing.Literal:  # (its values: written as they are)
        return all(type(arg) in (str, int) for arg in typing.get_args(annotation))
    if typing.get_origin(annotation) is tuple:  # tuple[X, ...]: written as the dump's list
        item, ellipsis = typing.get_args(annotation)
        return ellipsis is Ellipsis and _plain(item)
    return isinstance(annotation, type) and issubclass(annotation, StrEnum)


@pytest.mark.parametrize("model", sorted(PLAIN_REQUESTS, key=lambda m: m.__name__))
def test_plain_requests_have_only_plain_fields(model: type[BaseModel]) -> None:
    for name, field in model.model_fields.items():
        assert _plain(field.annotation), f"{model.__name__}.{name}: {field.annotation}"
        assert field.serialization_alias is None and field.alias is None
    assert not model.model_computed_fields
    assert model.model_config.get("extra") in (None, "forbid", "ignore")


def test_every_request_type_is_plain() -> None:
    requests = {m for m in vars(gw).values() if isinstance(m, type) and issubclass(m, gw._Req)}
    assert requests - {gw._Req} <= PLAIN_REQUESTS


_REQUESTS: list[tuple[str, BaseModel]] = [
    ("create_customer", gw.CreateCustomer()),
    ("create_customer", gw.CreateCustomer(email="a@b.c", name="Zoë", metadata={"b": "1", "a": ""})),
    ("update_customer", gw.UpdateCustomer(provider_customer_id="cus_x", metadata=None)),
    ("update_customer", gw.UpdateCustomer(provider_customer_id="cus_x", metadata={"k": "v"})),
    ("delete_customer", gw.DeleteCustomer(provider_customer_id="cus_x")),
    ("attach_payment_method", gw.AttachPaymentMethod(provider_customer_id="c", token="pm_x")),
    ("detach_payment_method", gw.DetachPaymentMethod(provider_payment_method_id="pm_x")),
    ("create_payout", gw.CreatePayout(amount=Money(amount=5, currency="usd"))),
    (
        "create_payout",
        gw.CreatePayout(
            amount=Money(amount=5, currency="EUR"),
            method="instant",
            statement_descriptor="X",
            metadata={"b": "1", "a": ""},
        ),
    ),
    ("cancel_payout", gw.CancelPayout(provider_payout_id="po_x")),
    ("retrieve_payout", gw.RetrievePayout(provider_payout_id="po_x")),
    ("retrieve_balance", gw.RetrieveBalance()),
    (
        "create_invoice",
        gw.CreateInvoice(
            provider_customer_id="cus_x",
            currency="EUR",
            lines=(gw.InvoiceLine(description="Zoë's hours", unit_amount=1500, quantity=2),),
            tax_rates=(
                gw.TaxRateRef(provider_tax_rate_id="txr_x", percentage="20", inclusive=False),
            ),
            collection_method="send_invoice",
            days_until_due=30,
            metadata={"b": "1", "a": ""},
        ),
    ),
    ("update_invoice", gw.UpdateInvoice(provider_invoice_id="in_x", currency="EUR")),
    (
        "update_invoice",
        gw.UpdateInvoice(
            provider_invoice_id="in_x",
            currency="EUR",
            tax_rates=(
                gw.TaxRateRef(provider_tax_rate_id="txr_x", percentage="20", inclusive=False),
            ),
            lines=(gw.InvoiceLine(description="Zoë's hours", unit_amount=1500, quantity=2),),
            description="March",
            days_until_due=7,
            metadata={"b": "1", "a": ""},
        ),
    ),
    ("finalize_invoice", gw.FinalizeInvoice(provider_invoice_id="in_x")),
    ("pay_invoice", gw.PayInvoice(provider_invoice_id="in_x", provider_payment_method_id="pm_x")),
    ("pay_invoice", gw.PayInvoice(provider_invoice_id="in_x")),
    ("void_invoice", gw.VoidInvoice(provider_invoice_id="in_x")),
    ("retrieve_invoice", gw.RetrieveInvoice(provider_invoice_id="in_x")),
    (
        "create_payment",
        gw.CreatePayment(
            amount=Money(amount=1234, currency="usd"),
            provider_payment_method_id="pm_card_visa",
            capture_method=gw.CaptureMethod.MANUAL,
            description='order \u2603 "5"',
            metadata={"z": "1", "order_id": "ord-5", "channel": "web"},
            return_url="https://example.invalid/r?a=1&b=2",
        ),
    ),
    (
        "create_payment",
        gw.CreatePayment(amount=Money(amount=0, currency="JPY"), provider_payment_method_id="x"),
    ),
    ("capture_payment", gw.CapturePayment(provider_payment_id="pi_x")),
    ("capture_payment", gw.CapturePayment(provider_payment_id="pi_x", amount=10)),
    ("cancel_payment", gw.CancelPayment(provider_payment_id="pi_x", reason="duplicate")),
    ("create_refund", gw.CreateRefund(provider_payment_id="pi_x", amount=5, metadata={"a": "b"})),
    (
        "submit_dispute_evidence",
        gw.SubmitDisputeEvidence(
            provider_dispute_id="dp", evidence={"b": "2", "a": "1"}, submit=False
        ),
    ),
    ("accept_dispute", gw.AcceptDispute(provider_dispute_id="dp_x")),
    (
        "create_tax_rate",
        gw.CreateTaxRate(display_name="VAT", percentage="20", inclusive=False, country="GB"),
    ),
    (
        "create_tax_rate",
        gw.CreateTaxRate(
            display_name="NY",
            percentage="8.875",
            inclusive=True,
            country="US",
            state="NY",
            tax_type="sales_tax",
            metadata={"b": "1", "a": ""},
        ),
    ),
    ("archive_tax_rate", gw.ArchiveTaxRate(provider_tax_rate_id="txr_x")),
    (
        "create_subscription",
        gw.CreateSubscription(
            provider_customer_id="cus_x",
            provider_payment_method_id="pm_x",
            amount=Money(amount=1999, currency="gbp"),
            interval="month",
            tax_rates=(
                gw.TaxRateRef(provider_tax_rate_id="txr_b", percentage="20", inclusive=False),
                gw.TaxRateRef(provider_tax_rate_id="txr_a", percentage="5.5", inclusive=True),
            ),
        ),
    ),
]


@pytest.mark.parametrize(("operation", "req"), _REQUESTS)
def test_model_fingerprint_is_the_dumped_requests_fingerprint(
    operation: str, req: BaseModel
) -> None:
    omits = getattr(req, "FINGERPRINT_OMITS_NONE", ())
    dumped = {
        k: v for k, v in req.model_dump(mode="json").items() if k not in omits or v is not None
    }
    assert model_fingerprint(operation, req) == request_fingerprint(operation, dumped)


def test_a_model_not_known_plain_is_dumped_first() -> None:
    import datetime

    class Other(BaseModel):
        at: datetime.datetime
        money: Money

    req = Other(at=datetime.datetime(2026, 1, 2, 3, 4, 5, 6), money=Money(amount=1, currency="EUR"))
    assert model_fingerprint("x", req) == request_fingerprint("x", req.model_dump(mode="json"))


# ---- effects made whole -------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        ("charge", "ps:t:k", "pi_1", 1234, "USD"),
        ("customer.created", "k", "cus_1"),
        ("refund", "", "re_\u2603", 0, None),
        ("void", "k\x00\n", "pi_x", -1, "usd"),
        ("x", "k", "o", None, "EUR"),
    ],
)
def test_effect_of_is_the_dataclass_made_as_usual(fields: tuple[Any, ...]) -> None:
    fast, usual = Effect.of(*fields), Effect(*fields)
    assert type(fast) is Effect
    assert fast == usual and hash(fast) == hash(usual) and repr(fast) == repr(usual)
    assert vars(fast) == vars(usual) and list(vars(fast)) == list(vars(usual))
    assert fast.as_dict() == usual.as_dict()
    assert orjson.dumps(fast) == orjson.dumps(usual)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.kind = "other"  # type: ignore[misc]


# ---- a payment charged to a card that simply succeeds -------------------------------


def _tx() -> Tx:
    return Tx(cast(SimulatorStore, None))  # (no reads: the store is never asked)


def _ran(coro: Any) -> Any:
    """A coroutine that never suspends, run to its end."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("the coroutine suspended")


def _state(tx: Tx, response: dict[str, Any]) -> tuple[bytes, bytes, bytes]:
    """What the store commits of a call, as the bytes it writes (key order included)."""
    return (
        orjson.dumps(tx.writes),
        orjson.dumps(tx.effects),
        orjson.dumps(response),
    )


_CHARGES: list[gw.CreatePayment] = [
    gw.CreatePayment(amount=Money(amount=1234, currency="USD"), provider_payment_method_id=token)
    for token in ("pm_card_visa", "tok_visa", "pm_card_mastercard", "pm_card_amex")
] + [
    gw.CreatePayment(
        amount=Money(amount=99_999_999, currency="eur"),
        provider_payment_method_id="pm_card_visa",
        capture_method=gw.CaptureMethod.MANUAL,
        description='order \u2603 "5"',
        statement_descriptor="PAYSTREAM*5",
        metadata={"z": "1", "order_id": "ord-5"},
        return_url="https://example.invalid/r?a=1&b=2",
    ),
    gw.CreatePayment(
        amount=Money(amount=50, currency="JPY"),
        provider_payment_method_id="pm_card_mastercard",
        capture_method=gw.CaptureMethod.AUTOMATIC,
    ),
    gw.CreatePayment(
        amount=Money(amount=1000, currency="KWD"), provider_payment_method_id="tok_amex"
    ),
    gw.CreatePayment(
        amount=Money(amount=30, currency="GBP"),
        provider_payment_method_id="pm_card_visa",
        capture_method=gw.CaptureMethod.MANUAL,
        metadata={"\x00": "\n", "k": "\ud7ff"},
    ),
]


@pytest.mark.parametrize("req", _CHARGES)
def test_a_charge_is_the_full_paths_payment(
    req: gw.CreatePayment, monkeypatch: pytest.MonkeyPatch
) -> None:
    card = card_for_token(req.provider_payment_method_id)
    assert card is not None and card.behaviour is Behaviour.SUCCEED
    for customer in (None, "cus_x"):
        req = req.model_copy(update={"provider_customer_id": customer})
        monkeypatch.setattr(ops, "_IDS", random.Random(7))
        fast_tx = _tx()
        manual = req.capture_method is gw.CaptureMethod.MANUAL
        fast = ops._charge(fast_tx, req, "ps:t:key", req.provider_payment_method_id, manual)
        monkeypatch.setattr(ops, "_IDS", random.Random(7))
        full_tx = _tx()
        token = req.provider_payment_method_id
        full = _ran(ops._create_payment_full(full_tx, req, "ps:t:key", card, token))
        assert fast == full
        assert _state(fast_tx, fast) == _state(full_tx, full)
        assert fast_tx.reads == full_tx.reads == {}
        # The gateway's answer from either is the same result.
        assert _answer(fast, gw.PaymentResult) == _answer(full, gw.PaymentResult)


@pytest.mark.parametrize(
    "token",
    ["pm_card_visa", "pm_card_chargeDeclined", "pm_card_authenticationRequired",
     "pm_card_createDispute", "pm_card_chargeDeclinedInsufficientFunds"],
)  # fmt: skip
@pytest.mark.parametrize("manual", [False, True])
def test_create_payment_answers_as_the_full_path_for_every_card(
    token: str, manual: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    method = gw.CaptureMethod.MANUAL if manual else gw.CaptureMethod.AUTOMATIC
    req = gw.CreatePayment(
        amount=Money(amount=777, currency="USD"),
        provider_payment_method_id=token,
        capture_method=method,
        return_url="https://example.invalid/back",
    )
    card = card_for_token(token)
    assert card is not None
    monkeypatch.setattr(ops, "_IDS", random.Random(11))
    fast_tx = _tx()
    fast = _ran(ops.create_payment(fast_tx, req, "k"))
    monkeypatch.setattr(ops, "_IDS", random.Random(11))
    full_tx = _tx()
    full = _ran(ops._create_payment_full(full_tx, req, "k", card, token))
    assert _state(fast_tx, fast) == _state(full_tx, full)


def test_a_capture_method_not_a_member_takes_the_full_path() -> None:
    # Built without validation, a plain string: the full path's `.value` refuses it, as
    # before (no payment is made from it either way).
    req = gw.CreatePayment.model_construct(
        amount=Money(amount=777, currency="USD"),
        provider_payment_method_id="pm_card_visa",
        provider_customer_id=None,
        capture_method="manual",
    )
    with pytest.raises(AttributeError):
        _ran(ops.create_payment(_tx(), req, "k"))


# ---- the commit's arguments ---------------------------------------------------------


def _store() -> SimulatorStore:
    class _Redis:
        def register_script(self, script: str) -> str:
            return script

    return SimulatorStore(_Redis(), "t1", record_ttl_seconds=60, state_ttl_seconds=120)


def test_the_commit_call_lays_out_reads_writes_and_effects() -> None:
    store = _store()
    tx = Tx(store)
    assert store._commit_call("idem", None, tx) == (
        ["idem", "sim:{t1}:effects"],
        [b"", 60, 120, store._effects_cap, 0, 0, 0],
    )
    tx.reads = {"sim:{t1}:obj:a": '{"id":"a"}', "sim:{t1}:obj:b": None}
    tx.writes = {"a": {"id": "a", "n": 1}}
    tx.effects = [Effect.of("refund", "k", "a", 5, "USD")]
    keys, args = store._commit_call("idem", {"state": "done"}, tx)
    assert keys == [
        "idem",
        "sim:{t1}:effects",
        "sim:{t1}:obj:a",
        "sim:{t1}:obj:b",
        "sim:{t1}:obj:a",
    ]
    assert args == [
        b'{"state":"done"}', 60, 120, store._effects_cap,
        2, '{"id":"a"}', "\x00absent",
        1, b'{"id":"a","n":1}',
        0,
        b'{"kind":"refund","idempotency_key":"k","object_id":"a","amount":5,"currency":"USD"}',
    ]  # fmt: skip
    # Balance changes: the balance hash and the clock among the keys, the settlement
    # delay and each change (kind, currency, amount, at) before the effects.
    tx.balance = [("p", "USD", 5, None), ("a", "USD", -2, None), ("g", "USD", 3, 99)]
    keys, args = store._commit_call("idem", {"state": "done"}, tx)
    assert keys[-2:] == ["sim:{t1}:balance", "sim:{t1}:obj:clock"]
    assert args[9:-1] == [
        3, 2 * 24 * 3600, "p", "USD", 5, b"", "a", "USD", -2, b"", "g", "USD", 3, 99,
    ]  # fmt: skip


async def test_a_read_object_is_a_fresh_dict_each_time() -> None:
    store = _store()
    tx = Tx(store)
    tx.reads[store.object_key("a")] = '{"id":"a","n":{"m":1}}'
    first, second = await tx.get("a"), await tx.get("a")
    assert first == second == {"id": "a", "n": {"m": 1}}
    assert first is not second and first["n"] is not second["n"]
    assert type(first) is dict


# ---- the three-decimal rule on captures and refunds ---------------------------------


def _outcome(rule: Any, amount: Any, currency: Any) -> tuple[str, str]:
    try:
        rule(amount, currency)
    except Exception as exc:  # the full path's refusals: GatewayError, ValidationError
        return type(exc).__name__, str(exc)
    return "ok", ""


@pytest.mark.parametrize(
    "amount", [0, 1, 5, 10, 1234, 99_999_999, 99_999_999_999, 100_000_000_000, -1, -10,
               True, False, 10.0, 2**70, "10"],
)  # fmt: skip
@pytest.mark.parametrize(
    "currency", ["USD", "JPY", "KWD", "BHD", "usd", "kwd", " USD", "USD ", "XXX", "",
                 "u\u017fd", None, 3],
)  # fmt: skip
def test_the_three_decimal_rule_answers_as_its_full_path(amount: Any, currency: Any) -> None:
    assert _outcome(ops._three_decimal_rule, amount, currency) == _outcome(
        ops._three_decimal_rule_full, amount, currency
    )


# ---- simulated provider ids ---------------------------------------------------------


def test_a_new_id_is_letters_of_the_drawn_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    every_byte = bytes(range(256))
    for start in range(0, 256, ID_LENGTH):
        chunk = (every_byte[start:] + every_byte)[:ID_LENGTH]
        assert chunk.translate(ops._LETTER_OF).decode("ascii") == letters(chunk)
    drawn = random.Random(5)
    monkeypatch.setattr(ops, "_IDS", random.Random(5))
    for prefix in ("pi", "ch", "re", "dp", "x"):
        made = ops._new_id(prefix)
        assert made == f"{prefix}_{letters(drawn.randbytes(ID_LENGTH))}"


# Fields the gateway requests gained with destination charges: a request without them
# is the request a worker of the release before sent under the same key.
_ADDED = {
    "create_payment": ("destination_account", "application_fee_amount"),
    "capture_payment": ("application_fee_amount",),
    "create_refund": ("reverse_transfer", "refund_application_fee"),
}


@pytest.mark.parametrize(("operation", "req"), [r for r in _REQUESTS if r[0] in _ADDED])
def test_a_request_without_the_added_fields_fingerprints_as_before_them(
    operation: str, req: BaseModel
) -> None:
    """A key used by the release before (a command parked or in flight across the
    upgrade, re-sent): the simulator compares fingerprints as Stripe compares parameters,
    and one changed by fields the request does not use would answer its own retry
    idempotency_error, the payment charged and paystream told otherwise."""
    before = {k: v for k, v in req.model_dump(mode="json").items() if k not in _ADDED[operation]}
    assert model_fingerprint(operation, req) == request_fingerprint(operation, before)


def test_a_destination_charge_fingerprints_its_fields() -> None:
    plain = gw.CreatePayment(amount=Money(amount=5, currency="usd"), provider_payment_method_id="x")
    dest = plain.model_copy(update={"destination_account": "acct_1", "application_fee_amount": 0})
    assert model_fingerprint("create_payment", dest) != model_fingerprint("create_payment", plain)
    assert model_fingerprint("create_payment", dest) == request_fingerprint(
        "create_payment", dest.model_dump(mode="json")
    )


def test_fingerprints_are_the_release_befores() -> None:
    """Pinned: what the release before destination charges (9dd8a628) computed."""
    pay = gw.CreatePayment(
        amount=Money(amount=1234, currency="usd"),
        provider_payment_method_id="pm_card_visa",
        metadata={"a": "b"},
    )
    assert [
        model_fingerprint("create_payment", pay),
        model_fingerprint(
            "capture_payment", gw.CapturePayment(provider_payment_id="pi_x", amount=10)
        ),
        model_fingerprint("create_refund", gw.CreateRefund(provider_payment_id="pi_x", amount=5)),
    ] == [
        "210ed285e91e4680ce96f10a68f804fb85d74d9178eb69d6d42bb53a13540f75",
        "33c8a5d62b89aded629b7de99b0460ff07416890942dff1fa3aa4d7e88743347",
        "0e48f33e69b90d8a692a5d646f482b2e2fbebc15358d669b5a768da5d2e0a266",
    ]
