"""Payouts and tax in the analytics windows: per tenant and currency, payouts created,
paid, failed (and by failure code; of those, returned after paid) and canceled, counts and
amounts, each payout's status once; tax collected, of payments that succeeded (their
``amount_tax``, its share of a partial capture) and of subscription invoices paid (their
``tax``), once as those are counted.

None of it was counted: a tenant's payouts and the tax in its revenue were missing from
its windows and the dashboard (h74e)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from paystream.insights.events import window_event
from paystream.insights.observe import Observed
from paystream.insights.state import InsightsConfig, TenantInsights
from paystream.settings import CloudEventsMode
from paystream.streams.codec import decode_record
from tests.insights.standin_broker import standin_broker
from tests.insights.test_disputes_counted import PAYMENT, _observe, _outcome
from tests.insights.test_runner import T0, Harness
from tests.insights.test_subscriptions_counted import _created, _inv, _refreshed
from tests.test_docs import asyncapi, validator  # noqa: F401  (a fixture)

CFG = InsightsConfig(window_ms=60_000, horizon_ms=600_000, grace_ms=5_000)


def _po(status: str, version: int = 1, created_by: str = "c1", **fields: Any) -> dict[str, Any]:
    obj = {
        "tenant_id": "acme", "id": "po1", "version": version, "provider": "simulator",
        "created_by": created_by, "status": status, "amount": 3000, "currency": "EUR",
        "method": "standard", "provider_payout_id": "po_sim_1",
        "arrival_date": "2026-12-09T00:00:00Z", "failure_code": None,
        "failure_message": None, "description": None, "statement_descriptor": None,
        "metadata": {},
    }  # fmt: skip
    return {**obj, **fields}


def _payout(
    kind: str, command: str, obj: dict[str, Any], previous: str | None = None, **extra: Any
) -> dict[str, Any]:
    command_type = "payout.create" if previous is None else "payout.refresh"
    data = {"entity_type": "payout", "entity_id": obj["id"], "version": obj["version"],
            "object": obj, **extra}  # fmt: skip
    if previous is not None:
        data["previous_status"] = previous
    return _outcome(kind, command, command_type, data)


def _failure(code: str) -> dict[str, Any]:
    return {"code": "processing_error", "message": "the bank returned it", "decline_code": code}


# ---- observe: payouts ----------------------------------------------------------------


def test_a_payout_created_in_flight_counts_created() -> None:
    for status in ("pending", "in_transit"):
        seen = _observe(_payout("payout.created", "c1", _po(status)))
        assert (seen.payout_moves, seen.payout_amount, seen.currency) == (
            ("created",), 3000, "EUR",
        )  # fmt: skip
        # Not revenue, not an attempt: no money of the payments', nothing for the rules.
        assert (seen.captured, seen.attempt, seen.card_declined) == (0, False, False)


def test_a_payout_s_life_counts_each_status_once() -> None:
    """Created, read pending (updated: nothing), in transit (nothing), paid (once: read
    paid again, nothing), then returned by the bank: failed then, once, and returned."""
    life = [
        _payout("payout.created", "c1", _po("pending")),
        _payout("payout.updated", "r1", _po("pending"), "pending"),
        _payout("payout.updated", "r2", _po("in_transit", 2), "pending"),
        _payout("payout.paid", "r3", _po("paid", 3), "in_transit"),
        _payout("payout.paid", "r4", _po("paid", 3), "paid"),  # a webhook sent again
        _payout(
            "payout.failed", "r5", _po("failed", 4, failure_code="account_closed"), "paid",
            error=_failure("account_closed"),
        ),
    ]  # fmt: skip
    seen = [_observe(o) for o in life]
    assert [s.payout_moves for s in seen] == [
        ("created",), (), (), ("paid",), (), ("failed", "returned"),
    ]  # fmt: skip
    assert [s.payout_failure for s in seen] == [None] * 5 + ["account_closed"]
    assert seen[3].payout_amount == 3000


@pytest.mark.parametrize(
    ("kind", "status", "previous", "moves"),
    [
        ("payout.canceled", "canceled", "pending", ("canceled",)),
        # a parked cancel re-driven after a refresh read it canceled: counted then
        ("payout.canceled", "canceled", "canceled", ()),
        ("payout.failed", "failed", "in_transit", ("failed",)),
        ("payout.failed", "failed", "pending", ("failed",)),
        ("payout.failed", "failed", "failed", ()),
        ("payout.paid", "paid", "pending", ("paid",)),  # (a read may skip in_transit)
        ("payout.paid", "paid", "paid", ()),
        # malformed: the object's status is not the outcome's, or no status before it
        ("payout.paid", "in_transit", "pending", ()),
        ("payout.paid", "paid", "shipped", ()),
        ("payout.updated", "paid", "pending", ()),
    ],
)
def test_a_status_counts_when_the_payout_moved_there(
    kind: str, status: str, previous: str, moves: tuple[str, ...]
) -> None:
    seen = _observe(_payout(kind, "r1", _po(status, 2), previous))
    assert seen.payout_moves == moves


@pytest.mark.parametrize(
    ("kind", "status", "moves"),
    [
        ("payout.paid", "paid", ("created", "paid")),  # an instant one, paid at once
        ("payout.failed", "failed", ("created", "failed")),
        ("payout.canceled", "canceled", ("created", "canceled")),
        ("payout.created", "paid", ()),  # malformed
        ("payout.updated", "pending", ()),
    ],
)
def test_a_payout_made_where_it_went_counts_created_and_that(
    kind: str, status: str, moves: tuple[str, ...]
) -> None:
    assert _observe(_payout(kind, "c1", _po(status))).payout_moves == moves


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"currency": "XXX"}, id="unknown-currency"),
        pytest.param({"amount": "3000"}, id="amount-a-string"),
        pytest.param({"amount": 0}, id="amount-zero"),
        pytest.param({"amount": -5}, id="amount-negative"),
        pytest.param({"amount": 10**30}, id="amount-too-big"),
        pytest.param({"amount": True}, id="amount-bool"),
    ],
)
def test_a_malformed_payout_counts_nothing(fields: dict[str, Any]) -> None:
    assert _observe(_payout("payout.created", "c1", _po("pending", **fields))).payout_moves == ()
    paid = _payout("payout.paid", "r1", _po("paid", 2, **fields), "in_transit")
    assert _observe(paid).payout_moves == ()


def test_a_payout_outcome_not_of_a_payout_counts_nothing() -> None:
    out = _payout("payout.created", "c1", _po("pending"))
    out["data"]["entity_type"] = "payment"
    assert _observe(out).payout_moves == ()


def test_a_failed_payout_s_code_is_kept_screened_nothing_of_a_card_number() -> None:
    """The failure code, as the object names it (else the error's, else `unknown`); one
    holding a card number or too long is `other`; the message is never kept."""
    pan = "4242424242424242"

    def failed(code: Any, error: Any = None) -> Observed:
        obj = _po("failed", 3, failure_code=code, failure_message=f"card {pan}")
        return _observe(_payout("payout.failed", "r1", obj, "in_transit",
                                **({"error": error} if error else {})))  # fmt: skip

    assert failed("no_account").payout_failure == "no_account"
    assert failed(None, _failure("insufficient_funds")).payout_failure == "insufficient_funds"
    assert failed(None).payout_failure == "unknown"
    screened = failed(f"x{pan}")
    assert screened.payout_failure == "other" and screened.payout_moves == ("failed",)
    assert pan not in repr(screened)
    assert failed("x" * 500).payout_failure == "other"
    assert pan not in repr(failed(None, _failure(pan)))


# ---- observe: tax --------------------------------------------------------------------


def _taxed(
    kind: str = "payment.succeeded", previous: str | None = None, **fields: Any
) -> dict[str, Any]:
    obj = {**PAYMENT, "created_by": "c1", "amount": 12_000, "amount_captured": 12_000,
           "amount_tax": 2000, "tax_calculation_id": "taxcalc_1", **fields}  # fmt: skip
    data: dict[str, Any] = {"entity_type": "payment", "entity_id": "p1", "version": 1,
                            "object": obj}  # fmt: skip
    if previous is not None:
        data["previous_status"] = previous
    return _outcome(kind, "c1", "payment.create", data)


def test_a_taxed_payment_that_succeeded_collected_its_tax() -> None:
    seen = _observe(_taxed())
    assert seen.tax_collected == (("USD", "payments", 2000),)
    assert seen.captured == 12_000  # (the tax is within it)


def test_a_partial_capture_collected_the_tax_its_record_says() -> None:
    """Captured 5,000 of 12,000 with 2,000 tax: the worker records its share, 833.33 →
    833 (handlers._tax_collected, half up: review h74h), and that is what was collected,
    not pro-rated a second time (347)."""
    assert _observe(_taxed(amount_captured=5000, amount_tax=833)).tax_collected == (
        ("USD", "payments", 833),
    )


@pytest.mark.parametrize(
    ("kind", "previous", "fields", "collected"),
    [
        ("payment.authorized", None, {"amount_captured": 0}, ()),  # held, not collected
        ("payment.succeeded", "succeeded", {}, ()),  # read back as it was
        ("payment.succeeded", "requires_action", {}, (("USD", "payments", 2000),)),
        ("payment.succeeded", "authorized", {}, (("USD", "payments", 2000),)),  # captured
        ("payment.failed", None, {"amount_captured": 0}, ()),
        ("payment.succeeded", None, {"amount_tax": None}, ()),  # untaxed
        ("payment.succeeded", None, {"amount_tax": 0}, ()),
        ("payment.succeeded", None, {"amount_tax": "2000"}, ()),  # malformed
        ("payment.succeeded", None, {"amount_tax": 20_000}, ()),  # over its amount
        ("payment.succeeded", None, {"amount_captured": 20_000}, ()),
        ("payment.succeeded", None, {"currency": "XXX"}, ()),
    ],
)
def test_tax_is_collected_once_when_a_payment_succeeds(
    kind: str, previous: str | None, fields: dict[str, Any], collected: tuple[Any, ...]
) -> None:
    assert _observe(_taxed(kind, previous, **fields)).tax_collected == collected


def test_a_paid_invoice_s_tax_is_collected_once() -> None:
    """The first invoice (its tax), renewals read back (each's), one open (declined: no
    tax), found paid later (its tax then), read again (none); an untaxed invoice or one
    recorded before tax collects none; a tax past the invoice's amount is malformed."""
    first = _inv("paid", created_by="c1", subtotal=1500, tax=300, total=1800, amount=1800)
    seen = _observe(_created("c1", [first]))
    assert seen.tax_collected == (("EUR", "invoices", 300),)
    renewals = [_inv("paid", created_by="r1", n=n, tax=300, amount=1800) for n in (2, 3)]
    untaxed = _inv("paid", created_by="r1", n=4)
    bad = _inv("paid", created_by="r1", n=5, tax=5000)
    read = _observe(_refreshed("r1", [*renewals, untaxed, bad]))
    assert read.tax_collected == (("EUR", "invoices", 300),) * 2
    open_ = _inv("open", created_by="r2", n=6, tax=300, amount=1800, failure_code="expired_card")
    assert _observe(_refreshed("r2", [open_], "past_due")).tax_collected == ()
    paid = {**open_, "status": "paid", "version": 2}
    assert _observe(_refreshed("r3", [paid], "active", "past_due")).tax_collected == (
        ("EUR", "invoices", 300),
    )
    assert _observe(_refreshed("r4", [])).tax_collected == ()


def test_an_invoice_paid_mostly_from_a_credit_balance_collected_its_tax() -> None:
    """Review h74h: an invoice carries its provider's total (1,800: 1,500 + 300 of tax),
    and what was charged (``amount``) may be less: 200 when a credit balance paid the
    rest. Its tax (300, within the total) was collected all the same."""
    credited = _inv("paid", created_by="c1", subtotal=1500, tax=300, total=1800, amount=200)
    assert _observe(_created("c1", [credited])).tax_collected == (("EUR", "invoices", 300),)
    past = _inv("paid", created_by="c1", subtotal=1500, tax=5000, total=1800, amount=200)
    assert _observe(_created("c1", [past])).tax_collected == ()  # (past its total)


# ---- the window ----------------------------------------------------------------------


def _seen(outcome: str, at: int = T0, **facts: Any) -> Observed:
    return Observed(event_id=f"e{at}{outcome}", tenant_id="acme", outcome=outcome, time_ms=at,
                    **facts)  # fmt: skip


def test_a_window_counts_payouts_and_tax_per_currency() -> None:
    st = TenantInsights("acme")
    st.apply(_seen("payout.created", T0 + 1, currency="EUR", payout_moves=("created",),
                   payout_amount=3000), CFG)  # fmt: skip
    st.apply(_seen("payout.paid", T0 + 2, currency="EUR", payout_moves=("created", "paid"),
                   payout_amount=500), CFG)  # fmt: skip
    st.apply(_seen("payout.failed", T0 + 3, currency="EUR", payout_moves=("failed", "returned"),
                   payout_amount=700, payout_failure="account_closed"), CFG)  # fmt: skip
    st.apply(_seen("payout.failed", T0 + 4, currency="USD", payout_moves=("failed",),
                   payout_amount=100, payout_failure="no_account"), CFG)  # fmt: skip
    st.apply(_seen("payout.canceled", T0 + 5, currency="USD", payout_moves=("canceled",),
                   payout_amount=200), CFG)  # fmt: skip
    st.apply(_seen("payment.succeeded", T0 + 6, currency="EUR", captured=12_000,
                   tax_collected=(("EUR", "payments", 2000),)), CFG)  # fmt: skip
    st.apply(_seen("subscription.updated", T0 + 7, currency="EUR",
                   invoices_paid=(("EUR", 1800), ("JPY", 1100)),
                   tax_collected=(("EUR", "invoices", 300), ("JPY", "invoices", 100))),
             CFG)  # fmt: skip
    w = st.windows[str(T0)]
    zero = {f"{m}{s}": 0 for m in ("created", "paid", "failed", "returned", "canceled")
            for s in ("", "_amount")}  # fmt: skip
    assert w["payouts"] == {
        "EUR": {**zero, "created": 2, "created_amount": 3500, "paid": 1, "paid_amount": 500,
                "failed": 1, "failed_amount": 700, "returned": 1, "returned_amount": 700},
        "USD": {**zero, "failed": 1, "failed_amount": 100, "canceled": 1,
                "canceled_amount": 200},
    }  # fmt: skip
    assert w["payout_failures"] == {"account_closed": 1, "no_account": 1}
    assert w["tax_collected"] == {
        "EUR": {"payments": 2000, "invoices": 300},
        "JPY": {"payments": 0, "invoices": 100},
    }
    # A payout is not revenue nor a decline: the payments' figures stay the payments'.
    assert {c: m["captured"] for c, m in w["money"].items()} == {"EUR": 12_000, "USD": 0}
    assert w["declines"] == {} and w["events"] == 7
    assert st.fraud == {}  # (no attempt: the fraud rules never saw them)


def test_a_window_is_published_with_payouts_and_tax_and_without_them_as_before() -> None:
    st = TenantInsights("acme")
    st.apply(_seen("payment.succeeded", T0, currency="USD", captured=500), CFG)
    quiet = window_event("acme", T0, CFG.window_ms, st.windows[str(T0)], CloudEventsMode.BINARY)
    data = decode_record(quiet.key, quiet.value, dict(quiet.headers)).get_data()
    assert not {"payouts", "payout_failures", "tax_collected"} & set(data)
    st.apply(_seen("payout.failed", T0 + 1, currency="USD", payout_moves=("created", "failed"),
                   payout_amount=100, payout_failure="no_account"), CFG)  # fmt: skip
    st.apply(_seen("payment.succeeded", T0 + 2, currency="USD", captured=1200,
                   tax_collected=(("USD", "payments", 200),)), CFG)  # fmt: skip
    record = window_event("acme", T0, CFG.window_ms, st.windows[str(T0)], CloudEventsMode.BINARY)
    data = decode_record(record.key, record.value, dict(record.headers)).get_data()
    assert data["payouts"]["USD"]["failed_amount"] == 100
    assert data["payout_failures"] == {"no_account": 1}
    assert data["tax_collected"] == {"USD": {"payments": 200, "invoices": 0}}
    assert record.key == quiet.key


def test_a_window_with_payouts_and_tax_matches_the_published_schema(
    asyncapi: dict[str, Any],  # noqa: F811
) -> None:
    st = TenantInsights("acme")
    st.apply(_seen("payout.failed", T0, currency="EUR", payout_moves=("failed", "returned"),
                   payout_amount=700, payout_failure="account_closed"), CFG)  # fmt: skip
    st.apply(_seen("payment.succeeded", T0 + 1, currency="EUR", captured=1200,
                   tax_collected=(("EUR", "payments", 200),)), CFG)  # fmt: skip
    record = window_event("acme", T0, CFG.window_ms, st.windows[str(T0)], CloudEventsMode.BINARY)
    payload = json.loads(record.value)
    assert {"payouts", "payout_failures", "tax_collected"} <= set(payload)
    validator(asyncapi, "/components/messages/analyticsWindow/payload", draft7=True).validate(
        payload
    )
    # Closed, as every window's part: a consumer validating against it sees a new figure.
    schema = asyncapi["components"]["schemas"]["AnalyticsWindow"]["properties"]
    assert schema["payouts"]["additionalProperties"]["additionalProperties"] is False
    assert schema["tax_collected"]["additionalProperties"]["additionalProperties"] is False
    assert not {"payouts", "payout_failures", "tax_collected"} & set(
        asyncapi["components"]["schemas"]["AnalyticsWindow"]["required"]
    )


# ---- the runner: once per outcome id ---------------------------------------------------


async def test_payouts_and_tax_are_counted_once_across_redelivery_and_re_emission(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A payout created, read paid, read paid again, returned by the bank; a taxed
    payment; each delivered twice (a crash's redelivery), the failure also re-emitted:
    the window, as the dashboard's JSON holds it, counts each once."""
    standin_broker(monkeypatch)
    h = Harness("payouts-tax")
    del h.runner._produce  # the real one (it keeps what the dashboard shows)

    def event(o: dict[str, Any]) -> Any:
        return h.event(o["kind"], o["data"], cid=o["command"])

    outcomes = [
        _payout("payout.created", "c1", _po("pending")),
        _payout("payout.paid", "r1", _po("paid", 2), "pending"),
        _payout("payout.paid", "r2", _po("paid", 2), "paid"),
        _taxed(),
    ]
    failed = _payout("payout.failed", "r3", _po("failed", 3, failure_code="account_closed"),
                     "paid", error=_failure("account_closed"))  # fmt: skip
    events = [event(o) for o in outcomes]
    first, resent = event(failed), event(failed)
    await h.runner.run_batch([*events, first])
    await h.runner.run_batch([*events, first, resent])
    h.now = (T0 + 70_000) / 1000
    await h.runner.tick(lambda p: True)
    window = h.runner.as_json()["windows"]["acme"]
    assert window["events"] == 5, window
    eur = window["payouts"]["EUR"]
    assert (eur["created"], eur["paid"], eur["failed"], eur["returned"]) == (1, 1, 1, 1)
    assert (eur["created_amount"], eur["paid_amount"], eur["failed_amount"]) == (3000,) * 3
    assert window["payout_failures"] == {"account_closed": 1}
    assert window["tax_collected"] == {"USD": {"payments": 2000, "invoices": 0}}
