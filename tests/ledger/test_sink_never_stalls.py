"""One hostile or odd outcome never stalls the ledger sink: it is parked, and the rest of
its batch (every tenant on its partition) is stored. Each case once had the batch retried
for ever (review findings)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.agents.ledger_sink import RawRecord, translate_records
from paystream.ledger.sink import (
    FailureKind,
    LedgerSink,
    classify_failure,
    outcome_to_ledger_events,
)
from paystream.settings import CloudEventsMode
from paystream.streams.codec import encode_event
from paystream.streams.record_batches import UNREADABLE_BATCH_HEADER
from paystream.tenancy.crypto import MasterKeyring
from tests.ledger.test_sink import payment_outcome


def _tenant() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


async def _write_within(sink: LedgerSink, events: list[Any], seconds: float = 60.0) -> Any:
    """The batch's result, failing once it has been retried for ``seconds`` (a stall).
    Not a time limit on the first attempt: 35,500 events take about 5 s alone on this
    2-core host (40-70 s before migration 0010), more beside another test process
    (pytest's own timeout bounds that)."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(sink.write_batch(events))
    retrying_since: float | None = None
    while not task.done():
        await asyncio.wait({task}, timeout=0.5)
        if sink.failed_attempts and retrying_since is None:
            retrying_since = loop.time()
        if retrying_since is not None and loop.time() - retrying_since > seconds:
            task.cancel()
            pytest.fail(
                f"still retrying after {seconds} s ({sink.failed_attempts} failed attempts)"
            )
    return task.result()


def _raw(
    outcome: Any, tenant: str, *, timestamp: float = 1.7e9, value: bytes | None = None
) -> RawRecord:
    rec = encode_event(outcome, tenant.encode(), CloudEventsMode.BINARY)
    return RawRecord(rec.key, value or rec.value, dict(rec.headers), timestamp, "ev/0/0")


def test_a_record_time_past_year_9999_is_no_error() -> None:
    """A producer's CreateTime may be any 64-bit value; the outcome's own `time` counts."""
    tenant = _tenant()
    out = translate_records([_raw(payment_outcome(tenant, "pay_ts", 1), tenant, timestamp=1e12)])
    assert out.dead == {} and len(out.events) == 1


def test_a_record_that_fails_translation_unexpectedly_is_parked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whatever a record makes translation raise (a bug of ours), it is parked, not
    retried with its partition behind it."""
    tenant = _tenant()
    ok, odd = (_raw(payment_outcome(tenant, p, 1), tenant) for p in ("pay_ok", "pay_odd"))
    from paystream.agents import ledger_sink

    real = ledger_sink.outcome_to_ledger_events

    def translate(outcome: Any, **kw: Any) -> Any:
        if outcome.get_data()["entity_id"] == "pay_odd":
            raise KeyError("surprise")
        return real(outcome, **kw)

    monkeypatch.setattr(ledger_sink, "outcome_to_ledger_events", translate)
    out = translate_records([ok, odd])
    assert len(out.events) == 1 and list(out.dead) == [1]
    assert out.dead[1].reason == "invalid_event" and "KeyError" in out.dead[1].detail


@pytest.mark.parametrize("where", ["whole", "type"])
def test_a_deeply_nested_next_action_is_kept_as_none(where: str) -> None:
    """Nested ~1000 levels (orjson reads 1024), the database's JSON encoder could not
    take it (it was refused as nested too deeply): a next action is kept as its type, a
    word, or none (review h64f), so nothing of it is left to encode."""
    tenant = _tenant()
    action: Any = "DEEP" if where == "whole" else {"type": "DEEP"}
    outcome = payment_outcome(tenant, "pay_deep", 1, next_action=action)
    rec = encode_event(outcome, tenant.encode(), CloudEventsMode.BINARY)
    deep = rec.value.replace(b'"DEEP"', b"[" * 1000 + b"1" + b"]" * 1000)
    out = translate_records([_raw(outcome, tenant, value=deep)])
    assert not out.dead, out.dead
    [event] = out.events
    assert event.data["next_action"] == (None if where == "whole" else {"type": None})


def test_a_value_the_json_encoder_cannot_take_is_refused_data() -> None:
    """Raised turning events into parameters, before the database saw them: bisected and
    parked, never retried as if the database were down."""
    refused = sa_exc.StatementError("encoding", "INSERT ...", {}, RecursionError("too deep"))
    assert classify_failure(refused) == FailureKind.DATA
    lost = sa_exc.StatementError("connecting", "INSERT ...", {}, ConnectionResetError())
    assert classify_failure(lost) != FailureKind.DATA


@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_batch_naming_more_entities_than_a_statement_takes_is_stored(
    app_engine: AsyncEngine, keyring: MasterKeyring
) -> None:
    """500 outcomes (one sink batch) of one tenant naming 70 related refunds each: 35,500
    ledger events, past asyncpg's 32,767 bind parameters in one IN list (an
    InterfaceError, read as a lost connection)."""
    tenant = _tenant()
    events: list[Any] = []
    for n in range(500):
        related = [
            {"entity_type": "refund", "entity_id": f"re_{n}_{i}", "version": 1,
             "object": {"amount": 1, "currency": "USD", "status": "succeeded"}}
            for i in range(70)
        ]  # fmt: skip
        events += outcome_to_ledger_events(payment_outcome(tenant, f"pay_{n}", 1, related=related))
    assert len(events) > 32_767
    sink = LedgerSink(app_engine, keyring, initial_backoff=0.01, max_backoff=0.05)
    result = await _write_within(sink, events)
    assert result.dead_letters == [] and result.attempts == 1
    assert result.written.events_written == len(events)


async def test_the_refused_record_is_parked_not_its_twin_under_the_same_event_id(
    app_engine: AsyncEngine, keyring: MasterKeyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch holding an outcome whose id an older version reused for another payment,
    and a re-emission of the stored one under that id: the refused record is parked.
    Found by event id, the harmless twin was parked, and the other payment's outcome
    was neither stored nor parked (review finding)."""
    from types import SimpleNamespace

    from paystream.agents import ledger_sink
    from paystream.ledger.sink import LedgerSink
    from paystream.settings import load_settings

    def message(outcome: Any, tenant: str, offset: int) -> Any:
        rec = encode_event(outcome, tenant.encode(), CloudEventsMode.BINARY)
        return SimpleNamespace(
            message=SimpleNamespace(
                key=rec.key, value=rec.value, headers=list(rec.headers), timestamp=1.7e9,
                topic="ev", partition=0, offset=offset,
            )
        )  # fmt: skip

    t = f"t{uuid.uuid4().hex[:8]}"
    day1 = payment_outcome(t, "pay_day1", 1, command_id="c-7")
    day3 = payment_outcome(t, "pay_day3", 1, command_id="c-7")
    runner = ledger_sink.LedgerSinkRunner(load_settings())
    runner._sink = LedgerSink(app_engine, keyring)
    parked: list[tuple[str, str]] = []

    async def park(records: Any, dead: Any) -> None:
        parked.extend((records[i].source, d.reason) for i, d in dead.items())

    monkeypatch.setattr(runner, "_park", park)
    await runner.run_batch([message(day1, t, 1)])
    await runner.run_batch([message(day3, t, 5), message(day1, t, 6)])
    assert parked == [("ev/0/5", "event_id_conflict")]


def test_what_stands_for_a_record_batch_no_parser_reads_is_parked_saying_so() -> None:
    """(streams/record_batches.py hands one on for such a batch of outcomes.)"""
    tenant = _tenant()
    ok = _raw(payment_outcome(tenant, "pay_ok", 1), tenant)
    detail = "record batch at ev[0] offsets 7-9 unreadable from offset 7 (EOFError: ...)"
    stand_in = RawRecord(None, b"\x00batch", {UNREADABLE_BATCH_HEADER: detail.encode()}, 1.0)
    out = translate_records([ok, stand_in])
    assert len(out.events) == 1 and list(out.dead) == [1]
    assert (out.dead[1].reason, out.dead[1].detail) == ("undecodable", detail)
