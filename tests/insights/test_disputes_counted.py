"""Disputes (chargebacks) in the analytics: opened and lost per tenant and currency, each
once, and the payments that succeeded in the same window (the dispute rate's basis).

A dispute reaches the outcomes as an entity in `related` of a payment outcome (the
charge or capture that raised it, a `payment.refresh` that read it, first or as it moved
on) and as the primary entity of `dispute.evidence_submitted` / `dispute.closed`. None of
it was counted (h72d): an operator could not see a tenant's dispute rate, which the card
networks' monitoring programs act on."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from paystream.insights.events import WINDOW_TYPE, window_event
from paystream.insights.observe import _RELATED_MAX, Observed, observe
from paystream.insights.state import InsightsConfig, TenantInsights
from paystream.settings import CloudEventsMode
from paystream.streams.codec import decode_record
from paystream.streams.outcomes import CommandRef, encode_outcome
from tests.insights.standin_broker import standin_broker
from tests.insights.test_runner import T0, Harness

CFG = InsightsConfig(window_ms=60_000, horizon_ms=600_000, grace_ms=5_000)
PAYMENT = {
    "tenant_id": "acme", "id": "p1", "version": 1, "created_by": "c1", "status": "succeeded",
    "amount": 900, "amount_captured": 900, "currency": "USD", "capture_method": "automatic",
    "dispute_id": "dp_1",
}  # fmt: skip


def _dispute(status: str, version: int, created_by: str = "c1", **fields: Any) -> dict[str, Any]:
    obj = {
        "tenant_id": "acme", "id": "dp_1", "version": version, "provider": "simulator",
        "created_by": created_by, "payment_id": "p1", "status": status, "amount": 900,
        "currency": "USD", "provider_dispute_id": "sim_dp_1", "evidence_submitted": False,
    }  # fmt: skip
    return {**obj, **fields}


def _related(obj: dict[str, Any]) -> dict[str, Any]:
    return {"entity_type": "dispute", "entity_id": obj["id"], "version": obj["version"],
            "object": obj}  # fmt: skip


def _outcome(
    kind: str, command: str, command_type: str, data: dict[str, Any], *, tenant: str = "acme"
) -> dict[str, Any]:
    return {"kind": kind, "command": command, "type": command_type, "tenant": tenant,
            "data": {"tenant_id": tenant, "command_id": command, **data}}  # fmt: skip


def _observe(o: dict[str, Any], at_ms: int = T0) -> Observed:
    cmd = CommandRef(
        o["tenant"],
        o["command"],
        o["type"],
        o["command"],
        datetime.fromtimestamp(at_ms / 1000, UTC),
    )
    rec = encode_outcome(cmd, o["kind"], o["data"], CloudEventsMode.BINARY)
    seen = observe(decode_record(rec.key, rec.value, dict(rec.headers)))
    assert seen is not None
    return seen


def _paid(command: str = "c1", dispute: dict[str, Any] | None = None) -> dict[str, Any]:
    """The charge (payment.create) that raised the dispute: payment.succeeded with it."""
    data: dict[str, Any] = {"entity_type": "payment", "entity_id": "p1", "version": 1,
                            "object": {**PAYMENT, "created_by": command}}  # fmt: skip
    if dispute is not None:
        data["related"] = [_related(dispute)]
    return _outcome("payment.succeeded", command, "payment.create", data)


def _refreshed(command: str, dispute: dict[str, Any] | None) -> dict[str, Any]:
    """A payment.refresh (a webhook's, or the tenant's) of the succeeded payment."""
    data: dict[str, Any] = {
        "entity_type": "payment",
        "entity_id": "p1",
        "version": 3,
        "object": {**PAYMENT, "version": 3},
        "previous_status": "succeeded",
    }
    if dispute is not None:
        data["related"] = [_related(dispute)]
    return _outcome("payment.succeeded", command, "payment.refresh", data)


def _dispute_outcome(
    kind: str, command: str, dispute: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    command_type = "dispute.accept" if kind == "dispute.closed" else "dispute.submit_evidence"
    data = {"entity_type": "dispute", "entity_id": "dp_1", "version": dispute["version"],
            "object": dispute, **extra}  # fmt: skip
    return _outcome(kind, command, command_type, data)


# ---- observe -------------------------------------------------------------------------


def test_a_dispute_is_opened_once_across_the_outcomes_of_its_life() -> None:
    """Raised at charge (created by the charge's command, version 1), then read back as
    it moves on (under review, reopened at Stripe: needs_response with a later deadline,
    won), its evidence submitted: opened once, by the outcome of the command that
    created it, whatever later outcomes carry it."""
    life = [
        _paid("c1", _dispute("needs_response", 1)),
        _dispute_outcome("dispute.evidence_submitted", "c2", _dispute("under_review", 2)),
        _refreshed("c3", _dispute("needs_response", 3, evidence_due_by="2027-01-09T00:00:00Z")),
        _dispute_outcome("dispute.evidence_submitted", "c4", _dispute("under_review", 4)),
        _refreshed("c5", _dispute("won", 5)),
        _refreshed("c6", None),  # read back again: nothing moved
    ]
    seen = [_observe(o) for o in life]
    assert [s.disputes_opened for s in seen] == [(("USD", 900),), (), (), (), (), ()]
    assert [s.disputes_lost for s in seen] == [()] * 6
    assert seen[0].captured == 900  # (the charge's money, as before)


def test_a_dispute_first_read_by_a_refresh_is_opened_by_that_refresh() -> None:
    """A dispute opened at the provider after the charge reaches paystream through a
    payment.refresh (Stripe's charge.dispute.created webhook): created by the refresh's
    command, so opened there, and not again by the next refresh that finds it moved on;
    a second dispute after a decided one (a chargeback filed after an inquiry closed)
    is another entity, opened by the refresh that records it."""
    first = _observe(_refreshed("r1", _dispute("needs_response", 1, created_by="r1")))
    moved = _observe(_refreshed("r2", _dispute("under_review", 2, created_by="r1")))
    second = _dispute("needs_response", 1, created_by="r3", id="dp_2", amount=450)
    another = _observe(_refreshed("r3", second))
    assert first.disputes_opened == (("USD", 900),)
    assert moved.disputes_opened == ()
    assert another.disputes_opened == (("USD", 450),)
    assert (first.captured, moved.captured, another.captured) == (0, 0, 0)  # (read backs)


def test_one_refresh_bringing_a_decision_and_a_newer_dispute_counts_each() -> None:
    """A refresh may bring the recorded dispute's decision (read from its own entry) and
    a newer dispute filed after it (review h72g): the first lost, the second opened."""
    decided = _dispute("lost", 3)
    newer = _dispute("needs_response", 1, created_by="r3", id="dp_2", amount=400)
    out = _refreshed("r3", None)
    out["data"]["related"] = [_related(decided), _related(newer)]
    seen = _observe(out)
    assert (seen.disputes_opened, seen.disputes_lost) == ((("USD", 400),), (("USD", 900),))


def test_a_dispute_lost_is_counted_when_it_becomes_lost() -> None:
    """The network's decision read back (related, lost), or the merchant's accept
    (dispute.closed, lost): each a loss; an inquiry closed is not one."""
    decided = _observe(_refreshed("c3", _dispute("lost", 3)))
    accepted = _observe(
        _dispute_outcome(
            "dispute.closed", "c4", _dispute("lost", 2), previous_status="needs_response"
        )
    )
    inquiry = _observe(
        _dispute_outcome(
            "dispute.closed", "c5", _dispute("inquiry_closed", 2), previous_status="needs_response"
        )
    )
    assert decided.disputes_lost == (("USD", 900),) and decided.disputes_opened == ()
    assert accepted.disputes_lost == (("USD", 900),) and accepted.disputes_opened == ()
    assert inquiry.disputes_lost == ()


def test_an_accept_re_driven_after_a_refresh_read_the_loss_is_not_counted_again() -> None:
    """The accept's answer lost (parked); a refresh (Stripe's charge.dispute.closed)
    reads the dispute lost: counted. The accept re-driven then closes a dispute already
    lost here (previous_status lost): not a second loss."""
    read = _observe(_refreshed("c3", _dispute("lost", 2)))
    redriven = _observe(
        _dispute_outcome("dispute.closed", "c2", _dispute("lost", 3), previous_status="lost")
    )
    assert read.disputes_lost == (("USD", 900),)
    assert redriven.disputes_lost == ()


def test_a_reopened_dispute_lost_again_counts_again() -> None:
    """Lost, reopened at Stripe (an appeal: a later evidence deadline), lost again: two
    losses, as documented (each decision is one)."""
    lost = _observe(_refreshed("c3", _dispute("lost", 3)))
    reopened = _observe(
        _refreshed("c4", _dispute("needs_response", 4, evidence_due_by="2027-02-01T00:00:00Z"))
    )
    again = _observe(_refreshed("c5", _dispute("lost", 5, evidence_due_by="2027-02-01T00:00:00Z")))
    assert [s.disputes_lost for s in (lost, reopened, again)] == [
        (("USD", 900),),
        (),
        (("USD", 900),),
    ]
    assert [s.disputes_opened for s in (lost, reopened, again)] == [(), (), ()]


def test_a_dispute_opened_and_lost_in_one_outcome_is_both() -> None:
    """First read already lost (its webhooks missed): opened and lost, once each."""
    seen = _observe(_refreshed("r1", _dispute("lost", 1, created_by="r1")))
    assert (seen.disputes_opened, seen.disputes_lost) == ((("USD", 900),), (("USD", 900),))


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param(_related(_dispute("lost", 1, tenant_id="globex")), id="another-tenant"),
        pytest.param(
            {**_related(_dispute("lost", 1)), "entity_type": "payment"}, id="not-a-dispute"
        ),
        pytest.param(_related(_dispute("lost", 1, currency="XXX")), id="unknown-currency"),
        pytest.param(_related(_dispute("lost", 1, currency=None)), id="no-currency"),
        pytest.param(_related(_dispute("lost", 1, amount="900")), id="amount-a-string"),
        pytest.param(_related(_dispute("lost", 1, amount=9.5)), id="amount-a-float"),
        pytest.param(_related(_dispute("lost", 1, amount=0)), id="amount-zero"),
        pytest.param(_related(_dispute("lost", 1, amount=-900)), id="amount-negative"),
        pytest.param(_related(_dispute("lost", 1, amount=10**30)), id="amount-past-paystream's"),
        pytest.param(
            {"entity_type": "dispute", "version": 1, "object": "dp_1"}, id="object-a-string"
        ),
        pytest.param("dispute", id="entry-a-string"),
    ],
)
def test_a_cross_tenant_or_malformed_related_entry_is_ignored(entry: Any) -> None:
    out = _refreshed("c1", None)
    out["data"]["related"] = [entry]
    seen = _observe(out)
    assert (seen.disputes_opened, seen.disputes_lost) == ((), ())


def test_opened_needs_this_outcome_s_command_and_the_first_version() -> None:
    """Created by another command (a later outcome carrying it), or at a later version
    (moved on since), or a version that is no integer: not opened here."""
    for obj, version in (
        (_dispute("needs_response", 1, created_by="someone-else"), 1),
        (_dispute("needs_response", 2, created_by="r1"), 2),
        (_dispute("needs_response", 1, created_by="r1"), True),
        (_dispute("needs_response", 1, created_by="r1"), "1"),
    ):
        out = _refreshed("r1", None)
        out["data"]["related"] = [{**_related(obj), "version": version}]
        assert _observe(out).disputes_opened == (), (obj["created_by"], version)


def test_dispute_amounts_are_integer_minor_units_per_currency() -> None:
    """JPY has no minor digits, KWD three: amounts are kept as the outcome gives them,
    under the dispute's own currency."""
    jpy = _dispute("needs_response", 1, created_by="r1", currency="JPY", amount=1200)
    kwd = _dispute("lost", 1, created_by="r2", currency="KWD", amount=12_340)
    assert _observe(_refreshed("r1", jpy)).disputes_opened == (("JPY", 1200),)
    seen = _observe(_refreshed("r2", kwd))
    assert (seen.disputes_opened, seen.disputes_lost) == ((("KWD", 12_340),), (("KWD", 12_340),))


def test_a_dispute_is_counted_from_a_related_entry_holding_a_card_number_without_it() -> None:
    """Only the currency (one of paystream's) and the amount are kept: a dispute whose
    reason or id holds a card number is counted, and nothing of those strings is."""
    pan = "4242424242424242"
    obj = _dispute("needs_response", 1, created_by="r1", reason=pan, id=f"dp_{pan}")
    seen = _observe(_refreshed("r1", obj))
    assert seen.disputes_opened == (("USD", 900),)
    assert pan not in repr(seen)


# ---- the window ----------------------------------------------------------------------


def _seen(outcome: str, at: int = T0, **facts: Any) -> Observed:
    return Observed(event_id=f"e{at}{outcome}{len(facts)}", tenant_id="acme", outcome=outcome,
                    time_ms=at, **facts)  # fmt: skip


def test_a_window_counts_disputes_per_currency_and_the_payments_that_succeeded() -> None:
    st = TenantInsights("acme")
    st.apply(_seen("payment.succeeded", T0 + 1, currency="USD", captured=900), CFG)
    st.apply(_seen("payment.succeeded", T0 + 2, currency="USD", captured=500), CFG)
    st.apply(_seen("payment.succeeded", T0 + 3, currency="EUR", captured=700), CFG)
    # a refresh that read a dispute: payment.succeeded with no money captured again
    st.apply(_seen("payment.succeeded", T0 + 4, currency="USD",
                   disputes_opened=(("USD", 900),)), CFG)  # fmt: skip
    st.apply(_seen("dispute.closed", T0 + 5, currency="USD", disputes_lost=(("USD", 900),)), CFG)
    both = {"disputes_opened": (("EUR", 700),), "disputes_lost": (("EUR", 700),)}
    st.apply(_seen("payment.succeeded", T0 + 6, currency="EUR", **both), CFG)
    st.apply(_seen("payment.succeeded", T0 + 60_000, currency="USD", captured=100), CFG)
    first, second = st.windows[str(T0)], st.windows[str(T0 + 60_000)]
    assert first["payments_succeeded"] == {"USD": 2, "EUR": 1}
    assert first["disputes"] == {
        "USD": {"opened": 1, "opened_amount": 900, "lost": 1, "lost_amount": 900},
        "EUR": {"opened": 1, "opened_amount": 700, "lost": 1, "lost_amount": 700},
    }
    assert second["payments_succeeded"] == {"USD": 1} and "disputes" not in second
    # (money as before: the refresh and the accept moved none)
    assert first["money"]["USD"]["captured"] == 1400 and first["events"] == 6


def test_a_window_is_published_with_its_disputes_and_without_them_as_before() -> None:
    """The published window carries them (the dashboard's JSON is the windows
    published); a window with neither is the very event an older version published."""
    st = TenantInsights("acme")
    st.apply(_seen("payment.failed", T0, currency="USD", declined=500, decline_code="x"), CFG)
    quiet = window_event("acme", T0, CFG.window_ms, st.windows[str(T0)], CloudEventsMode.BINARY)
    before = dict(st.windows[str(T0)])
    assert "disputes" not in decode_record(quiet.key, quiet.value, dict(quiet.headers)).get_data()
    st.apply(_seen("payment.succeeded", T0 + 1, currency="USD",
                   disputes_opened=(("USD", 900),)), CFG)  # fmt: skip
    record = window_event("acme", T0, CFG.window_ms, st.windows[str(T0)], CloudEventsMode.BINARY)
    data = decode_record(record.key, record.value, dict(record.headers)).get_data()
    assert data["disputes"] == {
        "USD": {"opened": 1, "opened_amount": 900, "lost": 0, "lost_amount": 0}
    }
    assert "payments_succeeded" not in data  # (a read back: none succeeded here)
    assert set(before) == {"events", "emitted", "outcomes", "money", "declines", "rejections"}


# ---- the runner: once per outcome id, and the dashboard's JSON ----------------------------


async def test_disputes_are_counted_once_across_redelivery_and_re_emission(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The charge that raised a dispute, its accept, each delivered twice (a crash's
    redelivery: the same offset; a command sent again by its client: its outcome
    re-emitted, the same event at another offset): one payment succeeded, one dispute
    opened, one lost. The window published, as the dashboard's JSON (as_json: what
    /v1/stats shows) holds it, says so."""
    standin_broker(monkeypatch)
    h = Harness("disputes")
    del h.runner._produce  # the real one (it keeps what the dashboard shows)

    def event(o: dict[str, Any]) -> Any:
        return h.event(o["kind"], o["data"], cid=o["command"])

    paid = event(_paid("c1", _dispute("needs_response", 1)))
    closed = _dispute_outcome(
        "dispute.closed", "c2", _dispute("lost", 2), previous_status="needs_response"
    )
    accepted = event(closed)
    resent = event(closed)  # (sent again by its client: the same event, re-emitted)
    await h.runner.run_batch([paid, accepted])
    await h.runner.run_batch([paid, accepted, resent])  # redelivered, and re-emitted
    h.now = (T0 + 70_000) / 1000
    await h.runner.tick(lambda p: True)
    window = h.runner.as_json()["windows"]["acme"]
    assert window["events"] == 2, window
    assert window["payments_succeeded"] == {"USD": 1}
    assert window["disputes"] == {
        "USD": {"opened": 1, "opened_amount": 900, "lost": 1, "lost_amount": 900}
    }


async def test_a_dispute_of_another_tenant_s_entity_is_not_counted_for_either() -> None:
    """acme's outcome naming beta's dispute (forged, or a bug of ours): counted for
    neither tenant (acme's payment still is)."""
    h = Harness("dispute-tenants")
    forged = _paid("c1", _dispute("needs_response", 1, tenant_id="beta"))
    await h.runner.run_batch([h.event(forged["kind"], forged["data"], cid="c1")])
    h.now = (T0 + 70_000) / 1000
    await h.runner.tick(lambda p: True)
    [window] = [e.get_data() for e in h.of_type(WINDOW_TYPE)]
    assert window["payments_succeeded"] == {"USD": 1}
    assert "disputes" not in window


def test_one_dispute_listed_twice_in_an_outcome_counts_once() -> None:
    """An outcome listing one dispute twice (forged, or a producer's bug: paystream's
    handlers never list an entity twice) opens and loses it once (review h72k)."""
    entry = _related(_dispute("lost", 1, created_by="r1"))
    out = _refreshed("r1", None)
    out["data"]["related"] = [entry, entry]
    seen = _observe(out)
    assert seen.disputes_opened == (("USD", 900),)
    assert seen.disputes_lost == (("USD", 900),)


def test_a_dispute_closed_listing_its_own_dispute_in_related_loses_it_once() -> None:
    """A dispute.closed that also lists its own dispute in `related` loses it once
    (review h72k)."""
    lost = _dispute("lost", 2)
    out = _dispute_outcome("dispute.closed", "acc", lost, previous_status="needs_response")
    out["data"]["related"] = [_related(lost)]
    assert _observe(out).disputes_lost == (("USD", 900),)


def test_only_the_first_related_entries_are_read() -> None:
    """A forged outcome listing thousands of related entries costs no more than the
    first _RELATED_MAX of them (review h72k)."""

    out = _refreshed("r1", None)
    out["data"]["related"] = [
        _related(_dispute("needs_response", 1, created_by="r1", id=f"dp_{i}"))
        for i in range(_RELATED_MAX + 10)
    ]
    assert len(_observe(out).disputes_opened) <= _RELATED_MAX
