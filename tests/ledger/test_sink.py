"""The ledger sink: outcome → LedgerEvent translation, and LedgerSink on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import os
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import pytest_asyncio
from cloudevents.core.v1.event import CloudEvent
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.ledger import (
    ForbiddenDataError,
    InvalidEventError,
    create_engine,
    verify_audit,
    write_events,
)
from paystream.ledger.models import Dispute, Event, Payment, PaymentMethod
from paystream.ledger.session import tenant_session
from paystream.ledger.sink import (
    FailureKind,
    LedgerSink,
    asyncpg_url,
    classify_failure,
    outcome_to_ledger_events,
)
from paystream.settings import CloudEventsMode
from paystream.streams.codec import decode_record, encode_event
from paystream.streams.outcomes import CommandRef, RejectReason, build_outcome, rejection_data
from paystream.tenancy.crypto import MasterKeyring
from tests.fixtures.postgres import fresh_database
from tests.ledger.factories import EventFactory

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def _cmd(tenant: str, command_id: str | None = None, kind: str = "payment.create") -> CommandRef:
    return CommandRef(
        tenant_id=tenant,
        command_id=command_id or f"cmd_{uuid.uuid4().hex[:10]}",
        command_type=kind,
        idempotency_key="k",
        time=T0,
    )


def payment_obj(tenant: str, pid: str, version: int, **extra: Any) -> dict[str, Any]:
    return {
        "tenant_id": tenant,
        "id": pid,
        "version": version,
        "provider": "simulator",
        "created_by": "cmd_0",
        "status": "succeeded",
        "amount": 2500,
        "currency": "eur",
        "capture_method": "automatic",
        "amount_captured": 2500,
        "amount_refunded": 0,
        "customer_id": "cus_1",
        "payment_method_id": "pm_1",
        "provider_payment_id": f"sim_{pid}",
        **extra,
    }


def payment_outcome(
    tenant: str,
    pid: str,
    version: int,
    *,
    outcome: str = "payment.succeeded",
    command_id: str | None = None,
    related: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> Any:
    data: dict[str, Any] = {
        "tenant_id": tenant,
        "command_id": command_id or f"cmd_{pid}_{version}",
        "entity_type": "payment",
        "entity_id": pid,
        "version": version,
        "object": payment_obj(tenant, pid, version, **extra),
    }
    if related:
        data["related"] = related
    return build_outcome(_cmd(tenant, data["command_id"]), outcome, data)


# ---- translation ------------------------------------------------------------------


def test_payment_outcome_translates_to_one_event() -> None:
    outcome = payment_outcome("acme", "pay_1", 3)
    [event] = outcome_to_ledger_events(outcome)
    assert event.event_id == outcome.get_id()
    assert (event.tenant_id, event.entity_type, event.entity_id, event.version) == (
        "acme",
        "payment",
        "pay_1",
        3,
    )
    assert event.type == "com.paystream.payment.succeeded"
    assert event.causation_id == "cmd_pay_1_3"
    assert event.time == T0
    assert event.columns["currency"] == "EUR"
    assert event.columns["amount"] == 2500


def test_related_entities_get_distinct_deterministic_ids() -> None:
    dispute = {
        "entity_type": "dispute",
        "entity_id": "dp_1",
        "version": 1,
        "object": {
            "tenant_id": "acme",
            "id": "dp_1",
            "version": 1,
            "provider": "simulator",
            "created_by": "cmd_x",
            "payment_id": "pay_1",
            "status": "needs_response",
            "amount": 2500,
            "currency": "EUR",
            "provider_dispute_id": "sim_dp_1",
        },
    }
    outcome = payment_outcome("acme", "pay_1", 2, outcome="payment.disputed", related=[dispute])
    events = outcome_to_ledger_events(outcome)
    assert [e.entity_type for e in events] == ["payment", "dispute"]
    assert events[1].event_id == f"{outcome.get_id()}:dispute:dp_1"
    assert events[1].columns["payment_id"] == "pay_1"
    # Same outcome again (a replay): the same ids, so the ledger recognises it.
    assert [e.event_id for e in outcome_to_ledger_events(outcome)] == [e.event_id for e in events]


def test_rejection_translates_to_nothing() -> None:
    cmd = _cmd("acme")
    outcome = build_outcome(
        cmd,
        "command.rejected",
        rejection_data("payment.create", RejectReason.VALIDATION_ERROR, "bad amount"),
    )
    assert outcome_to_ledger_events(outcome) == []


def test_payment_method_snapshot_fills_ledger_columns() -> None:
    data = {
        "tenant_id": "acme",
        "command_id": "cmd_pm",
        "entity_type": "payment_method",
        "entity_id": "pm_1",
        "version": 1,
        "object": {
            "tenant_id": "acme",
            "id": "pm_1",
            "version": 1,
            "provider": "stripe",
            "created_by": "cmd_pm",
            "customer_id": "cus_1",
            "provider_payment_method_id": "pm_stripe_1",
            "brand": "visa",
            "last4": "4242",
            "exp_month": 12,
            "exp_year": 2030,
            "fingerprint": "fp",
            "attached": True,
        },
    }
    [event] = outcome_to_ledger_events(
        build_outcome(_cmd("acme", "cmd_pm"), "payment_method.attached", data)
    )
    assert event.columns["provider_token"] == "pm_stripe_1"
    assert event.columns["status"] == "attached"
    assert event.columns["last4"] == "4242"


def test_failed_payment_keeps_the_outcome_error() -> None:
    outcome = payment_outcome("acme", "pay_f", 1, outcome="payment.failed", status="failed")
    data = dict(outcome.get_data())
    data["error"] = {"code": "card_declined", "retryable": False}
    outcome = build_outcome(_cmd("acme", data["command_id"]), "payment.failed", data)
    [event] = outcome_to_ledger_events(outcome)
    assert event.data["error"]["code"] == "card_declined"


def test_binary_and_structured_records_round_trip() -> None:
    outcome = payment_outcome("acme", "pay_rt", 1)
    for mode in CloudEventsMode:
        rec = encode_event(outcome, b"acme", mode)
        decoded = decode_record(rec.key, rec.value, dict(rec.headers))
        [event] = outcome_to_ledger_events(decoded)
        assert (event.event_id, event.version, event.time) == (outcome.get_id(), 1, T0)


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda d: d.update(version="2"), InvalidEventError),
        # An entity type the ledger does not know ("subscription" was one until 9c5d0c9,
        # "payout" until payouts were built, "transfer" until transfers were).
        (lambda d: d.update(entity_type="wire_transfer"), InvalidEventError),
        (lambda d: d["object"].pop("amount"), InvalidEventError),
        (lambda d: d.update(related={"not": "a list"}), InvalidEventError),
        (lambda d: d.update(tenant_id="globex"), InvalidEventError),
        (lambda d: d["object"].update(card_number="4242424242424242"), ForbiddenDataError),
    ],
)
def test_unstorable_outcomes_are_refused_whole(mutate: Any, error: type[Exception]) -> None:
    outcome = payment_outcome("acme", "pay_bad", 1)
    data = dict(outcome.get_data())
    data["object"] = dict(data["object"])
    mutate(data)
    with pytest.raises(error):
        outcome_to_ledger_events(build_outcome(_cmd("acme", "cmd_bad"), "payment.succeeded", data))


def test_an_outcome_without_the_tenantid_extension_is_refused() -> None:
    """The payload alone never names the tenant whose rows are written: only the
    extension, which decided the partition, does."""
    outcome = payment_outcome("acme", "pay_ext", 1)
    attributes = {k: v for k, v in outcome.get_attributes().items() if k != "tenantid"}
    bare = CloudEvent(attributes, outcome.get_data())
    with pytest.raises(InvalidEventError, match="tenantid"):
        outcome_to_ledger_events(bare)


def test_failure_classification() -> None:
    import asyncpg
    from sqlalchemy import exc as sa_exc

    class Pg(Exception):
        def __init__(self, code: str) -> None:
            super().__init__(code)
            self.sqlstate = code

    def wrapped(code: str) -> Exception:
        return sa_exc.DBAPIError("stmt", {}, Pg(code))

    assert classify_failure(ConnectionRefusedError()) == FailureKind.CONNECTION
    assert classify_failure(TimeoutError()) == FailureKind.CONNECTION
    assert classify_failure(asyncpg.exceptions.ConnectionDoesNotExistError()) == "connection"
    assert classify_failure(wrapped("57P01")) == FailureKind.CONNECTION  # admin shutdown
    assert classify_failure(wrapped("40001")) == FailureKind.CONNECTION  # serialization
    assert classify_failure(wrapped("22P05")) == FailureKind.DATA  # untranslatable char
    assert classify_failure(wrapped("23505")) == FailureKind.DATA
    assert classify_failure(wrapped("54000")) == FailureKind.DATA  # index row too large
    assert classify_failure(wrapped("42P01")) == FailureKind.CONFIG  # not migrated yet
    assert classify_failure(wrapped("42501")) == FailureKind.CONFIG  # a grant missing
    assert classify_failure(wrapped("PSR01")) == FailureKind.DATA  # a ledger trigger refused
    assert classify_failure(InvalidEventError("e", "bad")) == FailureKind.DATA
    assert classify_failure(RuntimeError("bug")) == FailureKind.UNEXPECTED


def test_asyncpg_url_normalises_driver() -> None:
    assert asyncpg_url("postgres://u:p@h:5432/db").startswith("postgresql+asyncpg://u:p@h")
    assert asyncpg_url("postgresql://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert asyncpg_url("postgresql+asyncpg://u@h/db") == "postgresql+asyncpg://u@h/db"


# ---- LedgerSink on PostgreSQL -----------------------------------------------------


async def _count(engine: AsyncEngine, tenant: str, model: Any) -> int:
    async with tenant_session(engine, tenant) as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def test_batch_is_stored_and_replay_doubles_nothing(
    app_engine: AsyncEngine, keyring: MasterKeyring
) -> None:
    tenant = f"t{uuid.uuid4().hex[:8]}"
    dispute = {
        "entity_type": "dispute",
        "entity_id": "dp_9",
        "version": 1,
        "object": {
            "id": "dp_9",
            "payment_id": "pay_9",
            "status": "needs_response",
            "amount": 2500,
            "currency": "EUR",
        },
    }
    outcomes = [
        payment_outcome(tenant, "pay_9", 1, status="requires_capture"),
        payment_outcome(tenant, "pay_9", 2),
        payment_outcome(tenant, "pay_9", 3, outcome="payment.disputed", related=[dispute]),
        payment_outcome(tenant, "pay_8", 1),
    ]
    events = [e for o in outcomes for e in outcome_to_ledger_events(o)]
    sink = LedgerSink(app_engine, keyring)

    first = await sink.write_batch(events)
    assert first.dead_letters == [] and first.attempts == 1
    assert first.written.events_written == 5

    # Redelivery after a crash: the same batch, and again shuffled into a later one.
    replay = await sink.write_batch(events)
    mixed = await sink.write_batch([*reversed(events), payment_outcome_event(tenant, "pay_8", 2)])
    assert replay.written.events_written == 0 and replay.written.duplicates == 5
    assert mixed.written.events_written == 1 and mixed.written.duplicates == 5

    assert await _count(app_engine, tenant, Event) == 6
    assert await _count(app_engine, tenant, Payment) == 2
    assert await _count(app_engine, tenant, Dispute) == 1
    async with tenant_session(app_engine, tenant) as session:
        versions = dict((await session.execute(select(Payment.payment_id, Payment.version))).all())
    assert versions == {"pay_9": 3, "pay_8": 2}
    audit = await verify_audit(app_engine, tenant, keyring)
    # One audit entry per version an entity moved through, however the batches fell:
    # pay_9 v1..v3, dp_9, pay_8 v1; then pay_8 v2.
    assert audit.ok and audit.checked == 6


def payment_outcome_event(tenant: str, pid: str, version: int) -> Any:
    [event] = outcome_to_ledger_events(payment_outcome(tenant, pid, version))
    return event


async def test_an_event_a_ledger_trigger_refuses_is_dead_lettered_not_retried(
    app_engine: AsyncEngine, owner_engine: AsyncEngine, keyring: MasterKeyring
) -> None:
    """A write the ledger's triggers refuse (0006's forward-only rule raises PSR01,
    0007) is refused the same way every time: dead-lettered, the rest stored, the sink
    goes on. Before 0007 the refusal read as a missing grant and the sink retried that
    batch until an operator stepped in, its partition stalled. (No write of the writer
    is refused by design, so a trigger of the test's own refuses one here, as the
    ledger's do.)"""
    tenant = f"t{uuid.uuid4().hex[:8]}"
    good = [payment_outcome_event(tenant, f"pay_{i}", 1) for i in range(5)]
    refused = payment_outcome_event(tenant, "pay_refused", 1)
    name = f"refuse_{tenant}"
    async with owner_engine.begin() as conn:
        await conn.execute(
            text(
                f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "IF NEW.payment_id = 'pay_refused' THEN RAISE EXCEPTION 'refused' "
                "USING ERRCODE = 'PSR01'; END IF; RETURN NEW; END $$"
            )
        )
        await conn.execute(
            text(
                f"CREATE TRIGGER {name} BEFORE INSERT ON payments FOR EACH ROW "
                f"WHEN (NEW.tenant_id = '{tenant}') EXECUTE FUNCTION {name}()"
            )
        )
    try:
        sink = LedgerSink(app_engine, keyring)
        result = await sink.write_batch([*good[:2], refused, *good[2:]])
    finally:
        async with owner_engine.begin() as conn:
            await conn.execute(text(f"DROP TRIGGER {name} ON payments"))
            await conn.execute(text(f"DROP FUNCTION {name}()"))
    assert [d.event_id for d in result.dead_letters] == [refused.event_id]
    assert result.dead_letters[0].reason == "database_rejected"
    assert await _count(app_engine, tenant, Payment) == 5
    assert sink.failed_attempts == 0  # not retried


async def test_refused_event_is_dead_lettered_and_the_rest_stored(
    app_engine: AsyncEngine, keyring: MasterKeyring
) -> None:
    tenant = f"t{uuid.uuid4().hex[:8]}"
    good = [payment_outcome_event(tenant, f"pay_{i}", 1) for i in range(7)]
    # PostgreSQL refuses NUL in text/JSONB (SQLSTATE 22...): a data error, not an outage.
    poisoned = payment_outcome_event(tenant, "pay_nul", 1)
    poisoned = type(poisoned)(
        **{
            **{k: getattr(poisoned, k) for k in ("event_id", "type", "tenant_id", "causation_id")},
            "time": poisoned.time,
            "entity_type": poisoned.entity_type,
            "entity_id": poisoned.entity_id,
            "version": 1,
            "data": {**poisoned.data, "failure_code": "bad\x00byte"},
        }
    )
    sink = LedgerSink(app_engine, keyring)
    result = await sink.write_batch([*good[:4], poisoned, *good[4:]])
    assert [d.event_id for d in result.dead_letters] == [poisoned.event_id]
    assert result.dead_letters[0].reason == "database_rejected"
    assert "\x00" not in result.dead_letters[0].detail
    assert result.written.events_written == 7
    assert await _count(app_engine, tenant, Payment) == 7
    assert sink.failed_attempts == 0  # data errors are never retried
    assert (await verify_audit(app_engine, tenant, keyring)).ok


async def test_payment_method_and_empty_batch(
    app_engine: AsyncEngine, keyring: MasterKeyring
) -> None:
    sink = LedgerSink(app_engine, keyring)
    assert (await sink.write_batch([])).attempts == 0
    tenant = f"t{uuid.uuid4().hex[:8]}"
    data = {
        "tenant_id": tenant,
        "command_id": "cmd_pm",
        "entity_type": "payment_method",
        "entity_id": "pm_1",
        "version": 1,
        "object": {
            "id": "pm_1",
            "customer_id": "cus_1",
            "provider_payment_method_id": "pm_tok",
            "last4": "4242",
            "attached": False,
        },
    }
    events = outcome_to_ledger_events(
        build_outcome(_cmd(tenant, "cmd_pm"), "payment_method.detached", data)
    )
    await sink.write_batch(events)
    async with tenant_session(app_engine, tenant) as session:
        row = (await session.execute(select(PaymentMethod))).scalar_one()
    assert (row.provider_token, row.status, row.last4) == ("pm_tok", "detached", "4242")


# ---- the agent's Faust-free parts ---------------------------------------------------


class _Msg:
    def __init__(self, key: bytes | None, value: bytes, headers: Any, offset: int) -> None:
        self.key, self.value, self.headers = key, value, headers
        self.timestamp, self.topic, self.partition, self.offset = T0.timestamp(), "ev", 0, offset


class _Event:
    def __init__(self, message: _Msg) -> None:
        self.message = message


async def test_agent_batch_stores_outcomes_and_parks_bad_records(
    app_engine: AsyncEngine, keyring: MasterKeyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    from paystream.agents import ledger_sink as agent

    tenant = f"t{uuid.uuid4().hex[:8]}"
    good = encode_event(
        payment_outcome(tenant, "pay_a", 1), tenant.encode(), CloudEventsMode.BINARY
    )
    structured = encode_event(
        payment_outcome(tenant, "pay_b", 1), tenant.encode(), CloudEventsMode.STRUCTURED
    )
    rejected = encode_event(
        build_outcome(
            _cmd(tenant),
            "command.rejected",
            rejection_data("payment.create", RejectReason.UNKNOWN_TENANT, "no"),
        ),
        tenant.encode(),
        CloudEventsMode.BINARY,
    )
    wrong_tenant_data = dict(payment_outcome(tenant, "pay_c", 1).get_data())
    wrong_tenant_data["tenant_id"] = "globex"  # payload claims another tenant's rows
    invalid = encode_event(
        build_outcome(
            _cmd(tenant, wrong_tenant_data["command_id"]), "payment.succeeded", wrong_tenant_data
        ),
        tenant.encode(),
        CloudEventsMode.BINARY,
    )
    events = [
        _Event(_Msg(r.key, r.value, list(r.headers), i))
        for i, r in enumerate([good, structured, rejected, invalid])
    ]
    events.append(_Event(_Msg(b"x", b"not a cloudevent", [], 4)))

    runner = agent.LedgerSinkRunner(agent.settings)
    runner._sink = LedgerSink(app_engine, keyring)
    parked: dict[int, Any] = {}

    async def park(records: Any, dead: Any) -> None:
        parked.update(dead)

    monkeypatch.setattr(runner, "_park", park)
    await runner.run_batch(events)  # type: ignore[arg-type]
    assert {i: d.reason for i, d in parked.items()} == {3: "invalid_event", 4: "undecodable"}
    assert await _count(app_engine, tenant, Payment) == 2
    assert await _count(app_engine, tenant, Event) == 2
    assert agent.ledger_dlq_topic_name(agent.settings) == "paystream.events.ledger-dlq"


async def test_a_worker_given_only_the_app_role_s_url_stores_outcomes(
    ledger_db: Any, app_engine: AsyncEngine
) -> None:
    """Least privilege: DATABASE_URL is paystream_app's own, with no owner password and
    no PAYSTREAM_DB_APP_PASSWORD; the sink logs in with it, as it is, under RLS."""
    from paystream.agents import ledger_sink as agent
    from paystream.settings import load_settings

    tenant = f"t{uuid.uuid4().hex[:8]}"
    good = encode_event(
        payment_outcome(tenant, "pay_app", 1), tenant.encode(), CloudEventsMode.BINARY
    )
    settings = load_settings(
        database_url=ledger_db.app_url,
        db_app_password=None,
        master_key=base64.b64encode(os.urandom(32)).decode(),
    )
    runner = agent.LedgerSinkRunner(settings)
    try:
        await runner.run_batch([_Event(_Msg(good.key, good.value, list(good.headers), 0))])  # type: ignore[list-item]
        assert await _count(app_engine, tenant, Payment) == 1
    finally:
        await runner.sink().engine.dispose()


async def test_another_event_under_a_stored_event_id_is_parked_not_skipped(
    app_engine: AsyncEngine, keyring: MasterKeyring
) -> None:
    """A command id reused after its idempotency records expired: under an older
    version's outcome ids the second payment's event had the first one's id, and was
    skipped as its duplicate, so the ledger never had the second payment."""
    tenant = f"t{uuid.uuid4().hex[:8]}"
    day1 = outcome_to_ledger_events(payment_outcome(tenant, "pay_day1", 1, command_id="c-7"))
    day3 = outcome_to_ledger_events(payment_outcome(tenant, "pay_day3", 1, command_id="c-7"))
    assert day1[0].event_id == day3[0].event_id
    sink = LedgerSink(app_engine, keyring)
    assert (await sink.write_batch(day1)).dead_letters == []
    result = await sink.write_batch([*day1, *day3])  # with a true replay beside it
    [letter] = result.dead_letters
    assert letter.reason == "event_id_conflict" and "pay_day1" in letter.detail
    assert result.written.duplicates == 1
    assert await _count(app_engine, tenant, Payment) == 1


def _parked_records(
    monkeypatch: pytest.MonkeyPatch,
) -> list[tuple[str, bytes | None, bytes, dict[str, bytes]]]:
    """What the ledger agent parks, (topic, key, value, headers), through a stand-in of
    the app's producer (the parking itself, not the broker, is under test)."""
    from types import SimpleNamespace

    from paystream.agents import ledger_sink as agent

    sent: list[tuple[str, bytes | None, bytes, dict[str, bytes]]] = []

    class _Producer:
        async def send(self, topic: str, key: Any, value: Any, *_: Any) -> Any:
            sent.append((topic, key, value, dict(_[-1])))
            done = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done

    class _Topic:
        async def maybe_declare(self) -> None:
            return None

    stand_in = SimpleNamespace(producer=_Producer(), topic=lambda *_a, **_k: _Topic())
    monkeypatch.setattr(agent, "app", stand_in)
    return sent


def _outcome_record(tenant: str, outcome_type: str, data: dict[str, Any]) -> Any:
    """The outcome (binary mode) of ``data``'s command, as the worker produces it."""
    return encode_event(
        build_outcome(_cmd(tenant, data["command_id"]), outcome_type, data),
        tenant.encode(),
        CloudEventsMode.BINARY,
    )


async def _sink_parks(
    monkeypatch: pytest.MonkeyPatch,
    app_engine: AsyncEngine,
    keyring: MasterKeyring,
    key: bytes | None,
    value: bytes | None,
    headers: list[tuple[str, bytes]],
) -> list[tuple[str, bytes | None, bytes, dict[str, bytes]]]:
    """What the ledger agent parks of one outcome record (offset 9 of partition 0)."""
    from paystream.agents import ledger_sink as agent

    sent = _parked_records(monkeypatch)
    runner = agent.LedgerSinkRunner(agent.settings)
    runner._sink = LedgerSink(app_engine, keyring)
    await runner.run_batch([_Event(_Msg(key, value, headers, 9))])  # type: ignore[list-item]
    return sent


async def test_an_outcome_holding_card_data_is_parked_without_its_bytes(
    app_engine: AsyncEngine, keyring: MasterKeyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ledger refuses it (a last line of defence); a parked copy of its bytes would
    outlive any fix to the original, so the dead letter keeps only where it came from."""

    tenant = f"t{uuid.uuid4().hex[:8]}"
    data = dict(payment_outcome(tenant, "pay_cvc", 1).get_data())
    data["object"] = {**data["object"], "metadata": {"card_cvc": "7373"}}
    bad = _outcome_record(tenant, "payment.succeeded", data)
    sent = await _sink_parks(
        monkeypatch, app_engine, keyring, bad.key, bad.value, list(bad.headers)
    )
    [(topic, _key, value, headers)] = sent
    assert topic == "paystream.events.ledger-dlq" and value == b""
    assert headers["paystream-dlq-reason"] == b"ledger_forbidden_data"
    assert headers["paystream-dlq-redacted"] == b"forbidden_data"
    assert headers["paystream-source"] == b"ev/0/9"
    assert not any(b"7373" in v for v in headers.values())
    assert await _count(app_engine, tenant, Payment) == 0


@pytest.mark.parametrize("refused_for", ["tenant mismatch", "undecodable"])
async def test_card_data_refused_first_for_another_reason_is_not_parked_either(
    app_engine: AsyncEngine, keyring: MasterKeyring, monkeypatch: pytest.MonkeyPatch,
    refused_for: str,
) -> None:  # fmt: skip
    """An outcome refused before its card scan ran (its data names another tenant; bytes
    that are no CloudEvent) was parked with the card number in it (review finding)."""

    tenant = f"t{uuid.uuid4().hex[:8]}"
    data = dict(payment_outcome(tenant, "pay_pan", 1).get_data())
    data["object"] = {**data["object"], "metadata": {"note": "card 4242 4242 4242 4242"}}
    if refused_for == "tenant mismatch":
        data["tenant_id"] = "someone-else"
    bad = _outcome_record(tenant, "payment.succeeded", data)
    headers_in = list(bad.headers)
    if refused_for == "undecodable":
        headers_in = [(k, v) for k, v in headers_in if k != "ce_specversion"]
    sent = await _sink_parks(monkeypatch, app_engine, keyring, bad.key, bad.value, headers_in)
    [(_topic, _key, value, headers)] = sent
    assert headers["paystream-dlq-reason"] != b"ledger_forbidden_data"  # refused for that
    assert value == b"" and headers["paystream-dlq-redacted"] == b"forbidden_data"


@pytest.mark.parametrize("where", ["key", "ce_subject", "another header"])
async def test_card_data_outside_the_value_is_not_parked_either(
    app_engine: AsyncEngine, keyring: MasterKeyring, monkeypatch: pytest.MonkeyPatch,
    where: str,
) -> None:  # fmt: skip
    """Another producer's outcome with a card number in its key or a header: the value
    was dropped, and the key and every header kept, on a topic kept for ever (and shown
    by `dlq list`; review finding). Only the sink's own headers are kept."""

    tenant = f"t{uuid.uuid4().hex[:8]}"
    data = dict(payment_outcome(tenant, "pay_pan", 1).get_data())
    data["tenant_id"] = "someone-else"  # refused for that first
    bad = _outcome_record(tenant, "payment.succeeded", data)
    pan = b"4111 1111 1111 1111"
    key, headers_in = bad.key, list(bad.headers)
    if where == "key":
        key = pan
    else:
        headers_in.append(("ce_subject" if where == "ce_subject" else "x-note", pan))
    sent = await _sink_parks(monkeypatch, app_engine, keyring, key, bad.value, headers_in)
    [(_topic, key_out, value, headers)] = sent
    assert pan not in (key_out or b"") and not any(pan in v for v in headers.values())
    assert headers["paystream-source"] == b"ev/0/9"
    if where == "another header":  # not read by the scan, so not kept
        assert "x-note" not in headers and value == bad.value
        return
    assert (key_out, value, headers["paystream-dlq-redacted"]) == (None, b"", b"forbidden_data")
    assert set(headers) == {
        "paystream-dlq-reason", "paystream-dlq-detail", "paystream-source",
        "paystream-dlq-redacted",
    }  # fmt: skip


# ---- CLI --------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module")
async def cli_database_url(ledger_database_url: str) -> str:
    return await fresh_database(ledger_database_url, prefix="cli")


def test_cli_migrate_and_audit_verify(cli_database_url: str) -> None:
    from click.testing import CliRunner

    from paystream.ledger.cli import audit_group, migrate_command

    env: dict[str, str | None] = {
        "DATABASE_URL": cli_database_url,
        "PAYSTREAM_DB_APP_PASSWORD": "s3cret:'pw",
        "PAYSTREAM_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
    }
    runner = CliRunner()
    up = runner.invoke(migrate_command, [], env=env)
    assert up.exit_code == 0, up.output
    assert "ledger schema at revision" in up.output and "base" not in up.output
    keyless = runner.invoke(
        audit_group, ["verify", "--tenant", "acme"], env={**env, "PAYSTREAM_MASTER_KEY": None}
    )
    assert keyless.exit_code == 1 and "the audit chain is keyed under it" in keyless.output
    ok = runner.invoke(audit_group, ["verify", "--tenant", "acme", "--tenant", "globex"], env=env)
    # Nothing recorded yet: said so, not "intact" (a mistyped id read as a verified chain),
    # nor a success to a script checking the status.
    assert ok.exit_code == 3, ok.output
    assert "0/2 tenant chain(s) intact, 2 with no entries" in ok.output
    assert "acme: no audit entries recorded for this tenant id" in ok.output
    # A chain written under a key since rotated: reported until `keys rotate` records
    # the old key's retirement (as the owner); one under a key nobody has stays reported.
    from paystream.ledger.migrate import app_database_url
    from paystream.tenancy.crypto import MasterKey, MasterKeyring
    from paystream.tenancy.rotation import record_audit_retirements

    old = MasterKey.from_base64(str(env["PAYSTREAM_MASTER_KEY"]))
    app_url = app_database_url(cli_database_url, str(env["PAYSTREAM_DB_APP_PASSWORD"]))

    async def write(tenant: str, keyring: MasterKeyring) -> None:
        engine = create_engine(app_url)
        await write_events(engine, [EventFactory().payment(tenant, "pay_1")], keyring=keyring)
        await engine.dispose()

    asyncio.run(write("acme", MasterKeyring(old)))
    # A key nobody has (beside the ledger's, retired: this version's writer begins no
    # chain under a key the ledger has not seen; an older version's did).
    asyncio.run(write("globex", MasterKeyring(MasterKey.generate(), (old,))))
    new_key = MasterKey.generate()
    rotated = {
        **env,
        "PAYSTREAM_MASTER_KEY": base64.b64encode(new_key.key).decode(),
        "PAYSTREAM_RETIRED_MASTER_KEYS": str(env["PAYSTREAM_MASTER_KEY"]),
    }
    before = runner.invoke(audit_group, ["verify", "--tenant", "acme"], env=rotated)
    assert before.exit_code == 1 and "has recorded none under it" in before.output
    recorded = asyncio.run(
        record_audit_retirements(cli_database_url, MasterKeyring(old).rotated_to(new_key), [])
    )
    assert recorded == 2  # both chains found by the owner, acme's and globex's
    after = runner.invoke(
        audit_group, ["verify", "--tenant", "acme", "--tenant", "globex"], env=rotated
    )
    assert after.exit_code == 1 and "acme: ok, 1 audit entries verified" in after.output
    assert "globex: FAILED" in after.output and "not in the keyring" in after.output
    unknown = runner.invoke(migrate_command, ["--revision", "9999"], env=env)
    assert unknown.exit_code == 1 and "migration:" in unknown.output, unknown.output
    assert "Traceback" not in unknown.output
    # Without the app password the owner (a superuser here) would bypass RLS: refused.
    refused = runner.invoke(
        audit_group, ["verify", "--tenant", "acme"], env={**env, "PAYSTREAM_DB_APP_PASSWORD": None}
    )
    assert refused.exit_code != 0 and "paystream_app" in refused.output
    # A downgrade asks first (one mistyped command dropped the ledger; review finding).
    kept = runner.invoke(migrate_command, ["--downgrade", "base"], env=env, input="n\n")
    assert kept.exit_code == 1 and "data keys" in kept.output, kept.output
    assert "revision base" not in kept.output
    down = runner.invoke(migrate_command, ["--downgrade", "base", "--yes"], env=env)
    assert down.exit_code == 0 and "revision base" in down.output, down.output


async def test_backoff_doubles_to_the_cap_and_never_gives_up(
    app_engine: AsyncEngine, keyring: MasterKeyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    import paystream.ledger.sink as sink_mod

    failures = 1200  # past 2**1024: the delay computation must not overflow
    calls = {"n": 0}
    delays: list[float] = []
    real_write = sink_mod.write_events

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] <= failures:
            raise ConnectionRefusedError("down")
        return await real_write(*args, **kwargs)

    async def no_sleep(delay: float) -> None:
        delays.append(delay)

    monkeypatch.setattr(sink_mod, "write_events", flaky)
    # (the sink's own sleep: asyncio's, patched, made every other task of the loop spin
    # without yielding, and the test hung under xdist)
    sink = LedgerSink(app_engine, keyring, initial_backoff=0.1, max_backoff=5.0, sleep=no_sleep)
    result = await sink.write_batch([payment_outcome_event(f"t{uuid.uuid4().hex[:8]}", "p", 1)])
    assert result.attempts == failures + 1 and result.written.events_written == 1
    assert sink.failed_attempts == failures and not sink.stalled
    assert 0.075 <= delays[0] <= 0.1 and 0.15 <= delays[1] <= 0.2  # 0.1 s, doubling, jittered
    assert max(delays) <= 5.0 and min(delays[10:]) >= 3.75  # capped at 5 s


def test_nesting_is_measured_without_recursion() -> None:
    from paystream.ledger.events import MAX_DEPTH, _deeper_than

    def nested(depth: int) -> object:
        value: object = 1
        for n in range(depth):
            value = [value] if n % 2 else {"k": value}
        return value

    assert not _deeper_than(nested(MAX_DEPTH), MAX_DEPTH)
    assert _deeper_than(nested(MAX_DEPTH + 1), MAX_DEPTH)
    assert _deeper_than(nested(100_000), MAX_DEPTH)  # far past the recursion limit


def test_the_providers_own_text_does_not_count_toward_the_depth() -> None:
    """The card scan skips it (the snapshot's own next_action: the provider's redirect
    data); a next_action nested elsewhere is data like any (review h64h)."""
    from paystream.ledger.events import MAX_DEPTH, _deeper_than

    deep: object = 1
    for _ in range(MAX_DEPTH + 5):
        deep = [deep]
    assert not _deeper_than({"next_action": deep}, MAX_DEPTH)
    assert _deeper_than({"metadata": deep}, MAX_DEPTH)
    assert _deeper_than({"metadata": {"next_action": deep}}, MAX_DEPTH)


def test_skipped_outcomes_are_counted_under_known_types_only() -> None:
    # The label comes from whatever lands on the events topic: a forged type per record
    # would make a new series each, without bound.
    from prometheus_client import REGISTRY

    from paystream.ledger.sink import outcome_to_ledger_events

    def count(label: str) -> float:
        value = REGISTRY.get_sample_value(
            "paystream_ledger_outcomes_skipped_total", {"type": label}
        )
        return value or 0.0

    rejected = build_outcome(
        _cmd("acme"),
        "command.rejected",
        rejection_data("payment.capture", RejectReason.NOT_FOUND, "no such payment"),
    )
    before = count("com.paystream.command.rejected"), count("other")
    assert outcome_to_ledger_events(rejected) == []
    forged = CloudEvent(
        {"id": "f-1", "source": "/x", "type": f"com.paystream.forged.{uuid.uuid4().hex}",
         "tenantid": "acme"},
        {"note": "no entity"},
    )  # fmt: skip
    assert outcome_to_ledger_events(forged) == []
    assert (count("com.paystream.command.rejected"), count("other")) == (
        before[0] + 1,
        before[1] + 1,
    )
    assert count(forged.get_type()) == 0


async def test_an_outcome_with_a_next_action_is_parked_without_its_bytes(
    app_engine: AsyncEngine, keyring: MasterKeyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A payment.requires_action outcome the ledger refuses carries the 3-D Secure URL
    with its client secret, which the ledger keeps as the action's type alone: its dead
    letter (kept for ever, listed) kept it in clear (review finding)."""

    tenant = f"t{uuid.uuid4().hex[:8]}"
    url = "https://x/3ds?payment_intent_client_secret=pi_1_secret_z"
    action = {"type": "redirect_to_url", "redirect_to_url": {"url": url}}
    data = dict(payment_outcome(tenant, "pay_3ds", 1, next_action=action).get_data())
    data["tenant_id"] = "someone-else"  # refused for that
    bad = _outcome_record(tenant, "payment.requires_action", data)
    sent = await _sink_parks(
        monkeypatch, app_engine, keyring, bad.key, bad.value, list(bad.headers)
    )
    [(_topic, _key, value, headers)] = sent
    assert value == b"" and headers["paystream-dlq-redacted"] == b"next_action"
    assert not any(b"secret" in v for v in headers.values())


async def test_a_customer_outcome_is_parked_without_its_personal_data(
    app_engine: AsyncEngine, keyring: MasterKeyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A customer outcome the ledger refuses holds their e-mail and name in clear; its
    dead letter is kept for ever and no erasure reaches it (privacy review finding)."""
    tenant = f"t{uuid.uuid4().hex[:8]}"
    data = {
        "tenant_id": "someone-else",  # refused for that
        "command_id": "cmd_c1",
        "entity_id": "cus_1",
        "object": {"id": "cus_1", "email": "ann@example.com", "name": "Ann"},
    }
    bad = _outcome_record(tenant, "customer.created", data)
    sent = await _sink_parks(
        monkeypatch, app_engine, keyring, bad.key, bad.value, list(bad.headers)
    )
    [(_topic, _key, value, headers)] = sent
    assert value == b"" and headers["paystream-dlq-redacted"] == b"personal_data"
    assert headers["ce_type"] == b"com.paystream.customer.created"
    assert not any(b"ann@" in v for v in headers.values())
