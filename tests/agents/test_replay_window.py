"""A re-driven command the worker reaches after the provider may have forgotten its key.

`dlq replay` holds back records parked too long when it re-sends them; the worker checks
again when it runs one (commands-topic lag after an outage, a long replay): a command
whose first attempt is that old is parked again (reason ``stale``), never run."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import pytest_asyncio

from paystream import dlq
from paystream.agents.pipeline import Inbound
from paystream.client import build_command
from paystream.dlq import ParkedRecord
from paystream.first_attempt import FIRST_ATTEMPT_HEADER, SEAL_HEADER, FirstAttemptSeals
from paystream.gateways.simulator import SimulatorGateway
from paystream.settings import CloudEventsMode
from paystream.streams.codec import encode_event
from paystream.tenancy.crypto import MasterKey
from paystream.tenancy.models import Tenant
from tests.agents.conftest import running_harness
from tests.agents.harness import Harness, kind, new_tenant_id, outcome_of

pytestmark = pytest.mark.asyncio

_BODY = {"amount": 5000, "currency": "USD", "payment_method_token": "pm_card_visa",
         "payment_id": "p1"}  # fmt: skip


def _record(tenant: str, offset: int, headers: dict[str, bytes] | None = None) -> Inbound:
    event = build_command("payment.create", tenant, _BODY, command_id="c1")
    rec = encode_event(event, tenant.encode(), CloudEventsMode.BINARY)
    return Inbound(rec.key, rec.value, {**dict(rec.headers), **(headers or {})},
                   int(time.time() * 1000), "paystream.commands", 0, offset)  # fmt: skip


async def _charges(h: Harness, record: dict[str, Any]) -> int:
    gateway = h.pool.get(Tenant.model_validate(record))
    assert isinstance(gateway, SimulatorGateway)
    return sum(1 for e in await gateway.effects() if e.kind == "charge")


async def test_a_replayed_command_reached_after_the_window_is_parked_again(
    harness: Harness,
) -> None:
    t = new_tenant_id()
    # The provider charges p1, its answers are lost: the command is parked.
    harness.add_tenant(t, gateway_options={"lose_response_first": {f"pse:{t}:payment:p1": 3}})
    first = _record(t, 1)
    emits = await harness.processor.process(first)
    assert [e.topic for e in emits] == [harness.settings.retry_topic]
    parked = dict(emits[0].record.headers)
    assert await _charges(harness, harness.tenants[t]) == 1
    # The tenant gets a per-payment cap meanwhile.
    harness.tenants[t] = {**harness.tenants[t], "limits": {"max_payment_amount": {"USD": 1000}}}
    # `dlq replay` re-sent it inside the window (first attempt header carried), but the
    # worker reaches it only after the window: our record of it has expired.
    key = f"{t}:c1"
    harness.idempotency[key] = {**harness.idempotency[key], "expires_at": time.time() - 1}
    day_ago = int(time.time() * 1000) - 25 * 3_600_000
    replayed = _record(t, 2, {"paystream-first-attempt-ms": str(day_ago).encode()})
    assert int(parked["paystream-first-attempt-ms"]) > 0
    emits = await harness.processor.process(replayed)
    assert outcome_of(harness.settings, emits) is None
    assert [e.topic for e in emits] == [harness.settings.retry_topic]
    again = dict(emits[0].record.headers)
    assert again["paystream-park-reason"] == b"stale"
    assert again["paystream-first-attempt-ms"] == str(day_ago).encode()  # keeps its age
    assert await _charges(harness, harness.tenants[t]) == 1


async def test_a_live_parked_command_past_the_window_is_parked_again(harness: Harness) -> None:
    """Its record still live (parked at the end of a long outage), but first run longer
    ago than the provider keeps keys: not sent to the provider again."""
    t = new_tenant_id()
    harness.add_tenant(t, gateway_options={"lose_response_first": {f"pse:{t}:payment:p1": 3}})
    assert [e.topic for e in await harness.processor.process(_record(t, 1))] == [
        harness.settings.retry_topic
    ]
    day_ago = int(time.time() * 1000) - 25 * 3_600_000
    emits = await harness.processor.process(
        _record(t, 2, {"paystream-first-attempt-ms": str(day_ago).encode()})
    )
    assert outcome_of(harness.settings, emits) is None
    assert dict(emits[0].record.headers)["paystream-park-reason"] == b"stale"
    assert harness.idempotency[f"{t}:c1"]["state"] == "parked"
    assert await _charges(harness, harness.tenants[t]) == 1
    # Inside the window, the same replay runs: one answer, for the one charge.
    fresh = int(time.time() * 1000) - 3_600_000
    out = outcome_of(
        harness.settings,
        await harness.processor.process(
            _record(t, 3, {"paystream-first-attempt-ms": str(fresh).encode()})
        ),
    )
    assert out is not None and kind(out) == "payment.succeeded"
    assert await _charges(harness, harness.tenants[t]) == 1


async def test_without_a_master_key_a_made_up_first_attempt_parks_its_own_command(
    harness: Harness,
) -> None:
    """With no master key there is nothing to seal first-attempt times with: one a
    producer makes up parks that producer's command (as stale, unrun), and a replay holds
    back only its partition's records behind it (tests/test_dlq.py). With a key, it is
    ignored (below)."""
    t = new_tenant_id()
    harness.add_tenant(t)
    emits = await harness.processor.process(_record(t, 5, {"paystream-first-attempt-ms": b"1"}))
    assert outcome_of(harness.settings, emits) is None
    assert dict(emits[0].record.headers)["paystream-park-reason"] == b"stale"
    assert await _charges(harness, harness.tenants[t]) == 0


class _CapturingProducer:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send_and_wait(self, topic: str, value: Any, **kw: Any) -> None:
        self.sent.append({"topic": topic, "value": value, **kw})


async def test_include_stale_after_reconciling_runs_the_command(harness: Harness) -> None:
    """A payment parked by a provider outage 25 h ago (the provider never charged it).
    The operator checks with the provider, as README says, and runs
    `dlq replay --include-stale-as-of`: the worker runs it (its first attempt is kept)."""
    t, rec = await _stale_parked(harness)
    assert await _charges(harness, harness.tenants[t]) == 0
    # The outage is over; the operator reconciled (nothing charged) and re-drives it.
    replayed = await _resent(harness, rec, reconciled=True)  # --include-stale-as-of
    out = outcome_of(harness.settings, await harness.processor.process(replayed))
    assert out is not None, "re-driven with --include-stale-as-of, parked again as stale, unrun"
    assert replayed.headers["paystream-first-attempt-ms"] == str(rec.first_seen_ms).encode()
    assert kind(out) == "payment.succeeded"


# --- with a master key: only a time paystream sealed counts (first_attempt.py) ---------


@pytest_asyncio.fixture
async def keyed(redis_url: str) -> AsyncIterator[Harness]:
    async with running_harness(redis_url, master_key=_KEY) as h:
        yield h


_KEY = base64.b64encode(MasterKey.generate().key).decode()


def _sealed(h: Harness, rec: Inbound, first_ms: int, **override: bytes) -> Inbound:
    """``rec`` as `dlq replay` re-sends it: first-attempt time and its seal."""
    headers = {**rec.headers, FIRST_ATTEMPT_HEADER: str(first_ms).encode()}
    seal = FirstAttemptSeals.from_settings(h.settings).seal(rec.key, rec.value, headers, first_ms)
    assert seal is not None
    headers = {**headers, SEAL_HEADER: seal, **override}
    return Inbound(rec.key, rec.value, headers, rec.timestamp_ms, rec.topic, 0, rec.offset)


async def test_a_made_up_first_attempt_is_ignored(keyed: Harness) -> None:
    """A producer stamps a new command as a day old: it runs as any command does (it was
    parked unrun, and held its retry partition back in every replay)."""
    t = new_tenant_id()
    keyed.add_tenant(t)
    day_ago = str(int(time.time() * 1000) - 25 * 3_600_000).encode()
    emits = await keyed.processor.process(_record(t, 5, {FIRST_ATTEMPT_HEADER: day_ago}))
    out = outcome_of(keyed.settings, emits)
    assert out is not None and kind(out) == "payment.succeeded"
    assert await _charges(keyed, keyed.tenants[t]) == 1


@pytest.mark.parametrize(
    "forgery",
    ["no-seal", "seal-of-another-time", "seal-of-another-command", "garbage", "unknown-key"],
)
async def test_a_parked_command_does_not_take_a_forged_age(keyed: Harness, forgery: str) -> None:
    """Parked now, it records its own record time as its first attempt, whatever the
    header claims, unless paystream sealed that claim for this very command."""
    t = new_tenant_id()
    keyed.add_tenant(t, gateway_options={"fail_first": {"*": 50}})  # parks the command
    rec = _record(t, 1)
    day_ago = int(time.time() * 1000) - 25 * 3_600_000
    genuine = _sealed(keyed, rec, day_ago + 1)
    other = _sealed(keyed, _record(new_tenant_id(), 1), day_ago)
    seal = {
        "no-seal": None,
        "seal-of-another-time": genuine.headers[SEAL_HEADER],
        "seal-of-another-command": other.headers[SEAL_HEADER],
        "garbage": b"not a seal",
        "unknown-key": b"mk-0000000000000000." + genuine.headers[SEAL_HEADER].split(b".")[1],
    }[forgery]
    headers = {**rec.headers, FIRST_ATTEMPT_HEADER: str(day_ago).encode()}
    if seal is not None:
        headers[SEAL_HEADER] = seal
    forged = Inbound(rec.key, rec.value, headers, rec.timestamp_ms, rec.topic, 0, 2)
    emits = await keyed.processor.process(forged)
    [parked] = [e for e in emits if e.topic == keyed.settings.retry_topic]
    parked_headers = dict(parked.record.headers)
    assert parked_headers.get("paystream-park-reason") != b"stale"
    assert int(parked_headers[FIRST_ATTEMPT_HEADER]) == rec.timestamp_ms
    assert SEAL_HEADER not in parked_headers  # (the retry topic is paystream's own)


async def test_a_sealed_first_attempt_past_the_window_is_parked_again(keyed: Harness) -> None:
    t = new_tenant_id()
    keyed.add_tenant(t)
    day_ago = int(time.time() * 1000) - 25 * 3_600_000
    emits = await keyed.processor.process(_sealed(keyed, _record(t, 1), day_ago))
    assert outcome_of(keyed.settings, emits) is None
    parked = dict(emits[0].record.headers)
    assert parked["paystream-park-reason"] == b"stale"
    assert parked[FIRST_ATTEMPT_HEADER] == str(day_ago).encode()
    assert await _charges(keyed, keyed.tenants[t]) == 0


async def test_a_replay_seals_what_it_resends_and_the_age_survives_another_park(
    keyed: Harness,
) -> None:
    """Parked 20 h ago, re-sent by `dlq replay` while the provider is still down: parked
    again with its first attempt of 20 h ago (not the re-send's), so the next replay
    holds it back once it is past the window."""
    t = new_tenant_id()
    keyed.add_tenant(t, gateway_options={"fail_first": {"*": 50}})
    hours_ago = int(time.time() * 1000) - 20 * 3_600_000
    event = build_command("payment.create", t, _BODY, command_id="c1")
    raw = encode_event(event, t.encode(), CloudEventsMode.BINARY)
    first = Inbound(raw.key, raw.value, dict(raw.headers), hours_ago, "paystream.commands", 0, 1)
    [parked] = await keyed.processor.process(first)
    rec = ParkedRecord(keyed.settings.retry_topic, 0, 0, parked.record.key, parked.record.value,
                       tuple(parked.record.headers), int(time.time() * 1000))  # fmt: skip
    producer = _CapturingProducer()
    await dlq._resend(producer, keyed.settings, rec, {0})
    (resent,) = producer.sent
    assert SEAL_HEADER in dict(resent["headers"])
    replayed = Inbound(resent["key"], resent["value"], dict(resent["headers"]),
                       int(time.time() * 1000), "paystream.commands", 0, 2)  # fmt: skip
    [again] = await keyed.processor.process(replayed)
    assert dict(again.record.headers)[FIRST_ATTEMPT_HEADER] == str(hours_ago).encode()
    assert await _charges(keyed, keyed.tenants[t]) == 0


async def test_a_seal_made_before_a_master_key_rotation_still_counts(redis_url: str) -> None:
    """Sealed under the key being rotated out: believed while PAYSTREAM_RETIRED_MASTER_KEYS
    holds it (as for the data keys it wrapped), not after."""
    old, new = (base64.b64encode(MasterKey.generate().key).decode() for _ in range(2))
    t = new_tenant_id()
    day_ago = int(time.time() * 1000) - 25 * 3_600_000
    async with running_harness(redis_url, master_key=old) as before:
        resent = _sealed(before, _record(t, 1), day_ago)
    async with running_harness(redis_url, master_key=new, retired_master_keys=old) as rotated:
        rotated.add_tenant(t)
        emits = await rotated.processor.process(resent)
        assert dict(emits[0].record.headers)["paystream-park-reason"] == b"stale"
    async with running_harness(redis_url, master_key=new) as dropped:
        dropped.add_tenant(t)
        out = outcome_of(dropped.settings, await dropped.processor.process(resent))
        assert out is not None and kind(out) == "payment.succeeded"


async def test_a_dead_letter_without_headers_gets_its_first_attempt_not_its_body_time(
    keyed: Harness,
) -> None:
    """A structured command with no Kafka headers at all, too large: dead-lettered with
    its bytes (replayable), it once carried no first attempt, so a replay took its age
    from the `time` in its body, which the producer chose: year 2000 held back its
    whole partition (review finding)."""
    t = new_tenant_id()
    keyed.add_tenant(t)
    now = int(time.time() * 1000)
    body = orjson.dumps(
        {
            "specversion": "1.0",
            "id": "forged-1",
            "source": "/x",
            "type": "com.paystream.command.payment.create",
            "tenantid": t,
            "time": "2000-01-01T00:00:00Z",
            "data": {"pad": "a" * (keyed.settings.command_max_bytes + 10)},
        }
    )
    emits = await keyed.processor.process(Inbound(t.encode(), body, {}, now, "c", 0, 7))
    [letter] = [e for e in emits if e.topic == keyed.settings.dlq_topic]
    assert dict(letter.record.headers)[FIRST_ATTEMPT_HEADER] == str(now).encode()
    parked = ParkedRecord(keyed.settings.dlq_topic, 0, 0, letter.record.key,
                          letter.record.value, tuple(letter.record.headers), now)  # fmt: skip
    # (Too large: answered, so never replayed since; its age is read all the same.)
    assert not parked.replayable and parked.first_seen_ms == now


async def _stale_parked(h: Harness) -> tuple[str, ParkedRecord]:
    """A payment parked by a provider outage 25 h ago (never charged); the outage over.
    The tenant, and the parked record as `dlq replay` reads it."""
    t = new_tenant_id()
    h.add_tenant(t, gateway_options={"fail_first": {f"pse:{t}:payment:p1": 50}})
    event = build_command("payment.create", t, _BODY, command_id="c1")
    raw = encode_event(event, t.encode(), CloudEventsMode.BINARY)
    day_ago = int(time.time() * 1000) - 25 * 3_600_000
    first = Inbound(raw.key, raw.value, dict(raw.headers), day_ago, "paystream.commands", 0, 1)
    [parked] = await h.processor.process(first)
    h.tenants[t] = {**h.tenants[t], "gateway_options": {}}
    return t, ParkedRecord(h.settings.retry_topic, 0, 0, parked.record.key, parked.record.value,
                           tuple(parked.record.headers), int(time.time() * 1000))  # fmt: skip


async def _resent(h: Harness, rec: ParkedRecord, *, reconciled: bool) -> Inbound:
    producer = _CapturingProducer()
    await dlq._resend(producer, h.settings, rec, {0}, reconciled=reconciled)
    (resent,) = producer.sent
    return Inbound(resent["key"], resent["value"], dict(resent["headers"]),
                   int(time.time() * 1000), "paystream.commands", 0, 2)  # fmt: skip


async def test_a_sealed_reconciled_replay_runs(keyed: Harness) -> None:
    t, rec = await _stale_parked(keyed)
    replayed = await _resent(keyed, rec, reconciled=True)
    out = outcome_of(keyed.settings, await keyed.processor.process(replayed))
    assert out is not None and kind(out) == "payment.succeeded"
    assert await _charges(keyed, keyed.tenants[t]) == 1


@pytest.mark.parametrize("how", ["added-to-a-sealed-replay", "unsealed"])
async def test_a_reconciled_mark_paystream_did_not_seal_is_held(keyed: Harness, how: str) -> None:
    """The client retries the parked payment under its key a day later (its record says
    when it was first let through): held, unless a person reconciled it. Anyone who can
    produce to the commands topic could add the mark to their own stale retries: it
    counts only under paystream's seal."""
    t, rec = await _stale_parked(keyed)
    keyed.idempotency[f"{t}:c1"]["first_attempt_ms"] -= 25 * 3_600_000
    resent = await _resent(keyed, rec, reconciled=False)
    headers = {**resent.headers, "paystream-reconciled": b"1"}
    if how == "unsealed":
        del headers[SEAL_HEADER]
    forged = Inbound(resent.key, resent.value, headers, resent.timestamp_ms, resent.topic, 0, 3)
    emits = await keyed.processor.process(forged)
    assert outcome_of(keyed.settings, emits) is None
    assert [dict(e.record.headers).get("paystream-park-reason") for e in emits] == [b"stale"]
    assert await _charges(keyed, keyed.tenants[t]) == 0
    sealed = await _resent(keyed, rec, reconciled=True)  # by `dlq replay`: it runs
    out = outcome_of(keyed.settings, await keyed.processor.process(sealed))
    assert out is not None and kind(out) == "payment.succeeded"


_3DS = {"amount": 1500, "currency": "EUR", "payment_method_token": "pm_card_authenticationRequired",
        "payment_id": "p1"}  # fmt: skip


@pytest.mark.parametrize("mode", [CloudEventsMode.BINARY, CloudEventsMode.STRUCTURED])
async def test_a_refresh_parked_past_the_window_runs(keyed: Harness, mode: CloudEventsMode) -> None:
    """A read has nothing to reconcile with the provider: re-sent by `dlq replay` a day
    after it was parked, unreconciled, it asks the provider again and the payment moves
    on (a create so re-sent is held for a person: test_a_reconciled_mark_...)."""
    t = new_tenant_id()
    keyed.add_tenant(t)
    created = await keyed.send("payment.create", t, _3DS)
    assert kind(created) == "payment.requires_action"
    # The provider is down when the refresh comes, a day ago: parked.
    keyed.tenants[t] = {**keyed.tenants[t], "gateway_options": {"fail_first": {"*": 50}}}
    event = build_command("payment.refresh", t, {"payment_id": "p1"}, command_id="r1")
    raw = encode_event(event, t.encode(), mode)
    day_ago = int(time.time() * 1000) - 25 * 3_600_000
    first = Inbound(raw.key, raw.value, dict(raw.headers), day_ago, "paystream.commands", 0, 1)
    [parked] = await keyed.processor.process(first)
    assert parked.topic == keyed.settings.retry_topic
    # Its record says so too (as after a crash, before the first attempt was recorded).
    assert keyed.idempotency[f"{t}:r1"]["state"] == "parked"
    keyed.idempotency[f"{t}:r1"]["first_attempt_ms"] = day_ago
    keyed.tenants[t] = {**keyed.tenants[t], "gateway_options": {}}
    provider_id = str(keyed.tables.payments[f"{t}:p1"]["provider_payment_id"])
    gateway = keyed.pool.get(Tenant.model_validate(keyed.tenants[t]))
    assert isinstance(gateway, SimulatorGateway)
    await gateway.complete_authentication(provider_id)

    rec = ParkedRecord(keyed.settings.retry_topic, 0, 0, parked.record.key, parked.record.value,
                       tuple(parked.record.headers), int(time.time() * 1000))  # fmt: skip
    assert rec.reads_only and rec.first_seen_ms == day_ago
    replayed = await _resent(keyed, rec, reconciled=False)
    out = outcome_of(keyed.settings, await keyed.processor.process(replayed))
    assert out is not None and kind(out) == "payment.succeeded", out
    assert keyed.tables.payments[f"{t}:p1"]["status"] == "succeeded"


async def test_a_create_claiming_to_be_a_refresh_is_not_a_read(keyed: Harness) -> None:
    """`dlq replay` reads a command's type as the worker does: a structured create with a
    ce_type header naming a refresh is a create (stale: held), whatever the header says."""
    t, rec = await _stale_parked(keyed)
    assert not rec.reads_only
    event = build_command("payment.create", t, _BODY, command_id="c1")
    raw = encode_event(event, t.encode(), CloudEventsMode.STRUCTURED)
    forged = ParkedRecord(rec.topic, 0, 0, raw.key, raw.value,
                          (*raw.headers, ("ce_type", b"com.paystream.command.payment.refresh")),
                          rec.timestamp_ms)  # fmt: skip
    assert not forged.reads_only
