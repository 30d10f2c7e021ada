"""Card testing the fraud rules missed (review h59d), through the real handlers on the
simulator: cards declined alike through one client secret, cards declined as they are
saved, and declines padded with attempts that cost the tester nothing."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

from cloudevents.core.v1.event import CloudEvent

from paystream.insights.observe import Observed, observe
from paystream.insights.state import Alert, InsightsConfig, TenantInsights
from tests.agents.harness import Harness, data, kind
from tests.agents.test_payment_refresh import _browser_sets, _simulator, _waiting

_INSUFFICIENT = {
    "failure_code": "insufficient_funds",
    "failure_message": "Your card has insufficient funds.",
}


def _seen(out: Any) -> Observed:
    seen = observe(out)
    assert seen is not None
    return seen


def _window_start(cfg: InsightsConfig) -> int:
    """The start of a fraud window (a fixed one: the tests' outcomes all fall in it)."""
    return 1_800_000_000_000 - 1_800_000_000_000 % cfg.fraud_window_ms


def _sign_ups(
    st: TenantInsights, cfg: InsightsConfig, at: int, saved: Observed, declined: Observed
) -> list[Alert]:
    """1,000 sign-ups in the window (1.7 a second), 13% of the cards declined as saved,
    each by another customer (no subject repeats)."""
    alerts: list[Alert] = []
    for n in range(1000):
        base = declined if n % 100 < 13 else saved
        seen = dataclasses.replace(base, event_id=f"s{n}", time_ms=at + n,
                                   customer_id=f"cus_{n}", payment_method_id=None)  # fmt: skip
        alerts += st.apply(seen, cfg, at + n)
    return alerts


async def _saves(harness: Harness, t: str) -> tuple[Observed, Observed]:
    """What the rules read of a card saved, and of one declined as it is saved."""
    assert kind(await harness.send("customer.create", t, {"customer_id": "cus_s"})) == (
        "customer.created"
    )
    outs = [
        await harness.send(
            "payment_method.attach",
            t,
            {"customer_id": "cus_s", "token": token, "payment_method_id": f"pm_{n}"},
        )
        for n, token in enumerate(("pm_card_visa", "tok_chargeDeclined"))
    ]
    assert [kind(o) for o in outs] == ["payment_method.attached", "payment_method.attach_failed"]
    return _seen(outs[0]), _seen(outs[1])


async def test_each_card_declined_alike_through_a_client_secret_counts(harness: Harness) -> None:
    """Each card tried is another charge at the provider; read back by a refresh, each
    decline counts, though all fail with one code. The same decline read again does not."""
    t = harness.add_tenant()
    provider_id = await _waiting(harness, t, "pay_ct")
    sim = _simulator(harness, t)
    await sim.complete_authentication(provider_id, succeed=False)
    await harness.send("payment.refresh", t, {"payment_id": "pay_ct"})
    counted = []
    for n in range(2, 8):
        await _browser_sets(sim, provider_id, f"card{n}", charge_id=f"ch_card{n}", **_INSUFFICIENT)
        out = await harness.send("payment.refresh", t, {"payment_id": "pay_ct"})
        assert kind(out) == "payment.failed", data(out)
        assert data(out)["object"]["provider_charge_id"] == f"ch_card{n}"
        seen = _seen(out)
        counted.append((seen.card_declined, seen.declined))
        again = _seen(await harness.send("payment.refresh", t, {"payment_id": "pay_ct"}))
        assert again.declined == 0  # the same charge read again
    assert counted == [(True, 1500)] * 6


async def test_without_charge_ids_a_decline_is_new_by_its_code() -> None:
    """A provider (or a record of an older version) naming no charge: told by the code."""

    def refreshed(code: str, before: str, charges: tuple[str | None, str | None]) -> Observed:
        obj = {"amount": 100, "currency": "USD", "failure_code": code}
        extra: dict[str, Any] = {"previous_failure_code": before}
        if charges[0] is not None:
            extra["previous_charge_id"] = charges[0]
        if charges[1] is not None:
            obj["provider_charge_id"] = charges[1]
        event = CloudEvent(
            {
                "id": "e1",
                "source": "/t",
                "type": "com.paystream.payment.failed",
                "tenantid": "t",
                "time": datetime.now(UTC),
            },
            {
                "tenant_id": "t",
                "command_id": "c",
                "previous_status": "failed",
                "object": obj,
                "error": {"code": "card_declined"},
                **extra,
            },
        )
        return _seen(event)

    assert refreshed("card_declined", "card_declined", (None, None)).declined == 0
    assert refreshed("insufficient_funds", "card_declined", (None, None)).declined == 100
    assert refreshed("card_declined", "card_declined", (None, "ch_2")).declined == 0
    assert refreshed("card_declined", "card_declined", ("ch_1", "ch_2")).declined == 100
    assert refreshed("insufficient_funds", "card_declined", ("ch_1", "ch_1")).declined == 0


async def test_card_declines_on_attach_reach_the_fraud_rules(harness: Harness) -> None:
    """Card testing by saving cards to one customer (a card is checked as it is saved)."""
    t = harness.add_tenant()
    out = await harness.send("customer.create", t, {"customer_id": "cus_ct"})
    assert kind(out) == "customer.created", data(out)
    st, cfg = TenantInsights(t), InsightsConfig()
    alerts: list[Alert] = []
    for n in range(30):
        out = await harness.send(
            "payment_method.attach",
            t,
            {
                "customer_id": "cus_ct",
                "token": "tok_chargeDeclined",
                "payment_method_id": f"pm_{n}",
            },
        )
        assert kind(out) == "payment_method.attach_failed", data(out)
        assert data(out)["customer_id"] == "cus_ct"
        seen = _seen(out)
        assert (seen.attempt, seen.card_declined, seen.declined) == (True, True, 0)
        alerts += st.apply(seen, cfg)
    assert [(a.rule, a.subject) for a in alerts] == [
        ("subject_declines", "cus_ct"),
        ("decline_burst", t),
    ]


async def test_declines_padded_with_free_attempts_still_raise_a_burst(harness: Harness) -> None:
    """Each declined one-off token padded with two payments left waiting on 3-D Secure
    (no money moves): the declines stay a third of the attempts, and the flood rule
    fires at its count."""
    t = harness.add_tenant()
    st, cfg = TenantInsights(t), InsightsConfig(flood_declines=40)
    alerts: list[Alert] = []
    card = {"amount": 100, "currency": "USD"}
    for _ in range(45):
        for _ in range(2):
            pad = await harness.send(
                "payment.create",
                t,
                {**card, "payment_method_token": "pm_card_authenticationRequired"},
            )
            assert kind(pad) == "payment.requires_action", data(pad)
            alerts += st.apply(_seen(pad), cfg)
        out = await harness.send(
            "payment.create", t, {**card, "payment_method_token": "tok_chargeDeclined"}
        )
        assert kind(out) == "payment.failed", data(out)
        alerts += st.apply(_seen(out), cfg)
    assert [(a.rule, a.threshold, a.observed) for a in alerts] == [("decline_burst", 40, 40)]


def test_a_burst_under_half_the_attempts_below_the_flood_raises_nothing() -> None:
    """The share rule as it was: many honest attempts, a few declines."""
    st, cfg = TenantInsights("t"), InsightsConfig()
    alerts: list[Alert] = []
    for n in range(90):
        declined = n % 3 == 0
        seen = Observed(
            event_id=f"e{n}", tenant_id="t", outcome="payment.failed" if declined else
            "payment.authorized", time_ms=1_000_000, attempt=True, answered=True,
            card_declined=declined,
        )  # fmt: skip
        alerts += st.apply(seen, cfg)
    assert alerts == []


async def test_saving_cards_at_an_ordinary_decline_rate_raises_no_burst(harness: Harness) -> None:
    """300 customers save a card in a window, every 10th declined, and 20 payments all
    succeed: a saved card is an attempt too (review h59e: counted alone, the declined
    saves read as 60% of the attempts)."""

    t = harness.add_tenant()
    saved, declined = await _saves(harness, t)
    card = {"amount": 1000, "currency": "USD", "payment_method_token": "pm_card_visa"}
    pay = await harness.send("payment.create", t, card)
    assert kind(pay) == "payment.succeeded", data(pay)
    paid = _seen(pay)
    assert saved.attempt and not saved.card_declined
    st, cfg = TenantInsights(t), InsightsConfig()
    alerts: list[Alert] = []
    for n in range(300):
        base = declined if n % 10 == 0 else saved
        seen = dataclasses.replace(base, event_id=f"s{n}", customer_id=f"cus_{n}")
        alerts += st.apply(seen, cfg)
    for n in range(20):
        alerts += st.apply(dataclasses.replace(paid, event_id=f"p{n}"), cfg)
    assert alerts == []


def test_a_busy_merchant_at_an_ordinary_decline_rate_raises_no_flood() -> None:
    """2,000 payments in a window (3.3 a second), 5% declined: no card testing (review
    h59e: the flood rule at any share alerted every window)."""
    st, cfg = TenantInsights("t"), InsightsConfig()
    alerts: list[Alert] = []
    for n in range(2000):
        declined = n % 20 == 0
        seen = Observed(
            event_id=f"e{n}", tenant_id="t",
            outcome="payment.failed" if declined else "payment.succeeded",
            time_ms=1_000_000, attempt=True, answered=True, card_declined=declined,
        )  # fmt: skip
        alerts += st.apply(seen, cfg)
    assert alerts == []


async def test_a_charge_id_is_stored_for_a_failed_payment_only(harness: Harness) -> None:
    """A record with a field an earlier version does not know is refused by it (entity
    records forbade unknown fields until this version): the charge id is written only
    where the rules need it, on a failed payment (review h59e: a rolling upgrade)."""
    from paystream.tables.records import PaymentRecord

    t = harness.add_tenant()
    card = {"amount": 900, "currency": "USD", "payment_method_token": "pm_card_visa"}
    out = await harness.send("payment.create", t, {**card, "payment_id": "pay_ok"})
    assert kind(out) == "payment.succeeded"
    stored = harness.tables.payments[f"{t}:pay_ok"]
    assert "provider_charge_id" not in stored and "provider_charge_id" not in data(out)["object"]
    # And this version reads what a later one adds.
    assert PaymentRecord.model_validate({**stored, "a_later_field": 1}).id == "pay_ok"


async def test_declines_padded_five_to_one_with_free_3ds_attempts_raise_a_burst(
    harness: Harness,
) -> None:
    """Each declined one-off token padded with five payments left waiting on 3-D Secure
    (no issuer asked, no money): 1/6 of all attempts, but every attempt the issuer
    answered: the flood rule counts only those (review h59g)."""
    t = harness.add_tenant()
    cfg = InsightsConfig(flood_declines=40)
    st = TenantInsights(t)
    card = {"amount": 100, "currency": "USD"}
    pad = await harness.send(
        "payment.create", t, {**card, "payment_method_token": "pm_card_authenticationRequired"}
    )
    assert kind(pad) == "payment.requires_action", data(pad)
    bad = await harness.send(
        "payment.create", t, {**card, "payment_method_token": "tok_chargeDeclined"}
    )
    assert kind(bad) == "payment.failed", data(bad)
    padded, declined = _seen(pad), _seen(bad)
    alerts: list[Alert] = []
    for n in range(45):
        for m in range(5):
            alerts += st.apply(dataclasses.replace(padded, event_id=f"p{n}.{m}"), cfg)
        alerts += st.apply(dataclasses.replace(declined, event_id=f"d{n}"), cfg)
    assert [a.rule for a in alerts] == ["decline_burst"], alerts


async def test_an_honest_batch_refresh_of_3ds_payments_raises_no_burst(harness: Harness) -> None:
    """600 3-D Secure payments in one window, 5% (30) declined by the issuer after
    authentication, read back in a batch in a quiet window with 40 new payments: each
    decline read back is an attempt of its window too (review h59g: counted as declines
    alone there, 30 of 40 attempts, an ordinary 5% read as a card-testing burst)."""
    t = harness.add_tenant()
    provider_id = await _waiting(harness, t, "pay_3ds")
    sim = _simulator(harness, t)
    # The customer authenticates; the issuer then declines (insufficient funds).
    await _browser_sets(
        sim, provider_id, "auth", status="failed", charge_id="ch_1",
        failure_code="insufficient_funds", failure_message="Your card has insufficient funds.",
    )  # fmt: skip
    out = await harness.send("payment.refresh", t, {"payment_id": "pay_3ds"})
    assert kind(out) == "payment.failed" and data(out)["previous_status"] == "requires_action"
    read_back = _seen(out)
    assert read_back.card_declined and read_back.attempt and read_back.answered
    ok = await harness.send(
        "payment.create", t,
        {"amount": 100, "currency": "USD", "payment_method_token": "pm_card_visa"},
    )  # fmt: skip
    paid = _seen(ok)
    assert paid.attempt
    cfg = InsightsConfig()
    st = TenantInsights(t)
    day = 1_800_000_000_000 - 1_800_000_000_000 % cfg.fraud_window_ms
    alerts: list[Alert] = []
    for n in range(600):  # window 1: the day's 3-D Secure payments, all attempts
        seen = dataclasses.replace(
            paid, event_id=f"a{n}", time_ms=day + n, outcome="payment.requires_action", captured=0
        )
        alerts += st.apply(seen, cfg, day + n)
    later = day + cfg.fraud_window_ms
    for n in range(40):  # window 2: a quiet hour, 40 payments
        seen = dataclasses.replace(paid, event_id=f"b{n}", time_ms=later + n)
        alerts += st.apply(seen, cfg, later + n)
    for n in range(30):  # ... and the batch refresh: 5% of the 600 declined
        seen = dataclasses.replace(
            read_back,
            event_id=f"r{n}",
            time_ms=later + 100 + n,
            customer_id=None,
            payment_method_id=None,
        )
        alerts += st.apply(seen, cfg, later + 100 + n)
    assert alerts == [], [(a.rule, a.threshold, a.observed) for a in alerts]


_CARD = {"amount": 100, "currency": "USD"}


async def _samples(harness: Harness, t: str) -> dict[str, Observed]:
    out = {}
    for name, tok in (
        ("waiting", "pm_card_authenticationRequired"),
        ("paid", "pm_card_visa"),
        ("declined", "tok_chargeDeclined"),
    ):
        res = await harness.send("payment.create", t, {**_CARD, "payment_method_token": tok})
        out[name] = _seen(res)
    assert kind_of(out) == ("payment.requires_action", "payment.succeeded", "payment.failed")
    return out


def kind_of(s: dict[str, Observed]) -> tuple[str, ...]:
    return tuple(s[k].outcome for k in ("waiting", "paid", "declined"))


async def test_a_record_of_the_previous_version_raises_no_flood_at_an_ordinary_rate(
    harness: Harness,
) -> None:
    """Rolling upgrade mid-window: the open fraud window was written by an earlier
    version (no "answered" key): 1,800 attempts, 90 declines (5%), then 200 more
    payments at the same 5%: no card testing (review h59i: read as 0 answered)."""
    t = harness.add_tenant()
    s = await _samples(harness, t)
    cfg = InsightsConfig()
    at = _window_start(cfg)
    old_record = {
        "through": 10,
        "partition": 0,
        "windows": {},
        "fraud": {str(at): {"attempts": 1800, "declines": 90, "by": {}, "alerted": [],
                            "untracked": 0}},
        "evicted": -1,
        "fraud_evicted": -1,
        "stream": at + 1000,
    }  # fmt: skip
    st = TenantInsights.load(t, old_record, at + 1000)
    alerts: list[Alert] = []
    for n in range(200):
        base = s["declined"] if n % 20 == 0 else s["paid"]
        seen = dataclasses.replace(base, event_id=f"n{n}", time_ms=at + 2000 + n,
                                   customer_id=None, payment_method_id=None)  # fmt: skip
        alerts += st.apply(seen, cfg, at + 2000 + n)
    assert alerts == [], [(a.rule, a.threshold, a.observed) for a in alerts]


async def test_a_3ds_heavy_merchant_at_an_ordinary_decline_rate_raises_no_flood(
    harness: Harness,
) -> None:
    """2,000 payments in ten minutes, 5% declined at creation (100), 85% waiting on
    3-D Secure (no answer read back in the window), 10% frictionless: an ordinary 5%
    (review h59i: a third of the few answered ones read as a flood)."""
    t = harness.add_tenant()
    s = await _samples(harness, t)
    cfg = InsightsConfig()
    st = TenantInsights(t)
    at = _window_start(cfg)
    alerts: list[Alert] = []
    for n in range(2000):
        base = s["declined"] if n % 20 == 0 else s["paid"] if n % 20 < 3 else s["waiting"]
        seen = dataclasses.replace(base, event_id=f"e{n}", time_ms=at + n,
                                   customer_id=None, payment_method_id=None)  # fmt: skip
        alerts += st.apply(seen, cfg, at + n)
    assert alerts == [], [(a.rule, a.threshold, a.observed) for a in alerts]


async def test_card_testing_padded_with_free_card_saves_raises_a_burst(harness: Harness) -> None:
    """The tester saves its own good card five times per tested one-off token (no money
    moves): a save is no answered payment attempt (review h59i)."""
    t = harness.add_tenant()
    padded, _ = await _saves(harness, t)
    assert (padded.attempt, padded.answered, padded.card_declined) == (True, False, False)
    declined = (await _samples(harness, t))["declined"]
    cfg = InsightsConfig()
    st = TenantInsights(t)
    at = _window_start(cfg)
    alerts: list[Alert] = []
    for n in range(120):
        for m in range(5):
            alerts += st.apply(dataclasses.replace(padded, event_id=f"p{n}.{m}",
                                                   time_ms=at + n), cfg, at + n)  # fmt: skip
        alerts += st.apply(dataclasses.replace(declined, event_id=f"d{n}", time_ms=at + n,
                                               customer_id=None, payment_method_id=None),
                           cfg, at + n)  # fmt: skip
    assert [a.rule for a in alerts] == ["decline_burst"], "120 tested cards, no alert"


async def test_a_processing_error_is_no_issuers_answer(harness: Harness) -> None:
    """A provider's processing_error is no issuer's answer (review h59i)."""
    t = harness.add_tenant()
    out = await harness.send(
        "payment.create", t, {**_CARD, "payment_method_token": "tok_chargeDeclinedProcessingError"}
    )
    assert kind(out) == "payment.failed" and data(out)["error"]["code"] == "processing_error"
    seen = _seen(out)
    assert seen.attempt and not seen.card_declined
    assert not seen.answered


async def test_trial_sign_ups_at_a_13pct_save_decline_rate_raise_no_flood(
    harness: Harness,
) -> None:
    """Cards saved at sign-up, charged later: save declines are held to saves, not to
    the window's few answered payments (review h59k: against none, a flood)."""
    t = harness.add_tenant()
    saved, declined = await _saves(harness, t)
    cfg = InsightsConfig()
    st = TenantInsights(t)
    at = _window_start(cfg)
    alerts: list[Alert] = []
    alerts += _sign_ups(st, cfg, at, saved, declined)
    fw = next(iter(st.fraud.values()))
    assert alerts == [], (
        [(a.rule, a.threshold, a.observed) for a in alerts],
        {k: fw[k] for k in ("attempts", "answered", "declines")},
    )


async def test_card_testing_split_between_payments_and_saves_raises_a_flood(
    harness: Harness,
) -> None:
    """198 one-off cards tested in ten minutes, half as payments and half as card saves,
    each padded with five payments left waiting on 3-D Secure: the flood counts both
    (review h59m: each kind alone under its 100, nothing raised)."""
    t = harness.add_tenant()
    s = await _samples(harness, t)
    _, save_declined = await _saves(harness, t)
    cfg = InsightsConfig()
    st = TenantInsights(t)
    at = _window_start(cfg)
    alerts: list[Alert] = []
    for n in range(198):
        for m in range(5):
            pad = dataclasses.replace(s["waiting"], event_id=f"p{n}.{m}", time_ms=at + n,
                                      customer_id=None, payment_method_id=None)  # fmt: skip
            alerts += st.apply(pad, cfg, at + n)
        base = s["declined"] if n % 2 else save_declined
        seen = dataclasses.replace(base, event_id=f"d{n}", time_ms=at + n,
                                   customer_id=None, payment_method_id=None)  # fmt: skip
        alerts += st.apply(seen, cfg, at + n)
    fw = next(iter(st.fraud.values()))
    assert [a.rule for a in alerts] == ["decline_burst"], {
        k: fw.get(k) for k in ("attempts", "answered", "saves", "declines", "save_declines")
    }


async def test_sign_ups_at_13pct_beside_3ds_payments_at_10pct_raise_no_flood(
    harness: Harness,
) -> None:
    """A sign-up flow (1,000 saves, 13% declined) beside 300 payments, 10% declined at
    creation, half waiting on 3-D Secure: the saves' declines, under their share, add
    nothing to the flood's count (review h59o: together 160, an alert)."""
    t = harness.add_tenant()
    saved, declined = await _saves(harness, t)
    s = await _samples(harness, t)
    cfg = InsightsConfig()
    st = TenantInsights(t)
    at = _window_start(cfg)
    alerts: list[Alert] = []
    alerts += _sign_ups(st, cfg, at, saved, declined)
    for n in range(300):
        base = s["declined"] if n % 10 == 0 else s["waiting"] if n % 10 < 6 else s["paid"]
        seen = dataclasses.replace(base, event_id=f"p{n}", time_ms=at + 1000 + n,
                                   customer_id=f"cp_{n}", payment_method_id=None)  # fmt: skip
        alerts += st.apply(seen, cfg, at + 1000 + n)
    fw = next(iter(st.fraud.values()))
    assert alerts == [], (
        [(a.rule, a.threshold, a.observed) for a in alerts],
        {k: fw.get(k) for k in ("attempts", "answered", "saves", "declines", "save_declines")},
    )
