"""A tenant's ``daily_transfer_volume`` (review h79 L5: a leaked key could move the
platform's whole available balance to one of its connected accounts), through the
pipeline on the real simulator: a transfer over the day's cap refused `quota_exceeded`
before any provider call; held and counted as the daily payment volume is (a
redelivery, a resend under another command id, a parked transfer re-driven, an answer
whose limits write a crash lost: each counted once); a volume of its own (transfers and
payments never count toward each other's); a reversal gives nothing back;
unset, unlimited; ``only_listed_currencies`` honoured."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from paystream.tenancy.limits import TenantLimits
from tests.agents.harness import Harness, data, kind, new_tenant_id
from tests.agents.outflow_records import OFFSETS, T0, command_record, run, send
from tests.agents.test_transfers import _account, _paid, _rejected, _tr, _transfers

pytestmark = pytest.mark.asyncio


async def _setup(h: Harness, limits: dict[str, Any], **kw: Any) -> tuple[str, str, str]:
    """A tenant with ``limits``, an enabled account and a 10 000 USD-cent payment."""
    t = h.add_tenant(new_tenant_id(), limits=limits, **kw)
    acct = await _account(h, t)
    pay = await _paid(h, t)
    return t, str(acct["id"]), str(pay["id"])


async def test_over_the_days_cap_is_refused_before_any_call(harness: Harness) -> None:
    t, acct, pay = await _setup(harness, {"daily_transfer_volume": {"USD": 1_000}})
    first = await send(harness, t, "transfer.create", _tr(acct, 600, payment_id=pay))
    assert kind(first) == "transfer.created", data(first)
    over = await send(harness, t, "transfer.create", _tr(acct, 401, payment_id=pay))
    message = _rejected(over, "quota_exceeded")
    assert "over its daily limit of 10.00 USD" in message, message
    extra = {k: data(over)[k] for k in ("limit", "currency", "allowed", "used", "held")}
    assert extra == {"limit": "daily_transfer_volume", "currency": "USD", "allowed": 1_000,
                     "used": 600, "held": 0}  # fmt: skip
    assert await _transfers(harness, t) == [("transfer.created", 600)]  # (no call)
    fits = await send(harness, t, "transfer.create", _tr(acct, 400, payment_id=pay))
    assert kind(fits) == "transfer.created", data(fits)


async def test_a_reversal_gives_the_days_volume_nothing_back(harness: Harness) -> None:
    t, acct, pay = await _setup(harness, {"daily_transfer_volume": {"USD": 1_000}})
    made = await send(harness, t, "transfer.create", _tr(acct, 1_000, payment_id=pay))
    assert kind(made) == "transfer.created", data(made)
    back = await send(harness, t, "transfer.reverse", {"transfer_id": data(made)["object"]["id"]})
    assert kind(back) == "transfer.reversed", data(back)
    over = await send(harness, t, "transfer.create", _tr(acct, 1, payment_id=pay))
    assert data(over)["limit"] == "daily_transfer_volume", data(over)


async def test_a_redelivery_or_a_resend_counts_once(harness: Harness) -> None:
    t, acct, pay = await _setup(harness, {"daily_transfer_volume": {"USD": 1_000}})
    body = _tr(acct, 600, payment_id=pay)
    record = command_record(
        "transfer.create", t, body, "tr-a", T0, next(OFFSETS), idempotency_key="k1"
    )
    _, out = await run(harness, record)
    assert kind(out) == "transfer.created", data(out)
    _, again = await run(harness, record)  # redelivered: the same record
    assert data(again) == data(out)
    # The same request under another command id (a client resending): its answer.
    resent = command_record(
        "transfer.create", t, body, "tr-b", T0, next(OFFSETS), idempotency_key="k1"
    )
    _, answered = await run(harness, resent)
    assert data(answered)["object"] == data(out)["object"]
    assert await _transfers(harness, t) == [("transfer.created", 600)]
    fits = await send(harness, t, "transfer.create", _tr(acct, 400, payment_id=pay))
    assert kind(fits) == "transfer.created", data(fits)
    over = await send(harness, t, "transfer.create", _tr(acct, 1, payment_id=pay))
    assert data(over)["used"] == 1_000, data(over)


async def test_an_answer_whose_limits_write_was_lost_counts_once(harness: Harness) -> None:
    t, acct, pay = await _setup(harness, {"daily_transfer_volume": {"USD": 1_000}})
    record = command_record("transfer.create", t, _tr(acct, 600, payment_id=pay), "tr-a", T0,
                     next(OFFSETS))  # fmt: skip
    key = f"{t}:limits"
    before = copy.deepcopy(harness.processor.limits.table.get(key))
    _, out = await run(harness, record)
    assert kind(out) == "transfer.created", data(out)
    # A crash kept the idempotency record but not the limits write.
    if before is None:
        del harness.processor.limits.table[key]
    else:
        harness.processor.limits.table[key] = before
    _, again = await run(harness, record)  # answered from the idempotency record
    assert data(again) == data(out)
    over = await send(harness, t, "transfer.create", _tr(acct, 401, payment_id=pay))
    assert (data(over)["limit"], data(over)["used"]) == ("daily_transfer_volume", 600)
    fits = await send(harness, t, "transfer.create", _tr(acct, 400, payment_id=pay))
    assert kind(fits) == "transfer.created", data(fits)


async def test_a_parked_transfer_holds_its_amount_until_answered(harness: Harness) -> None:
    t = new_tenant_id()  # (it names the key its provider fails three times: parked)
    harness.add_tenant(
        t,
        limits={"daily_transfer_volume": {"USD": 1_000}},
        gateway_options={"fail_first": {f"pse:{t}:transfer:tr-1": 3}},
    )
    acct = str((await _account(harness, t))["id"])
    pay = str((await _paid(harness, t))["id"])
    body = _tr(acct, 700, payment_id=pay, transfer_id="tr-1")
    parked = await harness.processor.process(
        command_record("transfer.create", t, body, "a", T0, 50)
    )
    assert [e.topic for e in parked] == [harness.settings.retry_topic]
    # While it is parked its 700 hold: 301 more is over the day's 1 000.
    over = await send(harness, t, "transfer.create", _tr(acct, 301, payment_id=pay))
    assert (data(over)["limit"], data(over)["held"]) == ("daily_transfer_volume", 700)
    # Re-driven (`dlq replay`): made, counted once, its hold released.
    _, out = await run(harness, command_record("transfer.create", t, body, "a", T0 + 1, 51))
    assert kind(out) == "transfer.created", data(out)
    fits = await send(harness, t, "transfer.create", _tr(acct, 300, payment_id=pay))
    assert kind(fits) == "transfer.created", data(fits)
    last = await send(harness, t, "transfer.create", _tr(acct, 1, payment_id=pay))
    assert (data(last)["used"], data(last)["held"]) == (1_000, 0), data(last)


async def test_a_chosen_id_made_and_sent_again_is_answered_not_refused(
    harness: Harness,
) -> None:
    # A transfer_id made, sent again under another idempotency key (a client that lost
    # its answer): its handler's "already exists", as without limits, never a quota
    # refusal saying it was not made (its client would move the money again under a new
    # id; review h80r F2, as h59f for payments).
    t, acct, pay = await _setup(harness, {"daily_transfer_volume": {"USD": 1_000}})
    body = _tr(acct, 700, payment_id=pay, transfer_id="tr-9")
    first = command_record("transfer.create", t, body, "a", T0, next(OFFSETS), idempotency_key="k1")
    _, made = await run(harness, first)
    assert kind(made) == "transfer.created", data(made)
    again = command_record("transfer.create", t, body, "b", T0, next(OFFSETS), idempotency_key="k2")
    _, answer = await run(harness, again)
    assert "tr-9 already exists" in _rejected(answer, "invalid_state")
    assert await _transfers(harness, t) == [("transfer.created", 700)]
    fits = await send(harness, t, "transfer.create", _tr(acct, 300, payment_id=pay))
    assert kind(fits) == "transfer.created", data(fits)


async def test_a_parked_chosen_id_sent_again_under_another_key_is_held_once(
    harness: Harness,
) -> None:
    # One transfer (its provider key is its id's), so one hold, whichever key sends it.
    t = new_tenant_id()
    harness.add_tenant(
        t,
        limits={"daily_transfer_volume": {"USD": 1_000}},
        gateway_options={"fail_first": {f"pse:{t}:transfer:tr-1": 3}},
    )
    acct = str((await _account(harness, t))["id"])
    pay = str((await _paid(harness, t))["id"])
    body = _tr(acct, 700, payment_id=pay, transfer_id="tr-1")
    parked = await harness.processor.process(
        command_record("transfer.create", t, body, "a", T0, 60, idempotency_key="k1")
    )
    assert [e.topic for e in parked] == [harness.settings.retry_topic]
    _, out = await run(
        harness, command_record("transfer.create", t, body, "b", T0 + 1, 61, idempotency_key="k2")
    )
    assert kind(out) == "transfer.created", data(out)
    fits = await send(harness, t, "transfer.create", _tr(acct, 300, payment_id=pay))
    assert kind(fits) == "transfer.created", data(fits)
    last = await send(harness, t, "transfer.create", _tr(acct, 1, payment_id=pay))
    assert (data(last)["used"], data(last)["held"]) == (1_000, 0), data(last)


async def test_transfers_and_payments_keep_volumes_of_their_own(harness: Harness) -> None:
    limits = {"daily_payment_volume": {"USD": 10_000}, "daily_transfer_volume": {"USD": 500}}
    t, acct, pay = await _setup(harness, limits)  # (its 10 000 payment: the day's payments)
    made = await send(harness, t, "transfer.create", _tr(acct, 500, payment_id=pay))
    assert kind(made) == "transfer.created", data(made)
    more = await send(
        harness,
        t,
        "payment.create",
        {"amount": 1, "currency": "USD", "payment_method_token": "pm_card_visa"},
    )
    assert data(more)["limit"] == "daily_payment_volume" and data(more)["used"] == 10_000
    over = await send(harness, t, "transfer.create", _tr(acct, 1, payment_id=pay))
    assert (data(over)["limit"], data(over)["used"]) == ("daily_transfer_volume", 500)


async def test_unset_transfers_are_unlimited_as_before(harness: Harness) -> None:
    # A payment volume alone (and only_listed_currencies) leaves transfers as they were.
    limits = {"daily_payment_volume": {"USD": 10_000}, "only_listed_currencies": True}
    t, acct, pay = await _setup(harness, limits)
    made = await send(harness, t, "transfer.create", _tr(acct, 10_000, payment_id=pay))
    assert kind(made) == "transfer.created", data(made)


async def test_only_listed_currencies_refuses_a_transfer_in_another(harness: Harness) -> None:
    limits = {"daily_transfer_volume": {"EUR": 1_000}, "daily_payment_volume": {"USD": 10**6},
              "only_listed_currencies": True}  # fmt: skip
    t, acct, pay = await _setup(harness, limits)
    out = await send(harness, t, "transfer.create", _tr(acct, 100, payment_id=pay))
    assert "transfers in USD are not allowed" in _rejected(out, "quota_exceeded")
    assert (data(out)["limit"], data(out)["allowed"]) == ("currencies", ["EUR"])
    # Without it, a currency the transfer volume does not name moves unlimited.
    t2, acct2, pay2 = await _setup(harness, {"daily_transfer_volume": {"EUR": 1_000}})
    made = await send(harness, t2, "transfer.create", _tr(acct2, 10_000, payment_id=pay2))
    assert kind(made) == "transfer.created", data(made)
    assert await _transfers(harness, t) == []


async def test_the_limit_is_validated_and_described() -> None:
    limits = TenantLimits(daily_transfer_volume={"usd": 50_000})
    assert limits.daily_transfer_volume == {"USD": 50_000} and limits.enforced
    assert "≤ 500.00 USD transferred per day" in limits.describe()
    with pytest.raises(ValueError, match="non-negative"):
        TenantLimits(daily_transfer_volume={"USD": -1})
    with pytest.raises(ValueError, match="given twice"):
        TenantLimits(daily_transfer_volume={"USD": 1, "usd": 2})
