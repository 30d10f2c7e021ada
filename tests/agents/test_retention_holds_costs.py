"""What the parked commands' retention holds (review h68p) cost (review h82rc): a
command's finish does not read its idempotency record again to learn what it holds (the
pipeline's hot path: a RocksDB read per command in a worker), and a holding command's
re-park writes its record once, its holds carried; a park redelivered after a crash
writes its marks again (RocksDB: the store ahead of the changelog)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from paystream.agents import entity_holds
from paystream.tables.retention import HOLD_FIELD
from tests.agents.harness import data, kind, new_tenant_id
from tests.agents.test_retention_holds import (
    RETENTION,
    Changelogs,
    Clock,
    _event,
    _parked_refund,
    _redrive,
    worker,
)
from tests.agents.test_retention_holds import Logged as _Logged


class Reads(_Logged):
    """An idempotency table that also keeps every read of a key, in order with writes."""

    def get(self, key: str, default: Any = None) -> Any:
        self.log.append((key, "<read>"))
        return super().get(key, default)

    def __getitem__(self, key: str) -> Any:
        self.log.append((key, "<read>"))
        return super().__getitem__(key)


class ReadLogs(Changelogs):
    """Changelogs whose recovered idempotency table logs its reads too."""

    def tables(self) -> tuple[Any, _Logged]:
        tables, idem = super().tables()
        reads = Reads(self.logs["idem"])
        dict.update(reads, idem)
        return tables, reads


@pytest.mark.asyncio
async def test_a_command_holding_nothing_does_not_read_its_record_again_at_its_finish(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A payment (no record under its key before): between its in-flight write and its
    done write, its idempotency record is not read (the finish knows it holds nothing)."""
    clock = Clock()
    monkeypatch.setattr(time, "time", clock)
    logs = ReadLogs()
    async with worker(redis_url, logs, {}) as h:
        log = logs.logs["idem"]
        t = new_tenant_id()
        h.add_tenant(t)
        body = {"amount": 5000, "currency": "USD", "payment_method_token": "pm_card_visa"}
        _, paid = await h.send_event(_event(clock, t, "payment.create", body, "c-pay"), offset=1)
        assert paid is not None and kind(paid) == "payment.succeeded", paid and data(paid)
        ops = [v if v == "<read>" else v["state"] for k, v in log if k == f"{t}:k-c-pay"]
        start = ops.index("in_flight")
        assert ops[start:] == ["in_flight", "done"], ops


@pytest.mark.asyncio
async def test_a_holding_command_parked_again_writes_its_record_once(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Re-driven and parked again, a refund holding its payment writes its idempotency
    record twice (in flight, parked), as any re-park: the parked record carries its holds
    (it was written without them, then again with them: two changelog records)."""
    clock = Clock()
    monkeypatch.setattr(time, "time", clock)
    logs = Changelogs()
    async with worker(redis_url, logs, {}) as h:
        t, parked, _ = await _parked_refund(h, clock, losses=9)
        key = f"{t}:k-c-ref"
        before = len(logs.logs["idem"])
        clock.now += 600
        again = await _redrive(h, parked, clock.now, 3)
        assert [e.topic for e in again] == [h.settings.retry_topic]
        written = [v for k, v in logs.logs["idem"][before:] if k == key]
        assert [v["state"] for v in written] == ["in_flight", "parked"], written
        assert all(v.get(entity_holds.HOLDS_FIELD) == ["payment:p1"] for v in written)
        assert set(h.tables.payments[f"{t}:p1"][HOLD_FIELD]) == {"k-c-ref"}


@pytest.mark.asyncio
async def test_a_mark_whose_changelog_record_a_crash_lost_is_written_again(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RocksDB: a table write reaches the local store before the batch's changelog is
    produced. The park's batch lost (a crash), the store keeps the mark; the record,
    redelivered to the restarted worker, is parked again. The next owner of the partition
    (recovered from the changelog) must find the payment held, as its idempotency record
    says it is."""
    clock = Clock()
    monkeypatch.setattr(time, "time", clock)
    logs, tenants = Changelogs(), {}
    async with worker(redis_url, logs, tenants) as h:
        t = new_tenant_id()
        h.add_tenant(t, gateway_options={"lose_response_first": {f"ps:{t}:k-c-ref": 9}})
        body = {"amount": 5000, "currency": "USD", "payment_method_token": "pm_card_visa",
                "payment_id": "p1"}  # fmt: skip
        _, paid = await h.send_event(_event(clock, t, "payment.create", body, "c-pay"), offset=1)
        assert paid is not None and kind(paid) == "payment.succeeded"
        clock.now += RETENTION - 3600
        refund = _event(clock, t, "refund.create", {"payment_id": "p1", "amount": 5000}, "c-ref")
        delivered = {name: len(log) for name, log in logs.logs.items()}
        emits, out = await h.send_event(refund, offset=2)
        assert out is None and [e.topic for e in emits] == [h.settings.retry_topic]
        assert HOLD_FIELD in h.tables.payments[f"{t}:p1"]
        for name, log in logs.logs.items():  # the batch's changelog records lost
            del log[delivered[name] :]
        # The same store (RocksDB, ahead of the changelog), the record redelivered.
        emits, out = await h.send_event(refund, offset=2)
        assert out is None and [e.topic for e in emits] == [h.settings.retry_topic]
    async with worker(redis_url, logs, tenants) as other:
        held = other.idempotency[f"{t}:k-c-ref"][entity_holds.HOLDS_FIELD]
        assert held == ["payment:p1"]
        assert HOLD_FIELD in other.tables.payments[f"{t}:p1"], "the mark never reached it"


@pytest.mark.asyncio
async def test_payments_parked_in_an_outage_do_not_mark_a_live_customers_card(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Payments through a live customer's attached card, parked while the provider is
    down: the card cannot leave with retention before their marks end (it goes only
    detached, or with its customer deleted or erased, a write that starts a retention of
    its own), so no park writes it: marked, each parked payment wrote the card's record
    again, one mark more each (the record growing with the outage, towards the broker's
    message size limit, and the changelog with its square)."""
    clock = Clock()
    monkeypatch.setattr(time, "time", clock)
    logs = Changelogs()
    async with worker(redis_url, logs, {}) as h:
        t = new_tenant_id()
        keys = {f"ps:{t}:k-c-p{i}": 9 for i in range(8)}
        h.add_tenant(t, gateway_options={"fail_first": keys})
        cus = {"customer_id": "cus1", "email": "a@example.com"}
        _, made = await h.send_event(_event(clock, t, "customer.create", cus, "c-cus"), offset=1)
        assert made is not None and kind(made) == "customer.created", made and data(made)
        attach = {"customer_id": "cus1", "token": "pm_card_visa", "payment_method_id": "pm1"}
        _, made = await h.send_event(
            _event(clock, t, "payment_method.attach", attach, "c-pm"), offset=2
        )
        assert made is not None and kind(made) == "payment_method.attached", data(made)
        card = f"{t}:pm1"
        written = len([k for k, _ in logs.logs["payment_methods"] if k == card])
        pay = {"amount": 500, "currency": "USD", "customer_id": "cus1", "payment_method_id": "pm1"}
        for i in range(8):
            emits, out = await h.send_event(
                _event(clock, t, "payment.create", pay, f"c-p{i}"), offset=3 + i
            )
            assert out is None and [e.topic for e in emits] == [h.settings.retry_topic]
        marks = [v.get(HOLD_FIELD) for k, v in logs.logs["payment_methods"][written:] if k == card]
        assert marks == [], [len(m or ()) for m in marks]
        assert HOLD_FIELD not in h.tables.payment_methods[card]


def test_a_card_or_invoice_is_marked_only_when_it_may_leave_before_the_mark_ends() -> None:
    """A card is marked if detached, or its customer is deleted or erased (the sweep may
    take it with them); a live customer's attached card is not. An invoice paid or void
    is marked; an open one (the sweep never takes it) is not."""
    from paystream.agents.handlers import Tables

    now = time.time()
    tables = Tables(
        {"t:c1": {"entity_type": "customer", "id": "c1"},
         "t:c2": {"entity_type": "customer", "id": "c2", "deleted": True}},
        {"t:m1": {"entity_type": "payment_method", "id": "m1", "customer_id": "c1",
                  "attached": True},
         "t:m2": {"entity_type": "payment_method", "id": "m2", "customer_id": "c2",
                  "attached": True},
         "t:m3": {"entity_type": "payment_method", "id": "m3", "customer_id": "c1",
                  "attached": False}},
        {}, {}, {},
        invoices={"t:i1": {"entity_type": "invoice", "id": "i1", "status": "open"},
                  "t:i2": {"entity_type": "invoice", "id": "i2", "status": "paid",
                           "subscription_id": "s1"}},
    )  # fmt: skip
    names = ["payment_method:m1", "payment_method:m2", "payment_method:m3", "invoice:i1",
             "invoice:i2"]  # fmt: skip
    assert entity_holds.hold(tables, "t", names, "k", now + 3600, now) == 3
    marked = {
        name
        for name in names
        if HOLD_FIELD in tables.by_type(name.split(":")[0])[f"t:{name.split(':')[1]}"]
    }
    assert marked == {"payment_method:m2", "payment_method:m3", "invoice:i2"}
