"""Payouts review h74g, fixed: a payout canceled or failed is final (its refresh answered
`payout.updated` from its record, so the outcome that gave its amount back is emitted
once, a webhook's sealed refresh included: review h81rb F1), a paid one stays readable;
a payout's statement descriptor holds to Stripe's rules (a letter, no control or format
characters); the simulator's balance lives on while it is read; the README's tenant
limits table is one table."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from paystream.client import build_command
from paystream.gateways import base as gw
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.ids import derived_id
from paystream.money import Money
from paystream.origin_seal import ORIGIN_HEADER, OriginSeals
from paystream.settings import CloudEventsMode
from paystream.streams.codec import encode_event
from paystream.tenancy.crypto import MasterKey
from tests.agents.conftest import running_harness
from tests.agents.harness import Harness, Inbound, data, kind, outcome_of
from tests.agents.test_payouts import DAY, _balance, _gateway, _payout_effects, _settled

pytestmark = pytest.mark.asyncio
README = Path(__file__).resolve().parents[2] / "README.md"
_CLOSED = "000111111113"  # Stripe's test account number: account_closed at arrival


@pytest_asyncio.fixture
async def keyed(redis_url: str) -> AsyncIterator[Harness]:
    """A harness with a master key: it can seal a webhook's refresh as paystream's own."""
    key = base64.b64encode(MasterKey.generate().key).decode()
    async with running_harness(redis_url, master_key=key) as h:
        yield h


async def _failed(h: Harness, t: str) -> None:
    """Payout po1 of 4000 made to a closed account and read back failed."""
    await _settled(h, t, 5000)
    await h.send("payout.create", t, {"payout_id": "po1", "amount": 4000, "currency": "EUR"})
    await _gateway(h, t).advance_clock(2 * DAY)
    failed = await h.send("payout.refresh", t, {"payout_id": "po1"})
    assert kind(failed) == "payout.failed", data(failed)
    assert data(failed)["error"]["decline_code"] == "account_closed"


# ---- a canceled or failed payout is final: its refresh answers from the record -------


async def test_a_refresh_of_a_canceled_payout_is_not_a_second_payout_canceled(
    harness: Harness,
) -> None:
    """payout.canceled says "its amount is available again": emitted once (a refresh
    emitted it again, and again; review h74g 1). Answered `payout.updated` from the
    record before the provider is asked (it was refused `invalid_state`: review h81rb)."""
    t = harness.add_tenant()
    await _settled(harness, t, 5000)
    await harness.send("payout.create", t, {"payout_id": "po1", "amount": 100, "currency": "EUR"})
    first = await harness.send("payout.cancel", t, {"payout_id": "po1"})
    assert kind(first) == "payout.canceled", data(first)
    again = await harness.send("payout.refresh", t, {"payout_id": "po1"})
    assert kind(again) == "payout.updated", data(again)
    assert data(again)["previous_status"] == "canceled", data(again)
    assert harness.tables.payouts[f"{t}:po1"]["status"] == "canceled"
    assert await _balance(harness, t) == {"EUR": (5000, 0)}
    effects = [e.kind for e in await _payout_effects(harness, t)]
    assert effects == ["payout.created", "payout.canceled"]


async def test_a_refresh_of_a_failed_payout_is_not_a_second_payout_failed(
    harness: Harness,
) -> None:
    t = harness.add_tenant(gateway_options={"payout_destination": _CLOSED})
    await _failed(harness, t)
    for _ in range(2):
        again = await harness.send("payout.refresh", t, {"payout_id": "po1"})
        assert kind(again) == "payout.updated", data(again)
        assert data(again)["previous_status"] == "failed", data(again)
    assert await _balance(harness, t) == {"EUR": (5000, 0)}
    assert [e.kind for e in await _payout_effects(harness, t)] == [
        "payout.created",
        "payout.failed",
    ]


async def test_a_final_payout_is_answered_before_its_provider_is_asked(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = harness.add_tenant()
    await _settled(harness, t, 5000)
    await harness.send("payout.create", t, {"payout_id": "po1", "amount": 100, "currency": "EUR"})
    await harness.send("payout.cancel", t, {"payout_id": "po1"})
    asked: list[object] = []

    async def retrieve_payout(req: object, **kw: object) -> object:
        asked.append(req)
        raise AssertionError("asked")

    monkeypatch.setattr(_gateway(harness, t), "retrieve_payout", retrieve_payout)
    out = await harness.send("payout.refresh", t, {"payout_id": "po1"})
    assert kind(out) == "payout.updated", data(out)
    assert asked == []


async def test_a_paid_payout_stays_readable(harness: Harness) -> None:
    """Paid is not final (a bank may return a payout marked paid): read again, it
    answers payout.paid again, `previous_status` paid, as a succeeded payment does."""
    t = harness.add_tenant()
    await _settled(harness, t, 5000)
    await harness.send("payout.create", t, {"payout_id": "po1", "amount": 100, "currency": "EUR"})
    await _gateway(harness, t).advance_clock(2 * DAY)
    paid = await harness.send("payout.refresh", t, {"payout_id": "po1"})
    assert kind(paid) == "payout.paid", data(paid)
    again = await harness.send("payout.refresh", t, {"payout_id": "po1"})
    assert kind(again) == "payout.paid", data(again)
    assert data(again)["previous_status"] == "paid"
    assert "error" not in data(again)


async def test_a_paid_payout_returned_by_the_bank_reads_back_failed_once(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """paid -> failed (the simulator never makes it; Stripe can): a refresh of the paid
    payout reads the failure, with its `error`; the next is answered from the record."""
    t = harness.add_tenant()
    await _settled(harness, t, 5000)
    await harness.send("payout.create", t, {"payout_id": "po1", "amount": 100, "currency": "EUR"})
    await _gateway(harness, t).advance_clock(2 * DAY)
    paid = await harness.send("payout.refresh", t, {"payout_id": "po1"})
    assert kind(paid) == "payout.paid", data(paid)
    po = data(paid)["object"]

    async def returned(req: gw.RetrievePayout, **kw: object) -> gw.PayoutResult:
        return gw.PayoutResult(
            provider_payout_id=po["provider_payout_id"],
            status=gw.PayoutStatus.FAILED,
            amount=Money(amount=100, currency="EUR"),
            method="standard",
            arrival_date=po["arrival_date"],
            failure_code="account_closed",
            failure_message="The bank account has been closed.",
        )

    monkeypatch.setattr(_gateway(harness, t), "retrieve_payout", returned)
    failed = await harness.send("payout.refresh", t, {"payout_id": "po1"})
    assert kind(failed) == "payout.failed", data(failed)
    assert data(failed)["previous_status"] == "paid"
    assert data(failed)["error"]["decline_code"] == "account_closed"
    again = await harness.send("payout.refresh", t, {"payout_id": "po1"})
    assert kind(again) == "payout.updated", data(again)
    assert "error" not in data(again)


async def test_a_refresh_that_failed_the_payout_redelivered_after_a_crash_is_answered_alike(
    harness: Harness,
) -> None:
    """The payout's record was written failed but the idempotency record was lost (a
    crash before the offset's commit): the redelivery is the same payout.failed, from
    the payout's memory of the command, not the `payout.updated` a new refresh gets."""
    t = harness.add_tenant(gateway_options={"payout_destination": _CLOSED})
    await _settled(harness, t, 5000)
    await harness.send("payout.create", t, {"payout_id": "po1", "amount": 4000, "currency": "EUR"})
    await _gateway(harness, t).advance_clock(2 * DAY)
    command = build_command("payout.refresh", t, {"payout_id": "po1"}, command_id="pr-1")
    first, out = await harness.send_event(command, offset=91)
    assert out is not None and kind(out) == "payout.failed", data(out)
    del harness.idempotency[f"{t}:pr-1"]
    again, out_again = await harness.send_event(command, offset=91)
    assert out_again is not None
    [sent] = [e.record for e in first if e.topic == harness.settings.events_topic]
    [resent] = [e.record for e in again if e.topic == harness.settings.events_topic]
    assert (resent.value, sorted(resent.headers)) == (sent.value, sorted(sent.headers))
    assert await _balance(harness, t) == {"EUR": (5000, 0)}


@pytest.mark.parametrize("final", ["canceled", "failed"])
async def test_a_webhooks_sealed_refresh_of_a_final_payout_is_answered_from_its_record(
    keyed: Harness, final: str
) -> None:
    """Stripe's payout.* webhooks bring sealed payout.refresh commands (as its payment
    and refund events do), and Stripe sends an event again: one about a payout already
    final here (the echo of paystream's own cancel, read before it was recorded) is
    answered payout.updated from the record, once per event (its retry answered from the
    idempotency record), with nothing dead-lettered or parked, no money moved, no
    second payout.canceled or payout.failed, and no command.rejected of a command the
    tenant never sent (it was one: review h81rb F1)."""
    h = keyed
    options = {"payout_destination": _CLOSED} if final == "failed" else {}
    t = h.add_tenant(gateway_options=options)
    if final == "failed":
        await _failed(h, t)
    else:
        await _settled(h, t, 5000)
        await h.send("payout.create", t, {"payout_id": "po1", "amount": 4000, "currency": "EUR"})
        assert kind(await h.send("payout.cancel", t, {"payout_id": "po1"})) == "payout.canceled"
    effects = await _payout_effects(h, t)

    event = build_command(
        "payout.refresh",
        t,
        {"payout_id": "po1"},
        command_id=derived_id("whk", "stripe", t, "evt_payout_1"),
        source="/paystream/webhooks/stripe",
    )
    rec = encode_event(event, t.encode(), CloudEventsMode.BINARY)
    headers = dict(rec.headers)
    headers[ORIGIN_HEADER] = OriginSeals.from_settings(h.settings).seal(rec.key, rec.value, headers)
    answers = []
    for offset in (40, 41):  # the event, and Stripe's retry of it
        now_ms = int(time.time() * 1000)
        inbound = Inbound(rec.key, rec.value, headers, now_ms, h.settings.commands_topic, 0, offset)
        emits = await h.raw(inbound)
        assert {e.topic for e in emits} == {h.settings.events_topic}, emits
        out = outcome_of(h.settings, emits)
        assert out is not None and kind(out) == "payout.updated", out and data(out)
        assert data(out)["previous_status"] == final, data(out)
        answers.append(data(out))
    assert answers[0] == answers[1]
    assert h.tables.payouts[f"{t}:po1"]["status"] == final
    assert await _balance(h, t) == {"EUR": (5000, 0)}
    assert await _payout_effects(h, t) == effects


# ---- statement_descriptor: Stripe's rules ---------------------------------------------


@pytest.mark.parametrize(
    "descriptor",
    [
        "12345",  # digits only: Stripe's descriptors need a letter
        "12-34 / 56",  # no letter at all
        "\x00PAYOUT",  # a NUL byte, for a bank file's descriptor field
        "PAY\nOUT",  # a line break inside
        "ACME\u202eTUOYAP",  # a right-to-left override: shows as another text
        "ACME\u200bPAY",  # a zero-width space
        "ACME\u2028PAY",  # a line separator
    ],
)
async def test_a_statement_descriptor_without_a_letter_or_with_control_characters_is_refused(
    harness: Harness, descriptor: str
) -> None:
    t = harness.add_tenant()
    await _settled(harness, t, 5000)
    out = await harness.send(
        "payout.create", t, {"amount": 10, "currency": "EUR", "statement_descriptor": descriptor}
    )
    assert data(out).get("reason") == "validation_error", (descriptor, kind(out), data(out))
    assert await _payout_effects(harness, t) == []


@pytest.mark.parametrize(
    "descriptor", ["ACME", "ACME 2024-06", "Payout * June", "X" * 22, "Café 7"]
)
async def test_a_statement_descriptor_with_a_letter_is_taken(
    harness: Harness, descriptor: str
) -> None:
    t = harness.add_tenant()
    await _settled(harness, t, 5000)
    out = await harness.send(
        "payout.create", t, {"amount": 10, "currency": "EUR", "statement_descriptor": descriptor}
    )
    assert kind(out) == "payout.created", (descriptor, data(out))
    assert data(out)["object"]["statement_descriptor"] == descriptor


@pytest.mark.parametrize("descriptor", ["12345", "\x00PAYOUT", "ACME\u202eTUOYAP", "x" * 23])
async def test_the_simulator_refuses_such_a_descriptor_as_its_provider_would(
    harness: Harness, descriptor: str
) -> None:
    """The simulator's own rule (one shared with the command's): a request that skipped
    the command's validation is refused there, invalid request, and nothing is paid."""
    t = harness.add_tenant()
    await _settled(harness, t, 5000)
    req = gw.CreatePayout(
        amount=Money(amount=10, currency="EUR"),
        method="standard",
        statement_descriptor=descriptor,
    )
    with pytest.raises(GatewayError) as raised:
        await _gateway(harness, t).create_payout(req, idempotency_key=f"k-{len(descriptor)}")
    assert raised.value.code is ErrorCode.INVALID_REQUEST, raised.value
    assert "statement_descriptor" in raised.value.message
    assert await _payout_effects(harness, t) == []


# ---- the simulator: a balance read keeps the balance (and the clock) alive ------------


async def test_a_balance_read_keeps_the_balance_and_the_clock_alive(harness: Harness) -> None:
    """Objects a commit reads get their state TTL again ("in use: lives on"); the
    balance hash got it only when money moved, so a tenant that only read its balance
    lost its available money once the TTL ran out (review h74g 3)."""
    t = harness.add_tenant()
    await _settled(harness, t, 5000)
    store = _gateway(harness, t)._store
    for key in (store._balance_key, store._clock_key):
        await harness.redis.expire(key, 100)  # (as if money last moved long ago)
    assert await _balance(harness, t) == {"EUR": (5000, 0)}
    for key in (store._balance_key, store._clock_key):
        assert await harness.redis.ttl(key) > 100, key
    # A payout's balance check (a read inside the payout's commit) keeps it too.
    await harness.redis.expire(store._balance_key, 100)
    made = await harness.send("payout.create", t, {"amount": 10, "currency": "EUR"})
    assert kind(made) == "payout.created", data(made)
    assert await harness.redis.ttl(store._balance_key) > 100


# ---- README: the tenant limits table is one table -------------------------------------


async def test_readme_limits_table_is_one_table_with_every_limit() -> None:
    """The payout paragraph was put between rows of the limits table: the rows after it
    (pending_payments, only_listed_currencies) no longer rendered as table rows."""
    lines = README.read_text().splitlines()
    start = lines.index("| limit | over it | data on the rejection |")
    end = next(n for n in range(start, len(lines)) if not lines[n].startswith("|"))
    table = "\n".join(lines[start:end])
    for limit in (
        "`commands_per_second`",
        "`max_payment_amount`",
        "`daily_payment_volume`",
        "`limit: pending_payments`",
        "`only_listed_currencies`",
    ):
        assert limit in table, (limit, table)
    assert all(line.count("|") == 4 for line in lines[start:end]), table
    # The payout paragraph is still there, after the table.
    assert any(line.startswith("A `payout.create` is not a payment") for line in lines[end:])
