"""The ledger sink under review findings: refused data parked once and not retried, a
batch retried for the insights alone, a stalled sink said so by its own gauge, erasure
of the erased customer alone, a read-only pooled connection replaced."""

from __future__ import annotations

import asyncio
import types
import uuid
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.ledger import write_events
from paystream.ledger.models import Customer, Payment, Refund
from paystream.ledger.session import tenant_session
from paystream.ledger.sink import LedgerSink, outcome_to_ledger_events
from paystream.settings import CloudEventsMode
from paystream.streams.codec import encode_event
from paystream.streams.outcomes import build_outcome
from paystream.tenancy.crypto import MasterKeyring
from tests.ledger.factories import EventFactory
from tests.ledger.test_sink import _cmd, payment_obj, payment_outcome
from tests.ledger.test_sink_never_stalls import _write_within


def _tenant() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


async def test_a_version_past_bigint_is_parked_not_retried_for_ever(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    tenant = _tenant()
    good = make_event.payment(tenant, "pay_ok", 1)
    huge = make_event.payment(tenant, "pay_huge", 2**63)
    sink = LedgerSink(app_engine, keyring, initial_backoff=0.05, max_backoff=0.1)
    result = await _write_within(sink, [good, huge], seconds=3)
    assert [d.event_id for d in result.dead_letters] == [huge.event_id]


class _Msg:
    def __init__(self, rec: Any, offset: int) -> None:
        self.key, self.value, self.headers = rec.key, rec.value, list(rec.headers)
        self.timestamp, self.topic, self.partition, self.offset = 1.7e9, "ev", 0, offset
        self.generation_id = 7


class _Ev:
    def __init__(self, message: _Msg) -> None:
        self.message = message


async def test_a_batch_retried_for_the_insights_parks_its_dead_letters_once(
    app_engine: AsyncEngine, keyring: MasterKeyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ledger half succeeded; only the insights' publish failed once."""
    from paystream.agents import ledger_sink as agent

    tenant = _tenant()
    data = dict(payment_outcome(tenant, "pay_x", 1).get_data())
    data["tenant_id"] = "globex"  # refused: parked
    bad = encode_event(
        build_outcome(_cmd(tenant, data["command_id"]), "payment.succeeded", data),
        tenant.encode(),
        CloudEventsMode.BINARY,
    )
    events = [_Ev(_Msg(bad, 0))]
    runner = agent.LedgerSinkRunner(agent.settings)
    runner._sink = LedgerSink(app_engine, keyring)
    parks: list[Any] = []

    async def park(records: Any, dead: Any) -> None:
        parks.append(dict(dead))

    monkeypatch.setattr(runner, "_park", park)
    calls = 0

    class Insights:
        async def await_tenants(self, evs: Any) -> bool:
            return False

        async def run_batch(self, evs: Any) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("analytics topic unreachable")

    monkeypatch.setattr(agent, "runner", runner)
    monkeypatch.setattr(agent, "ENABLED", True)
    monkeypatch.setattr(agent.insights, "runner", Insights())
    monkeypatch.setattr(agent, "app", types.SimpleNamespace(consumer_generation_id=7))
    monkeypatch.setattr(agent, "RETRY_FIRST_SECONDS", 0.01)
    await agent._until_stored(events)  # type: ignore[arg-type]
    assert calls == 2
    assert len(parks) == 1, f"the same outcome was parked {len(parks)} times"


async def test_related_events_of_an_erasure_outcome_do_not_erase_other_ids(
    app_engine: AsyncEngine, keyring: MasterKeyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A customer.erased outcome carrying a related entity (a payment method, say) must
    shred the customer, not create a customer tombstone named after the related id."""
    from paystream.agents import ledger_sink as agent

    tenant = _tenant()
    cus = {
        "tenant_id": tenant,
        "id": "cus_e",
        "version": 3,
        "provider": "simulator",
        "provider_customer_id": "sim_cus_e",
        "email": None,
        "name": None,
        "erased": True,
    }
    pm = {
        "tenant_id": tenant,
        "id": "pm_e",
        "version": 2,
        "customer_id": "cus_e",
        "provider": "simulator",
        "provider_token": "tok_1",
        "attached": False,
    }
    data = {
        "tenant_id": tenant,
        "command_id": "cmd_erase",
        "entity_type": "customer",
        "entity_id": "cus_e",
        "version": 3,
        "object": cus,
        "related": [
            {"entity_type": "payment_method", "entity_id": "pm_e", "version": 2, "object": pm}
        ],
    }
    rec = encode_event(
        build_outcome(_cmd(tenant, "cmd_erase", "customer.erase"), "customer.erased", data),
        tenant.encode(),
        CloudEventsMode.BINARY,
    )
    runner = agent.LedgerSinkRunner(agent.settings)
    runner._sink = LedgerSink(app_engine, keyring)
    await runner.run_batch([_Ev(_Msg(rec, 0))])  # type: ignore[arg-type]
    async with tenant_session(app_engine, tenant) as s:
        ids = set(await s.scalars(select(Customer.customer_id)))
    assert ids == {"cus_e"}, ids


async def test_a_sink_that_cannot_start_says_so_in_its_stall_gauge(
    ledger_db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DATABASE_URL is the owner's and PAYSTREAM_DB_APP_PASSWORD is missing: every batch
    fails before the writer; the alert the agent-stalled alert points to must fire."""
    from paystream.agents import ledger_sink as agent
    from paystream.ledger.sink import STALLED, WRITE_FAILURES

    cfg = agent.settings.model_copy(
        update={"database_url": ledger_db.owner_url, "db_app_password": None}
    )
    runner = agent.LedgerSinkRunner(cfg)
    tenant = _tenant()
    rec = encode_event(
        payment_outcome(tenant, "pay_cfg", 1), tenant.encode(), CloudEventsMode.BINARY
    )
    monkeypatch.setattr(agent, "runner", runner)
    monkeypatch.setattr(agent, "ENABLED", True)
    monkeypatch.setattr(agent.insights, "runner", None)
    monkeypatch.setattr(agent, "app", types.SimpleNamespace(consumer_generation_id=7))
    monkeypatch.setattr(agent, "RETRY_FIRST_SECONDS", 0.01)
    before = sum(
        WRITE_FAILURES.labels(k)._value.get() for k in ("connection", "config", "unexpected")
    )
    task = asyncio.ensure_future(agent._until_stored([_Ev(_Msg(rec, 0))]))  # type: ignore[list-item]
    await asyncio.sleep(0.5)
    task.cancel()
    after = sum(
        WRITE_FAILURES.labels(k)._value.get() for k in ("connection", "config", "unexpected")
    )
    assert STALLED._value.get() == 1 or after > before, "stalled, yet no ledger metric says so"


@pytest.mark.parametrize(
    "extra",
    [{"status": "succ\x00eeded"}, {"metadata": {"k": "a\x00b"}}, {"failure_message": "x\ud800y"}],
)
async def test_odd_text_is_parked_not_retried(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory, extra: Any
) -> None:
    tenant = _tenant()
    good = make_event.payment(tenant, "pay_ok", 1)
    odd = make_event.payment(tenant, "pay_odd", 1, **extra)
    sink = LedgerSink(app_engine, keyring, initial_backoff=0.05, max_backoff=0.1)
    result = await _write_within(sink, [good, odd], seconds=3)
    assert [d.event_id for d in result.dead_letters] == [odd.event_id]


async def test_a_pooled_connection_left_read_only_by_a_failover_is_replaced(
    ledger_db: Any, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    """The sink's pooled connections reach a server demoted to a standby (every write
    refused 25006); a new connection would reach the new primary. The sink must not
    retry on the stale connection for ever (pre-ping passes on a read-only server)."""
    from sqlalchemy import text

    from paystream.ledger import create_engine

    engine = create_engine(ledger_db.app_url, pool_size=1, max_overflow=0)
    try:
        async with engine.connect() as conn:  # stands in for the demoted server
            await conn.execute(text("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"))
            await conn.commit()
        sink = LedgerSink(engine, keyring, initial_backoff=0.05, max_backoff=0.1)
        tenant = _tenant()
        result = await _write_within(sink, [make_event.payment(tenant, "pay_ro", 1)], seconds=5)
        assert result.written.events_written == 1
    finally:
        await engine.dispose()


@pytest.mark.parametrize("kind", ["customer", "next_action"])
async def test_a_ledger_dead_letter_s_headers_are_as_documented(
    app_engine: AsyncEngine, keyring: MasterKeyring, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """Parked without its bytes, a customer's outcome says `personal_data` and a payment's
    next action `next_action`: values asyncapi.yaml's LedgerDeadLetterHeaders must list
    (review h59c: it listed `forbidden_data` alone)."""
    from tests.ledger.test_sink import _outcome_record, _sink_parks
    from tests.test_docs import published, validator

    tenant = f"t{uuid.uuid4().hex[:8]}"
    if kind == "customer":
        outcome = "customer.created"
        data: dict[str, Any] = {
            "tenant_id": "someone-else",  # refused: another tenant's data
            "command_id": "c1", "entity_type": "customer", "entity_id": "cus_1", "version": 1,
            "object": {"tenant_id": tenant, "id": "cus_1", "email": "ada@example.com"},
        }  # fmt: skip
    else:
        outcome = "payment.requires_action"
        data = dict(payment_outcome(tenant, "pay_3ds", 1).get_data())
        data["tenant_id"] = "someone-else"
        data["object"] = {**data["object"], "next_action": {"redirect_to_url": {"url": "x"}}}
    bad = _outcome_record(tenant, outcome, data)
    sent = await _sink_parks(
        monkeypatch, app_engine, keyring, bad.key, bad.value, list(bad.headers)
    )
    [(_topic, _key, value, headers)] = sent
    text = {k: v.decode() for k, v in headers.items()}
    assert value == b"" and text["paystream-dlq-redacted"] == (
        "personal_data" if kind == "customer" else "next_action"
    )
    schema = "/components/schemas/LedgerDeadLetterHeaders"
    validator(published("asyncapi"), schema, draft7=True).validate(text)


def refund_outcome(tenant: str, rid: str, pid: str, amount: int, command_id: str) -> Any:
    """refund.succeeded as the pipeline emits it: the refund, and its payment related."""
    data = {
        "tenant_id": tenant,
        "command_id": command_id,
        "entity_type": "refund",
        "entity_id": rid,
        "version": 1,
        "object": {
            "tenant_id": tenant, "id": rid, "version": 1, "provider": "simulator",
            "created_by": command_id, "payment_id": pid, "status": "succeeded",
            "amount": amount, "currency": "EUR", "provider_refund_id": f"sim_{rid}",
        },
        "related": [
            {
                "entity_type": "payment", "entity_id": pid, "version": 2,
                "object": payment_obj(tenant, pid, 2, status="refunded",
                                      amount_refunded=amount),
            }
        ],
    }  # fmt: skip
    return build_outcome(_cmd(tenant, command_id, "refund.create"), "refund.succeeded", data)


async def test_a_refund_outcome_is_stored_whole_or_not_at_all(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    """A command id reused after its idempotency records expired, for refunds of two
    payments: the second refund's own event conflicts and is parked, and so is its
    payment's (another id: `<outcome>:payment:pay_2`), with it (review h59l: stored
    alone, the ledger showed pay_2 refunded 2500 with no refund row for it)."""
    t = _tenant()
    await write_events(
        app_engine,
        [make_event.payment(t, p, 1, amount=2500, amount_captured=2500, currency="EUR")
         for p in ("pay_1", "pay_2")],
        keyring=keyring,
    )  # fmt: skip
    sink = LedgerSink(app_engine, keyring)
    day1 = outcome_to_ledger_events(refund_outcome(t, "re_1", "pay_1", 2500, "c-7"))
    assert (await sink.write_batch(day1)).dead_letters == []
    day3 = outcome_to_ledger_events(refund_outcome(t, "re_2", "pay_2", 2500, "c-7"))
    result = await sink.write_batch(day3)
    assert [d.reason for d in result.dead_letters] == ["event_id_conflict"]
    async with tenant_session(app_engine, t) as s:
        refunded = await s.scalar(
            select(Payment.amount_refunded).where(Payment.payment_id == "pay_2")
        )
        refund_rows = (
            await s.scalars(select(Refund.refund_id).where(Refund.payment_id == "pay_2"))
        ).all()
    # Half an outcome: the payment says refunded, the refund that did it is not there.
    assert (refunded, list(refund_rows)) == (0, []), (refunded, refund_rows)


async def test_a_producer_s_clock_ahead_does_not_date_the_ledger_s_rows(
    app_engine: AsyncEngine, keyring: MasterKeyring
) -> None:
    """A command's `time` is its producer's: one in the year 9000 dated the payment's
    rows so (review h59l); dated ahead of its outcome's record time, it takes that."""
    from datetime import UTC, datetime

    from paystream.streams.outcomes import CommandRef

    t = _tenant()
    cmd = CommandRef(tenant_id=t, command_id="c-future", command_type="payment.create",
                     idempotency_key="k", time=datetime(9000, 1, 1, tzinfo=UTC))  # fmt: skip
    data = {"tenant_id": t, "command_id": "c-future", "entity_type": "payment",
            "entity_id": "pay_f", "version": 1, "object": payment_obj(t, "pay_f", 1)}  # fmt: skip
    recorded = datetime.now(UTC).replace(microsecond=0)
    events = outcome_to_ledger_events(
        build_outcome(cmd, "payment.succeeded", data), received_at=recorded
    )
    sink = LedgerSink(app_engine, keyring)
    assert (await sink.write_batch(events)).dead_letters == []
    async with tenant_session(app_engine, t) as s:
        created = await s.scalar(select(Payment.created_at).where(Payment.payment_id == "pay_f"))
    assert created == recorded
    # A past time is the business's own (an offline sale recorded late): it stands.
    past = datetime(2020, 5, 1, tzinfo=UTC)
    back = CommandRef(tenant_id=t, command_id="c-past", command_type="payment.create",
                      idempotency_key="k2", time=past)  # fmt: skip
    data = {**data, "command_id": "c-past", "entity_id": "pay_p",
            "object": payment_obj(t, "pay_p", 1)}  # fmt: skip
    events = outcome_to_ledger_events(
        build_outcome(back, "payment.succeeded", data), received_at=recorded
    )
    assert events[0].time == past


async def test_a_refused_related_event_is_the_one_its_dead_letter_names(
    app_engine: AsyncEngine, keyring: MasterKeyring
) -> None:
    """The outcome's own event a replay, its payment's stored at another version: the
    dead letter names the related event refused, whose id begins with the outcome's
    (review h59m: it named the outcome's)."""
    import dataclasses

    t = _tenant()
    sink = LedgerSink(app_engine, keyring)
    first = outcome_to_ledger_events(refund_outcome(t, "re_1", "pay_1", 2500, "c-7"))
    assert (await sink.write_batch(first)).dead_letters == []
    again = outcome_to_ledger_events(refund_outcome(t, "re_1", "pay_1", 2500, "c-7"))
    again[1] = dataclasses.replace(again[1], version=3)
    result = await sink.write_batch(again)
    assert [d.reason for d in result.dead_letters] == ["event_id_conflict"]
    letter = result.dead_letters[0]
    assert letter.event_id == again[1].event_id, (letter.event_id, letter.detail)
