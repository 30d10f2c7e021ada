"""Subscriptions in the analytics: per tenant and currency, invoices paid (count, amount),
invoice payments declined (count, and by code), subscriptions created and canceled, each
invoice once, from subscription outcomes and the invoices in their `related`.

None of it was counted: a SaaS tenant's recurring revenue was missing from its windows
and the dashboard (h73o). The fraud rules see a subscription's creation (its first
invoice charged) as a payment attempt, and its first invoice declined as a card decline;
renewals, charged by the provider on its schedule, are not attempts."""

from __future__ import annotations

import json
from typing import Any

import pytest

from paystream.gateways.base import INVOICES_LISTED_MAX
from paystream.insights.events import window_event
from paystream.insights.observe import Observed
from paystream.insights.state import InsightsConfig, TenantInsights
from paystream.settings import CloudEventsMode
from paystream.streams.codec import decode_record
from tests.insights.standin_broker import standin_broker
from tests.insights.test_disputes_counted import _observe, _outcome
from tests.insights.test_runner import T0, Harness
from tests.test_docs import asyncapi, validator  # noqa: F401  (a fixture)

CFG = InsightsConfig(window_ms=60_000, horizon_ms=600_000, grace_ms=5_000)


def _sub(status: str, version: int = 1, created_by: str = "c1", **fields: Any) -> dict[str, Any]:
    obj = {
        "tenant_id": "acme", "id": "s1", "version": version, "provider": "simulator",
        "created_by": created_by, "customer_id": "cus_1", "payment_method_id": "pm_1",
        "status": status, "amount": 1500, "currency": "EUR", "interval": "month",
        "interval_count": 1, "provider_subscription_id": "sim_sub_1",
        "current_period_start": "2026-12-01T00:00:00Z",
        "current_period_end": "2027-01-01T00:00:00Z",
    }  # fmt: skip
    return {**obj, **fields}


def _inv(
    status: str, version: int = 1, created_by: str = "c1", n: int = 1, **fields: Any
) -> dict[str, Any]:
    obj = {
        "tenant_id": "acme", "id": f"in_{n}", "version": version, "provider": "simulator",
        "created_by": created_by, "subscription_id": "s1", "customer_id": "cus_1",
        "status": status, "amount": 1500, "currency": "EUR",
        "period_start": "2026-12-01T00:00:00Z", "period_end": "2027-01-01T00:00:00Z",
        "provider_invoice_id": f"sim_in_{n}", "provider_payment_id": f"pi_{n}",
        "failure_code": None, "failure_message": None,
    }  # fmt: skip
    return {**obj, **fields}


def _entry(obj: dict[str, Any]) -> dict[str, Any]:
    return {"entity_type": "invoice", "entity_id": obj["id"], "version": obj["version"],
            "object": obj}  # fmt: skip


def _sub_outcome(
    kind: str,
    command: str,
    command_type: str,
    sub: dict[str, Any],
    invoices: list[dict[str, Any]],
    **extra: Any,
) -> dict[str, Any]:
    data = {"entity_type": "subscription", "entity_id": "s1", "version": sub["version"],
            "object": sub, "related": [_entry(i) for i in invoices], **extra}  # fmt: skip
    return _outcome(kind, command, command_type, data)


def _created(command: str = "c1", invoices: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    if invoices is None:
        invoices = [_inv("paid", created_by=command)]
    return _sub_outcome(
        "subscription.created", command, "subscription.create", _sub("active", 1, command), invoices
    )


def _refreshed(
    command: str,
    invoices: list[dict[str, Any]],
    status: str = "active",
    previous: str = "active",
    kind: str = "subscription.updated",
    **extra: Any,
) -> dict[str, Any]:
    return _sub_outcome(
        kind, command, "subscription.refresh", _sub(status, 3), invoices,
        previous_status=previous, **extra,
    )  # fmt: skip


_DECLINE = {"code": "card_declined", "decline_code": "generic_decline", "message": "declined"}


# ---- observe -------------------------------------------------------------------------


def test_a_subscription_created_counts_its_first_invoice_paid_and_a_creation() -> None:
    """subscription.create charging its first invoice: one invoice paid (its currency and
    minor units), one subscription created, and a payment attempt its issuer answered
    (the fraud rules' basis), pinned on the customer and card."""
    seen = _observe(_created("c1"))
    assert seen.invoices_paid == (("EUR", 1500),)
    assert seen.subscription_created and not seen.subscription_canceled
    assert seen.invoices_declined == ()
    assert (seen.attempt, seen.answered, seen.card_declined) == (True, True, False)
    assert (seen.customer_id, seen.payment_method_id) == ("cus_1", "pm_1")
    # (No payment's money: a subscription's revenue is its own.)
    assert (seen.captured, seen.authorized, seen.declined) == (0, 0, 0)


def test_a_trial_is_created_and_charges_nothing() -> None:
    trial = _sub_outcome("subscription.created", "c1", "subscription.create", _sub("trialing"), [])
    seen = _observe(trial)
    assert seen.subscription_created and seen.invoices_paid == ()
    assert not seen.attempt  # (no card charged)


def test_renewals_read_back_count_each_invoice_once() -> None:
    """A refresh bringing three renewals (new, paid) counts three; the next refresh
    lists none (nothing moved) and counts none; an invoice listed again at version 1 by
    an outcome whose command did not create it (forged, or a bug) is not counted again."""
    three = [_inv("paid", created_by="r1", n=n) for n in (2, 3, 4)]
    first = _observe(_refreshed("r1", three))
    again = _observe(_refreshed("r2", []))
    relisted = _observe(_refreshed("r3", three))
    assert first.invoices_paid == (("EUR", 1500),) * 3
    assert again.invoices_paid == () and relisted.invoices_paid == ()
    # Renewals are the provider's charges, not a client's: no attempt, no creation.
    assert not first.attempt and not first.subscription_created


def test_an_update_counts_nothing_until_an_invoice_is_paid() -> None:
    """subscription.update (a new price, another card, a cancel scheduled or resumed):
    no money moved, no subscription started or ended, no attempt; a renewal its provider
    billed before the change (in `related`) is counted as a refresh's is."""
    changed = _sub("active", 2, "u1", amount=2500, payment_method_id="pm_2")
    update = _sub_outcome(
        "subscription.updated", "u1", "subscription.update", changed, [], previous_status="active"
    )
    seen = _observe(update)
    assert seen.invoices_paid == () and seen.invoices_declined == ()
    assert not (seen.subscription_created or seen.subscription_canceled or seen.attempt)
    renewal = [_inv("paid", created_by="u2", n=2)]
    billed = _sub_outcome(
        "subscription.updated", "u2", "subscription.update", _sub("active", 3, "u2"), renewal,
        previous_status="active",
    )  # fmt: skip
    assert _observe(billed).invoices_paid == (("EUR", 1500),)


def test_a_renewal_declined_then_paid_counts_one_decline_and_one_payment() -> None:
    """past_due: a new open invoice (its decline, as a payment.failed names it); read
    back paid later (version 2): paid then, once; a cancel voiding an open one counts
    nothing more."""
    open_ = _inv("open", created_by="r1", n=2, failure_code="insufficient_funds")
    late = _observe(_refreshed("r1", [open_], "past_due", error=_DECLINE))
    assert late.invoices_declined == (("EUR", "insufficient_funds"),)
    assert late.invoices_paid == ()
    # Not a card-testing signal (see the module's docstring).
    assert not late.attempt and not late.card_declined
    paid = _observe(_refreshed("r2", [{**open_, "status": "paid", "version": 2}], "active",
                               "past_due"))  # fmt: skip
    assert paid.invoices_paid == (("EUR", 1500),) and paid.invoices_declined == ()
    other = _inv("open", created_by="r3", n=3, failure_code="generic_decline")
    voided = {**other, "status": "void", "version": 2}
    gone = _observe(_refreshed("r4", [voided], "canceled", "past_due", "subscription.canceled"))
    assert (gone.invoices_paid, gone.invoices_declined) == ((), ())
    assert gone.subscription_canceled


def test_an_invoice_first_read_voided_after_a_decline_counts_its_decline() -> None:
    """Declined and voided at the provider before paystream read it: one decline; one
    voided with no failure (never charged) is none."""
    failed = _inv("void", created_by="r1", n=2, failure_code="expired_card")
    never = _inv("void", created_by="r1", n=3)
    seen = _observe(
        _refreshed("r1", [failed, never], "canceled", "active", "subscription.canceled")
    )
    assert seen.invoices_declined == (("EUR", "expired_card"),)


@pytest.mark.parametrize(
    ("failure", "label"),
    [
        ("generic_decline", "generic_decline"),  # a decline code: as it is
        ("insufficient_funds", "insufficient_funds"),
        ("card_declined", "card_declined"),  # a card error code: paystream's code
        ("authentication_required", "authentication_required"),
        ("payment_intent_authentication_failure", "authentication_required"),
        (None, "card_declined"),
    ],
)
def test_invoice_decline_codes_are_named_as_a_payment_failed_names_them(
    failure: str | None, label: str
) -> None:
    open_ = _inv("open", created_by="r1", n=2, failure_code=failure)
    assert _observe(_refreshed("r1", [open_], "past_due")).invoices_declined == (("EUR", label),)


def test_a_first_invoice_declined_is_a_card_decline_of_its_customer() -> None:
    """subscription.failed (incomplete): the first invoice declined, an attempt and a
    card decline for the fraud rules, as a payment.failed is; one the issuer did not
    refuse (authentication asked for, off-session) is an attempt only."""
    failed = _sub_outcome(
        "subscription.failed", "c1", "subscription.create", _sub("incomplete"),
        [_inv("open", failure_code="generic_decline")], error=_DECLINE,
    )  # fmt: skip
    seen = _observe(failed)
    assert seen.invoices_declined == (("EUR", "generic_decline"),)
    assert (seen.attempt, seen.card_declined, seen.answered) == (True, True, True)
    assert (seen.customer_id, seen.payment_method_id) == ("cus_1", "pm_1")
    assert not seen.subscription_created and seen.invoices_paid == ()
    auth = {"code": "authentication_required", "message": "off-session"}
    asked = _sub_outcome(
        "subscription.failed", "c2", "subscription.create", _sub("incomplete", created_by="c2"),
        [_inv("open", created_by="c2", failure_code="authentication_required")], error=auth,
    )  # fmt: skip
    seen = _observe(asked)
    assert (seen.attempt, seen.card_declined, seen.answered) == (True, False, False)


@pytest.mark.parametrize(
    ("kind", "status", "previous", "created", "canceled"),
    [
        ("subscription.canceled", "canceled", "active", False, True),
        ("subscription.canceled", "canceled", "trialing", False, True),
        ("subscription.canceled", "canceled", "past_due", False, True),
        # never live (never counted created): no churn
        ("subscription.canceled", "canceled", "incomplete", False, False),
        # a parked cancel re-driven after a refresh read it canceled: counted then
        ("subscription.canceled", "canceled", "canceled", False, False),
        # an incomplete one whose first invoice was paid after all: it starts now
        ("subscription.updated", "active", "incomplete", True, False),
        ("subscription.updated", "incomplete", "incomplete", False, False),
        # a Paddle one paid at checkout since its create: it starts now (once)
        ("subscription.updated", "active", "requires_action", True, False),
        ("subscription.updated", "requires_action", "requires_action", False, False),
        ("subscription.canceled", "canceled", "requires_action", False, False),
        ("subscription.updated", "active", "trialing", False, False),  # a trial ended
        ("subscription.updated", "active", "active", False, False),  # scheduled to cancel
        # paused and resumed: still a subscriber, neither started nor churned; canceled
        # while paused: churned
        ("subscription.paused", "paused", "active", False, False),
        ("subscription.resumed", "active", "paused", False, False),
        ("subscription.updated", "active", "paused", False, False),  # its resumes_at passed
        ("subscription.canceled", "canceled", "paused", False, True),
    ],
)
def test_created_and_canceled_are_live_subscriptions_starting_and_ending(
    kind: str, status: str, previous: str, created: bool, canceled: bool
) -> None:
    seen = _observe(_refreshed("r1", [], status, previous, kind))
    assert (seen.subscription_created, seen.subscription_canceled) == (created, canceled)


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param(
            _entry(_inv("paid", created_by="r1", tenant_id="globex")), id="another-tenant"
        ),
        pytest.param(
            {**_entry(_inv("paid", created_by="r1")), "entity_type": "dispute"}, id="not-an-invoice"
        ),
        pytest.param(_entry(_inv("paid", created_by="r1", currency="XXX")), id="unknown-currency"),
        pytest.param(_entry(_inv("paid", created_by="r1", amount="1500")), id="amount-a-string"),
        pytest.param(_entry(_inv("paid", created_by="r1", amount=0)), id="amount-zero"),
        pytest.param(_entry(_inv("paid", created_by="r1", amount=-5)), id="amount-negative"),
        pytest.param(_entry(_inv("paid", created_by="r1", amount=10**30)), id="amount-too-big"),
        pytest.param({**_entry(_inv("paid", created_by="r1")), "version": "1"}, id="version-str"),
        pytest.param({**_entry(_inv("paid", created_by="r1")), "version": True}, id="version-bool"),
        pytest.param({**_entry(_inv("paid", created_by="r1")), "entity_id": 7}, id="id-not-str"),
        pytest.param(
            {"entity_type": "invoice", "entity_id": "in_1", "version": 1, "object": "in_1"},
            id="object-a-string",
        ),
        pytest.param("invoice", id="entry-a-string"),
    ],
)
def test_a_cross_tenant_or_malformed_invoice_entry_is_ignored(entry: Any) -> None:
    out = _refreshed("r1", [])
    out["data"]["related"] = [entry, {**_entry(_inv("open", created_by="r1", n=9))}]
    if isinstance(entry, dict) and isinstance(entry.get("object"), dict):
        entry["object"]["status"] = "paid"
    seen = _observe(out)
    assert seen.invoices_paid == ()
    assert seen.invoices_declined == (("EUR", "card_declined"),)  # (the good entry)


def test_one_invoice_listed_twice_counts_once() -> None:
    entry = _entry(_inv("paid", created_by="r1", n=2))
    out = _refreshed("r1", [])
    out["data"]["related"] = [entry, entry]
    assert _observe(out).invoices_paid == (("EUR", 1500),)


def test_every_invoice_a_read_lists_is_counted() -> None:
    """A read lists up to INVOICES_LISTED_MAX invoices new or moved on (a weekly
    subscription unread for months): all counted (the dispute cap, 16, left the rest
    out); past a few more, a forged outcome's entries are not read."""
    many = [_inv("paid", created_by="r1", n=n) for n in range(INVOICES_LISTED_MAX)]
    assert len(_observe(_refreshed("r1", many)).invoices_paid) == INVOICES_LISTED_MAX
    forged = [_inv("paid", created_by="r1", n=n) for n in range(1000)]
    assert len(_observe(_refreshed("r1", forged)).invoices_paid) < 100


def test_amounts_are_minor_units_in_each_invoice_s_currency() -> None:
    jpy = _inv("paid", created_by="r1", n=2, currency="JPY", amount=1200)
    kwd = _inv("paid", created_by="r1", n=3, currency="KWD", amount=12_340)
    assert _observe(_refreshed("r1", [jpy, kwd])).invoices_paid == (("JPY", 1200), ("KWD", 12_340))


def test_nothing_of_a_card_number_in_an_invoice_is_kept() -> None:
    """An invoice whose failure code, id or message holds a card number: its decline is
    counted, under "other", and nothing of those strings is kept."""
    pan = "4242424242424242"
    bad = _inv("open", created_by="r1", n=2, failure_code=f"x{pan}", failure_message=pan,
               id=f"in_{pan}", provider_invoice_id=pan)  # fmt: skip
    seen = _observe(_refreshed("r1", [bad], "past_due"))
    assert seen.invoices_declined == (("EUR", "other"),)
    assert pan not in repr(seen)
    long = _inv("open", created_by="r1", n=3, failure_code="x" * 500)
    assert _observe(_refreshed("r1", [long], "past_due")).invoices_declined == (("EUR", "other"),)


# ---- the window ----------------------------------------------------------------------


def _seen(outcome: str, at: int = T0, **facts: Any) -> Observed:
    return Observed(event_id=f"e{at}{outcome}", tenant_id="acme", outcome=outcome, time_ms=at,
                    **facts)  # fmt: skip


def test_a_window_counts_subscriptions_per_currency() -> None:
    st = TenantInsights("acme")
    st.apply(_seen("subscription.created", T0 + 1, currency="EUR", subscription_created=True,
                   invoices_paid=(("EUR", 1500),)), CFG)  # fmt: skip
    st.apply(_seen("subscription.updated", T0 + 2, currency="EUR",
                   invoices_paid=(("EUR", 1500), ("EUR", 1500)),
                   invoices_declined=(("EUR", "insufficient_funds"),)), CFG)  # fmt: skip
    st.apply(_seen("subscription.canceled", T0 + 3, currency="USD", subscription_canceled=True),
             CFG)  # fmt: skip
    st.apply(_seen("subscription.failed", T0 + 4, currency="USD",
                   invoices_declined=(("USD", "generic_decline"),)), CFG)  # fmt: skip
    st.apply(_seen("payment.succeeded", T0 + 5, currency="EUR", captured=700), CFG)
    w = st.windows[str(T0)]
    assert w["subscriptions"] == {
        "EUR": {"created": 1, "canceled": 0, "invoices_paid": 3, "invoices_paid_amount": 4500,
                "invoices_declined": 1},
        "USD": {"created": 0, "canceled": 1, "invoices_paid": 0, "invoices_paid_amount": 0,
                "invoices_declined": 1},
    }  # fmt: skip
    assert w["invoice_declines"] == {"insufficient_funds": 1, "generic_decline": 1}
    # The payments' figures stay the payments': invoices are not in money or declines.
    assert {c: m["captured"] for c, m in w["money"].items()} == {"EUR": 700, "USD": 0}
    assert all(m["declined"] == 0 for m in w["money"].values())
    assert w["declines"] == {} and w["events"] == 5


def test_a_window_is_published_with_subscriptions_and_without_them_as_before() -> None:
    st = TenantInsights("acme")
    st.apply(_seen("payment.succeeded", T0, currency="USD", captured=500), CFG)
    quiet = window_event("acme", T0, CFG.window_ms, st.windows[str(T0)], CloudEventsMode.BINARY)
    data = decode_record(quiet.key, quiet.value, dict(quiet.headers)).get_data()
    assert not {"subscriptions", "invoice_declines"} & set(data)
    assert set(st.windows[str(T0)]) == {"events", "emitted", "outcomes", "money", "declines",
                                        "rejections", "payments_succeeded"}  # fmt: skip
    st.apply(_seen("subscription.updated", T0 + 1, currency="USD",
                   invoices_declined=(("USD", "expired_card"),)), CFG)  # fmt: skip
    record = window_event("acme", T0, CFG.window_ms, st.windows[str(T0)], CloudEventsMode.BINARY)
    data = decode_record(record.key, record.value, dict(record.headers)).get_data()
    assert data["subscriptions"]["USD"]["invoices_declined"] == 1
    assert data["invoice_declines"] == {"expired_card": 1}


def test_a_window_with_subscriptions_matches_the_published_schema(
    asyncapi: dict[str, Any],  # noqa: F811
) -> None:
    st = TenantInsights("acme")
    st.apply(_seen("subscription.created", T0, currency="EUR", subscription_created=True,
                   invoices_paid=(("EUR", 1500),),
                   invoices_declined=(("EUR", "generic_decline"),)), CFG)  # fmt: skip
    record = window_event("acme", T0, CFG.window_ms, st.windows[str(T0)], CloudEventsMode.BINARY)
    payload = json.loads(record.value)
    assert {"subscriptions", "invoice_declines"} <= set(payload)
    validator(asyncapi, "/components/messages/analyticsWindow/payload", draft7=True).validate(
        payload
    )


def test_renewal_declines_raise_no_fraud_alert_first_invoice_declines_do() -> None:
    """A customer's five subscriptions renewed on one expired card: five declines in the
    window, no alert (churn, not card testing). Five subscriptions created on declined
    cards by one customer: subject_declines, as five payments would."""
    cfg = InsightsConfig(subject_declines=5)
    st = TenantInsights("acme")
    for n in range(5):
        expired = _inv("open", created_by=f"r{n}", n=n, failure_code="expired_card")
        renewal = _observe(_refreshed(f"r{n}", [expired], "past_due", error=_DECLINE))
        assert st.apply(renewal, cfg, T0) == []
    alerts = []
    for n in range(5):
        failed = _sub_outcome(
            "subscription.failed", f"c{n}", "subscription.create",
            _sub("incomplete", created_by=f"c{n}"),
            [_inv("open", created_by=f"c{n}", n=10 + n, failure_code="generic_decline")],
            error=_DECLINE,
        )  # fmt: skip
        alerts += st.apply(_observe(failed), cfg, T0)
    assert {(a.rule, a.subject_type) for a in alerts} == {
        ("subject_declines", "customer"),
        ("subject_declines", "payment_method"),
    }


# ---- the runner: once per outcome id, and the dashboard's JSON ----------------------------


async def test_subscriptions_are_counted_once_across_redelivery_and_re_emission(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A create (first invoice paid), a refresh finding a renewal declined, a later one
    finding it paid, a cancel; each delivered twice (a crash's redelivery: the same
    offset), the cancel also sent again by its client (the same event, re-emitted): the
    window, as the dashboard's JSON holds it, counts each once."""
    standin_broker(monkeypatch)
    h = Harness("subscriptions")
    del h.runner._produce  # the real one (it keeps what the dashboard shows)

    def event(o: dict[str, Any]) -> Any:
        return h.event(o["kind"], o["data"], cid=o["command"])

    open_ = _inv("open", created_by="r1", n=2, failure_code="insufficient_funds")
    outcomes = [
        _created("c1"),
        _refreshed("r1", [open_], "past_due", error=_DECLINE),
        _refreshed("r2", [{**open_, "status": "paid", "version": 2}], "active", "past_due"),
    ]
    cancel = _sub_outcome("subscription.canceled", "x1", "subscription.cancel",
                          _sub("canceled", 5), [], previous_status="active")  # fmt: skip
    events = [event(o) for o in outcomes]
    canceled, resent = event(cancel), event(cancel)
    await h.runner.run_batch([*events, canceled])
    await h.runner.run_batch([*events, canceled, resent])  # redelivered, and re-emitted
    h.now = (T0 + 70_000) / 1000
    await h.runner.tick(lambda p: True)
    window = h.runner.as_json()["windows"]["acme"]
    assert window["events"] == 4, window
    assert window["subscriptions"] == {
        "EUR": {"created": 1, "canceled": 1, "invoices_paid": 2, "invoices_paid_amount": 3000,
                "invoices_declined": 1}
    }  # fmt: skip
    assert window["invoice_declines"] == {"insufficient_funds": 1}
