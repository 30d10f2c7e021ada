"""A parked command holds the entities it reads against the retention sweep (review
h68p): the mark written once at park time, honoured within the provider's key window
(and a margin), not after, released by the command's finish, and kept over a crash (in
the tables, restored from their changelog)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aioredis
from cloudevents.core.v1.event import CloudEvent

from paystream.agents import entity_holds
from paystream.agents.handlers import Tables
from paystream.agents.pipeline import Emit, Inbound
from paystream.client import build_command
from paystream.gateways import base as gw
from paystream.gateways.simulator import SimulatorGateway
from paystream.money import Money
from paystream.settings import load_settings
from paystream.tables.next_action import public_row
from paystream.tables.retention import HOLD_FIELD, expired, last_change
from tests.agents.harness import Harness, data, kind, new_tenant_id, outcome_of

DAY = 86_400.0
RETENTION = 30 * DAY
TABLES = ("customers", "payment_methods", "payments", "refunds", "disputes", "subscriptions",
          "invoices", "payouts", "tax_rates", "tax_calculations", "connected_accounts",
          "transfers")  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class Logged(dict[str, Any]):
    """A table whose every write is kept in order, as its changelog has them."""

    def __init__(self, log: list[tuple[str, Any]]) -> None:
        super().__init__()
        self.log = log

    def __setitem__(self, key: str, value: Any) -> None:
        self.log.append((key, value))
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self.log.append((key, None))
        super().__delitem__(key)

    def pop(self, key: str, *default: Any) -> Any:
        if key in self:
            self.log.append((key, None))
        return super().pop(key, *default)


class Changelogs:
    """The changelog of every table, and the tables a worker recovers from them."""

    def __init__(self) -> None:
        self.logs: dict[str, list[tuple[str, Any]]] = {n: [] for n in (*TABLES, "idem")}

    def tables(self) -> tuple[Tables, Logged]:
        """Tables recovered from the changelogs as they stand (empty at first)."""
        made = {name: Logged(self.logs[name]) for name in self.logs}
        for name, table in made.items():
            for key, value in list(self.logs[name]):
                if value is None:
                    dict.pop(table, key, None)
                else:
                    dict.__setitem__(table, key, value)
        idem = made.pop("idem")
        return Tables(**made), idem  # type: ignore[arg-type]


@asynccontextmanager
async def worker(
    redis_url: str, logs: Changelogs, tenants: dict[str, Any]
) -> AsyncIterator[Harness]:
    """A worker (a processor) recovering its tables from ``logs``."""
    client = aioredis.from_url(redis_url)
    settings = load_settings(
        redis_url=redis_url,
        gateway_backoff_base_ms=1,
        gateway_max_attempts=3,
        entity_retention_seconds=int(RETENTION),
        park_late_commands=False,
    )
    tables, idem = logs.tables()
    h = Harness(settings=settings, redis=client, tenants=tenants, tables=tables, idempotency=idem)
    try:
        yield h
    finally:
        await h.pool.aclose()
        await client.aclose()


def _event(clock: Clock, tenant: str, command: str, body: dict[str, Any], cid: str) -> CloudEvent:
    event = build_command(command, tenant, body, command_id=cid, idempotency_key=f"k-{cid}")
    event.get_attributes()["time"] = datetime.fromtimestamp(clock.now, UTC)
    return event


def _entity_tables(h: Harness) -> Iterator[Any]:
    return (getattr(h.tables, name) for name in TABLES)


def _sweep(h: Harness, now: float) -> list[str]:
    gone = []
    for table in _entity_tables(h):
        for key in list(table):
            if expired(table[key], now, RETENTION):
                del table[key]
                gone.append(key)
    return gone


async def _redrive(h: Harness, parked: Any, now: float, offset: int) -> list[Emit]:
    return await h.raw(
        Inbound(
            parked.key,
            parked.value,
            dict(parked.headers),
            int(now * 1000),
            h.settings.commands_topic,
            0,
            offset,
        )
    )


async def _parked_refund(h: Harness, clock: Clock, losses: int = 3) -> tuple[str, Any, list[Emit]]:
    """A payment, and a refund of it let through an hour before the payment's
    retention age, its answers lost (``losses`` attempts): parked. Its tenant, the
    parked record, and the park's emits."""
    t = new_tenant_id()
    h.add_tenant(t, gateway_options={"lose_response_first": {f"ps:{t}:k-c-ref": losses}})
    body = {"amount": 5000, "currency": "USD", "payment_method_token": "pm_card_visa",
            "payment_id": "p1"}  # fmt: skip
    _, paid = await h.send_event(_event(clock, t, "payment.create", body, "c-pay"), offset=1)
    assert paid is not None and kind(paid) == "payment.succeeded", paid and data(paid)
    clock.now += RETENTION - 3600
    refund = _event(clock, t, "refund.create", {"payment_id": "p1", "amount": 5000}, "c-ref")
    emits, out = await h.send_event(refund, offset=2)
    assert out is None and [e.topic for e in emits] == [h.settings.retry_topic]
    [parked] = [e.record for e in emits]
    return t, parked, emits


@pytest.mark.asyncio
async def test_the_park_marks_the_payment_once_without_changing_it(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    monkeypatch.setattr(time, "time", clock)
    logs = Changelogs()
    async with worker(redis_url, logs, {}) as h:
        t, parked, _ = await _parked_refund(h, clock, losses=9)
        key = f"{t}:p1"
        # Two writes of the payment: made, then marked, nothing else of it changed.
        [made, marked] = [v for k, v in logs.logs["payments"] if k == key]
        before = len(logs.logs["payments"])
        payment = h.tables.payments[key]
        assert payment == marked
        [(mark, until)] = payment[HOLD_FIELD].items()
        assert mark == "k-c-ref"  # (its idempotency key)
        first = h.idempotency[f"{t}:k-c-ref"]["first_attempt_ms"]
        assert until == entity_holds.hold_until(first)
        unmarked = {k: v for k, v in payment.items() if k != HOLD_FIELD}
        assert unmarked == made
        assert last_change(payment) == last_change(unmarked)
        assert HOLD_FIELD not in public_row(payment)  # (views and exports: bookkeeping)
        assert h.idempotency[f"{t}:k-c-ref"][entity_holds.HOLDS_FIELD] == ["payment:p1"]
        # Re-driven, and parked again (its answer lost again): no second write.
        clock.now += 600
        again = await _redrive(h, parked, clock.now, 3)
        assert outcome_of(h.settings, again) is None
        assert [e.topic for e in again] == [h.settings.retry_topic]
        assert len(logs.logs["payments"]) == before
        # The record redelivered (a crash before its offset was committed): none either.
        redelivered = await _redrive(h, parked, clock.now, 2)
        assert outcome_of(h.settings, redelivered) is None
        assert len(logs.logs["payments"]) == before


@pytest.mark.asyncio
async def test_the_sweep_keeps_a_held_payment_in_the_window_and_takes_it_after(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    monkeypatch.setattr(time, "time", clock)
    async with worker(redis_url, Changelogs(), {}) as h:
        t, _, _ = await _parked_refund(h, clock)
        key = f"{t}:p1"
        until = h.tables.payments[key][HOLD_FIELD]["k-c-ref"]
        clock.now += 2 * 3600  # past the payment's retention age
        assert _sweep(h, clock.now) == []
        assert _sweep(h, until - 1) == []  # the last moment of the window
        # Without the mark it would have gone: the mark is what keeps it.
        unmarked = {k: v for k, v in h.tables.payments[key].items() if k != HOLD_FIELD}
        assert expired(unmarked, clock.now, RETENTION)
        assert _sweep(h, until) == [key]  # the window passed: taken as before


@pytest.mark.asyncio
async def test_a_finished_parked_command_holds_nothing(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    monkeypatch.setattr(time, "time", clock)
    async with worker(redis_url, Changelogs(), {}) as h:
        t, parked, _ = await _parked_refund(h, clock)
        key = f"{t}:p1"
        clock.now += 600
        answer = outcome_of(h.settings, await _redrive(h, parked, clock.now, 3))
        assert answer is not None and kind(answer) == "refund.succeeded"
        assert HOLD_FIELD not in h.tables.payments[key]
        assert entity_holds.HOLDS_FIELD not in h.idempotency[f"{t}:k-c-ref"]
        # Its retention counts from the refund's change, as any entity's.
        assert _sweep(h, clock.now + RETENTION - 1) == []
        assert f"{t}:p1" in _sweep(h, clock.now + RETENTION + 1)


@pytest.mark.asyncio
async def test_a_parked_refund_answered_failed_releases_the_payment_it_did_not_change(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A re-drive answered `refund.failed` (Stripe may fail a refund at once) writes the
    refund only, not the payment: its finish takes the mark off by itself, and the
    payment, unchanged all along, leaves with the next pass."""
    clock = Clock()
    monkeypatch.setattr(time, "time", clock)
    async with worker(redis_url, Changelogs(), {}) as h:
        t, parked, _ = await _parked_refund(h, clock)
        key = f"{t}:p1"
        assert HOLD_FIELD in h.tables.payments[key]
        marked = h.tables.payments[key]

        async def failed(self: Any, req: gw.CreateRefund, *, idempotency_key: str) -> Any:
            return gw.RefundResult(
                provider_refund_id="re_failed",
                provider_payment_id=req.provider_payment_id,
                status=gw.RefundStatus.FAILED,
                amount=Money(amount=5000, currency="USD"),
                failure_code="expired_or_canceled_card",
            )

        monkeypatch.setattr(SimulatorGateway, "create_refund", failed)
        clock.now += 2 * 3600
        answer = outcome_of(h.settings, await _redrive(h, parked, clock.now, 3))
        assert answer is not None and kind(answer) == "refund.failed", answer and data(answer)
        payment = h.tables.payments[key]
        assert payment == {k: v for k, v in marked.items() if k != HOLD_FIELD}
        assert entity_holds.HOLDS_FIELD not in h.idempotency[f"{t}:k-c-ref"]
        assert _sweep(h, clock.now) == [key]


def test_release_takes_off_its_own_mark_only() -> None:
    """A finish that writes nothing of the entity (a refund declined) takes its mark off
    by itself; another parked command's stays."""
    now = time.time()
    payment = {"entity_type": "payment", "id": "p1", "applied": {"c": {"at": now - RETENTION}},
               HOLD_FIELD: {"a": now + DAY, "b": now + DAY}}  # fmt: skip
    tables = Tables({}, {}, {"t:p1": payment}, {}, {})
    entity_holds.release(tables, "t", ["payment:p1"], "a")
    assert tables.payments["t:p1"][HOLD_FIELD] == {"b": now + DAY}
    assert not expired(tables.payments["t:p1"], now, RETENTION)
    entity_holds.release(tables, "t", ["payment:p1"], "b")
    assert HOLD_FIELD not in tables.payments["t:p1"]
    assert expired(tables.payments["t:p1"], now, RETENTION)


def test_what_a_command_holds_follows_its_owner_chain() -> None:
    """A payment through a saved method holds the method and its customer; an invoice
    paid holds its saved method, and that method's customer; a create's own id, not
    made yet, nothing; an entity gone, nothing."""
    from paystream.streams.commands import COMMANDS

    tables = Tables(
        {"t:c1": {"entity_type": "customer", "id": "c1"}},
        {"t:m1": {"entity_type": "payment_method", "id": "m1", "customer_id": "c1"}},
        {}, {}, {},
        invoices={"t:i1": {"entity_type": "invoice", "id": "i1", "payment_method_id": "m1",
                           "customer_id": "c1"}},
    )  # fmt: skip
    pay = COMMANDS["payment.create"].model_validate(
        {
            "amount": 100,
            "currency": "USD",
            "payment_method_id": "m1",
            "customer_id": "c1",
            "payment_id": "p9",
        }
    )
    assert entity_holds.needed(tables, "t", pay, "payment_id") == [
        "customer:c1", "payment_method:m1"]  # fmt: skip
    invoice = COMMANDS["invoice.pay"].model_validate({"invoice_id": "i1"})
    assert entity_holds.needed(tables, "t", invoice, None) == [
        "invoice:i1", "payment_method:m1", "customer:c1"]  # fmt: skip
    gone = COMMANDS["payment.capture"].model_validate({"payment_id": "p9"})
    assert entity_holds.needed(tables, "t", gone, None) == []


@pytest.mark.asyncio
async def test_the_mark_outlives_a_crash_between_park_and_sweep(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker stops after the park; another recovers the tables from their
    changelogs, sweeps, and the re-drive finishes the refund the provider made."""
    clock = Clock()
    monkeypatch.setattr(time, "time", clock)
    logs, tenants = Changelogs(), {}
    async with worker(redis_url, logs, tenants) as h:
        t, parked, _ = await _parked_refund(h, clock)
    clock.now += 2 * 3600
    async with worker(redis_url, logs, tenants) as again:
        assert HOLD_FIELD in again.tables.payments[f"{t}:p1"]
        assert _sweep(again, clock.now) == []
        clock.now += 600
        answer = outcome_of(again.settings, await _redrive(again, parked, clock.now, 3))
        assert answer is not None and kind(answer) == "refund.succeeded", answer and data(answer)


DISPUTED = {"payment_id": "p1", "amount": 1000, "currency": "USD",
            "payment_method_token": "pm_card_createDispute"}  # fmt: skip
MANUAL = {"payment_id": "p1", "amount": 1000, "currency": "USD",
          "payment_method_token": "pm_card_visa", "capture": "manual"}  # fmt: skip


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("made", "command", "table"),
    [(MANUAL, "payment.capture", "payments"), (DISPUTED, "dispute.accept", "disputes")],
)
async def test_other_commands_let_through_hold_what_they_act_on(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, made: dict[str, Any], command: str,
    table: str,
) -> None:  # fmt: skip
    """A capture, a dispute's accept: let through an hour before their entity's
    retention age, their answers lost, parked: the entity is held past the sweep's pass,
    and the re-drive finishes."""
    clock = Clock()
    monkeypatch.setattr(time, "time", clock)
    async with worker(redis_url, Changelogs(), {}) as h:
        t = new_tenant_id()
        h.add_tenant(t, gateway_options={"lose_response_first": {f"ps:{t}:k-c-act": 3}})
        _, paid = await h.send_event(_event(clock, t, "payment.create", made, "c-pay"), offset=1)
        assert paid is not None and kind(paid).startswith("payment."), paid and data(paid)
        related = data(paid).get("related") or []
        body = {"payment_id": "p1"} if table == "payments" else {
            "dispute_id": related[0]["entity_id"]}  # fmt: skip
        key = f"{t}:{next(iter(body.values()))}"
        clock.now += RETENTION - 3600
        emits, out = await h.send_event(_event(clock, t, command, body, "c-act"), offset=2)
        assert out is None and [e.topic for e in emits] == [h.settings.retry_topic]
        assert set(getattr(h.tables, table)[key][HOLD_FIELD]) == {"k-c-act"}
        clock.now += 2 * 3600
        # (A dispute's payment, which its accept does not read, goes at its age.)
        assert key not in _sweep(h, clock.now)
        answer = outcome_of(h.settings, await _redrive(h, emits[0].record, clock.now, 3))
        assert answer is not None and kind(answer) != "command.rejected", data(answer)


@pytest.mark.asyncio
async def test_a_parked_read_holds_nothing(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A refresh parked (the provider down) made nothing there to record: it marks
    nothing, and the payment leaves at its age as before."""
    clock = Clock()
    monkeypatch.setattr(time, "time", clock)
    async with worker(redis_url, Changelogs(), {}) as h:
        t = new_tenant_id()
        h.add_tenant(t, gateway_options={"fail_first": {f"ps:{t}:k-c-read": 9}})
        body = {"amount": 5000, "currency": "USD", "payment_method_token": "pm_card_visa",
                "payment_id": "p1"}  # fmt: skip
        _, paid = await h.send_event(_event(clock, t, "payment.create", body, "c-pay"), offset=1)
        assert paid is not None and kind(paid) == "payment.succeeded"
        clock.now += RETENTION - 3600
        read = _event(clock, t, "payment.refresh", {"payment_id": "p1"}, "c-read")
        emits, out = await h.send_event(read, offset=2)
        assert out is None and [e.topic for e in emits] == [h.settings.retry_topic]
        assert HOLD_FIELD not in h.tables.payments[f"{t}:p1"]
        assert _sweep(h, clock.now + 2 * 3600) == [f"{t}:p1"]
