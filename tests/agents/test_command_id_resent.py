"""The same command (its id, its request) sent again under another idempotency key, or
without the one it first had: it is the command it was, not a new request. Run under
its new key while its first attempt was parked, it asked the provider under a key the
provider had never seen: charged or refunded twice, or answered twice differently
(review finding)."""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest

from paystream.agents.pipeline import Inbound
from paystream.client import build_command
from paystream.first_attempt import FIRST_ATTEMPT_HEADER
from paystream.gateways.simulator import SimulatorGateway
from paystream.settings import CloudEventsMode
from paystream.streams.codec import encode_event
from paystream.tenancy.models import Tenant
from tests.agents.harness import Harness, data, kind, new_tenant_id, set_pipeline_clock
from tests.agents.test_let_through import _answer

pytestmark = pytest.mark.asyncio

_offsets = itertools.count(1)
_PAY = {"amount": 5000, "currency": "USD", "payment_method_token": "pm_card_visa"}


def _rec(
    tenant: str,
    command_type: str,
    body: dict[str, Any],
    command_id: str,
    key: str | None = None,
    *,
    redrive: bool = False,
) -> Inbound:
    """A command record; ``redrive``: as `dlq replay` sends a parked one."""
    event = build_command(command_type, tenant, body, command_id=command_id, idempotency_key=key)
    rec = encode_event(event, tenant.encode(), CloudEventsMode.BINARY)
    headers = dict(rec.headers)
    if redrive:
        headers[FIRST_ATTEMPT_HEADER] = str(int(time.time() * 1000)).encode()
    return Inbound(
        rec.key, rec.value, headers, int(time.time() * 1000), "paystream.commands", 0,
        next(_offsets),
    )  # fmt: skip


async def _parked(h: Harness, rec: Inbound) -> None:
    emits = await h.processor.process(rec)
    assert [e.topic for e in emits] == [h.settings.retry_topic]


async def _c1_parked_under_k1(h: Harness, losses: int = 3) -> str:
    """A new tenant whose provider charged c1's payment under k1 and lost the first
    ``losses`` answers: c1 parked. Returns the tenant."""
    t = new_tenant_id()
    h.add_tenant(t, gateway_options={"lose_response_first": {f"ps:{t}:k1": losses}})
    await _parked(h, _rec(t, "payment.create", _PAY, "c1", "k1"))
    return t


async def _effects(h: Harness, t: str, effect: str) -> int:
    gateway = h.pool.get(Tenant.model_validate(h.tenants[t]))
    assert isinstance(gateway, SimulatorGateway)
    return sum(1 for e in await gateway.effects() if e.kind == effect)


@pytest.mark.parametrize(
    ("first_key", "then_key"),
    [(None, "k2"), ("k1", None), ("k1", "k2")],
    ids=["keyless-then-keyed", "keyed-then-keyless", "keyed-then-other-key"],
)
async def test_a_parked_charge_sent_again_under_another_key_charges_once(
    harness: Harness, first_key: str | None, then_key: str | None
) -> None:
    h = harness
    t = new_tenant_id()
    provider_key = f"ps:{t}:{first_key or 'c1'}"
    h.add_tenant(t, gateway_options={"lose_response_first": {provider_key: 3}})
    await _parked(h, _rec(t, "payment.create", _PAY, "c1", first_key))
    again = await _answer(h, _rec(t, "payment.create", _PAY, "c1", then_key))
    assert kind(again) == "payment.succeeded", data(again)
    redriven = await _answer(h, _rec(t, "payment.create", _PAY, "c1", first_key, redrive=True))
    assert redriven.get_id() == again.get_id() and kind(redriven) == kind(again)
    assert await _effects(h, t, "charge") == 1


async def test_a_parked_refund_sent_again_under_another_key_refunds_once(
    harness: Harness,
) -> None:
    h = harness
    t = new_tenant_id()
    h.add_tenant(t, gateway_options={"lose_response_first": {f"ps:{t}:r1": 3}})
    paid = await _answer(h, _rec(t, "payment.create", {**_PAY, "payment_id": "p1"}, "pc"))
    assert kind(paid) == "payment.succeeded"
    refund = {"payment_id": "p1", "amount": 2000}
    await _parked(h, _rec(t, "refund.create", refund, "r1"))
    again = await _answer(h, _rec(t, "refund.create", refund, "r1", "k2"))
    assert kind(again) == "refund.succeeded", data(again)
    assert await _effects(h, t, "refund") == 1
    assert h.tables.payments[f"{t}:p1"]["amount_refunded"] == 2000


async def test_a_parked_capture_sent_again_under_another_key_is_answered_once(
    harness: Harness,
) -> None:
    """It was answered invalid_state (the provider had captured under the first key),
    then the parked capture, re-driven, payment.succeeded: two answers to one command."""
    h = harness
    t = new_tenant_id()
    h.add_tenant(t, gateway_options={"lose_response_first": {f"ps:{t}:cap1": 3}})
    body = {**_PAY, "payment_id": "p1", "capture": "manual"}
    assert kind(await _answer(h, _rec(t, "payment.create", body, "pc"))) == "payment.authorized"
    await _parked(h, _rec(t, "payment.capture", {"payment_id": "p1"}, "cap1"))
    again = await _answer(h, _rec(t, "payment.capture", {"payment_id": "p1"}, "cap1", "k2"))
    redriven = await _answer(
        h, _rec(t, "payment.capture", {"payment_id": "p1"}, "cap1", redrive=True)
    )
    assert kind(again) == kind(redriven) == "payment.succeeded", (data(again), data(redriven))
    assert again.get_id() == redriven.get_id()


async def test_an_answered_command_sent_again_under_another_key_is_the_same_event(
    harness: Harness,
) -> None:
    """Answered already: the stored outcome again, byte for byte, as for its key."""
    h = harness
    t = h.add_tenant()
    first = await h.processor.process(_rec(t, "payment.create", _PAY, "c1", "k1"))
    again = await h.processor.process(_rec(t, "payment.create", _PAY, "c1", "k2"))
    assert [e.record for e in again] == [e.record for e in first]
    assert await _effects(h, t, "charge") == 1


async def test_another_request_under_the_id_is_still_a_conflict(harness: Harness) -> None:
    h = harness
    t = new_tenant_id()
    h.add_tenant(t, gateway_options={"lose_response_first": {f"ps:{t}:c1": 3}})
    await _parked(h, _rec(t, "payment.create", _PAY, "c1"))
    other = await _answer(h, _rec(t, "payment.create", {**_PAY, "amount": 6000}, "c1", "k2"))
    assert data(other)["reason"] == "idempotency_conflict", data(other)
    assert await _effects(h, t, "charge") == 1


@pytest.mark.parametrize("change", ["suspended", "removed"])
async def test_the_command_sent_again_redelivered_after_a_tenant_change_is_the_same_event(
    harness: Harness, change: str
) -> None:
    """Answered as the first (under its key), then redelivered once the tenant was
    suspended or removed: the same event (it was parked, or answered tenant_suspended,
    as a command of its own key; review finding)."""
    h = harness
    t = h.add_tenant()
    await h.processor.process(_rec(t, "payment.create", _PAY, "c1", "k1"))
    again = _rec(t, "payment.create", _PAY, "c1", "k2")
    first = await h.processor.process(again)
    if change == "suspended":
        h.tenants[t] = {**h.tenants[t], "status": "suspended"}
    else:
        del h.tenants[t]
    assert [e.record for e in await h.processor.process(again)] == [e.record for e in first]
    assert not [k for k in h.idempotency if k.endswith(":k2")]


async def test_a_refusal_sent_again_redelivered_after_a_suspension_is_the_same_event(
    harness: Harness,
) -> None:
    h = harness
    t = h.add_tenant()
    assert kind(await _answer(h, _rec(t, "payment.create", {**_PAY, "payment_id": "p1"}, "pc")))
    refused = await h.processor.process(_rec(t, "payment.capture", {"payment_id": "p1"}, "c", "k1"))
    again = _rec(t, "payment.capture", {"payment_id": "p1"}, "c", "k2")
    first = await h.processor.process(again)
    assert [e.record for e in first] == [e.record for e in refused]
    h.tenants[t] = {**h.tenants[t], "status": "suspended"}
    assert [e.record for e in await h.processor.process(again)] == [e.record for e in first]


async def test_a_parked_charge_sent_again_while_suspended_finishes_as_it(
    harness: Harness,
) -> None:
    """A suspended tenant's command let through before finishes (suspension stops new
    business): so does the same command under another key, not refused tenant_suspended
    while the first, re-driven once resumed, succeeds."""
    h = harness
    t = await _c1_parked_under_k1(h)
    record = h.tenants[t]
    h.tenants[t] = {**record, "status": "suspended"}
    again = await _answer(h, _rec(t, "payment.create", _PAY, "c1", "k2"))
    h.tenants[t] = record
    redriven = await _answer(h, _rec(t, "payment.create", _PAY, "c1", "k1", redrive=True))
    assert kind(again) == kind(redriven) == "payment.succeeded", data(again)
    assert await _effects(h, t, "charge") == 1


async def test_the_ids_pointer_lasts_as_long_as_the_parked_record(harness: Harness) -> None:
    """Past the idempotency window the purge took the id's pointer and left the parked
    record: the command sent again under another key ran as new (review finding)."""
    h = harness
    t = await _c1_parked_under_k1(h)
    assert h.processor.purge_expired(t, time.time() + 2 * 86_400) == 0
    assert f"{t}:\x1fid:c1" in h.idempotency
    again = await _answer(h, _rec(t, "payment.create", _PAY, "c1", "k2"))
    assert kind(again) == "payment.succeeded"
    assert await _effects(h, t, "charge") == 1


async def test_the_command_sent_again_after_a_retry_finished_its_key_is_answered_as_it(
    harness: Harness,
) -> None:
    """c1 parked under k1; the client's retry under k1 (a new id, c9) finished it; c1
    sent again under k2 found k1's record naming c9, and ran as new: a second charge
    (review finding). Its pointer says c1's request ran under k1: answered as k1's."""
    h = harness
    t = await _c1_parked_under_k1(h)
    retried = await _answer(h, _rec(t, "payment.create", _PAY, "c9", "k1"))
    assert kind(retried) == "payment.succeeded"
    again = await _answer(h, _rec(t, "payment.create", _PAY, "c1", "k2"))
    assert kind(again) == "payment.succeeded" and again.get_id() == retried.get_id()
    assert await _effects(h, t, "charge") == 1


async def test_a_pointer_written_before_pointers_lasted_is_kept_for_its_parked_record(
    harness: Harness,
) -> None:
    """A park made by the version before: its id's pointer (naming no key) expires a
    day after it was written, the parked record stays. The scan at start-up finds the
    pair, and the purge keeps the pointer as long as the record (review finding)."""
    h = harness
    t = await _c1_parked_under_k1(h)
    pointer = f"{t}:\x1fid:c1"
    old = {k: v for k, v in h.idempotency[pointer].items() if k != "key"}
    h.idempotency[pointer] = {**old, "expires_at": time.time() + 86_400}
    h.processor.rescan_expiry()  # as at start-up, after the upgrade
    h.processor.purge_expired(t, time.time() + 2 * 86_400)
    assert pointer in h.idempotency
    again = await _answer(h, _rec(t, "payment.create", _PAY, "c1", "k2"))
    assert kind(again) == "payment.succeeded"
    assert await _effects(h, t, "charge") == 1


def _legacy_pointer(h: Harness, t: str, expires_in: float) -> str:
    """c1's pointer as the version before wrote it: naming no key, expiring a day after
    it was written (``expires_in`` seconds from now)."""
    pointer = f"{t}:\x1fid:c1"
    old = {k: v for k, v in h.idempotency[pointer].items() if k != "key"}
    h.idempotency[pointer] = {**old, "expires_at": time.time() + expires_in}
    return pointer


async def test_a_legacy_pointer_re_parked_names_its_key(harness: Harness) -> None:
    """Re-parked (here: held back as stale) after the upgrade, the legacy pointer was
    made to last as long as the park but still named no key: the command sent again
    under another key ran as new (review finding)."""
    h = harness
    t = await _c1_parked_under_k1(h)
    pointer = _legacy_pointer(h, t, 1800)
    h.idempotency[f"{t}:k1"]["first_attempt_ms"] = int((time.time() - 23.5 * 3600) * 1000)
    h.processor.rescan_expiry()  # start-up after the upgrade
    await _parked(h, _rec(t, "payment.create", _PAY, "c1", "k1", redrive=True))
    assert h.idempotency[pointer]["key"] == "k1"
    h.processor.purge_expired(t, time.time() + 2 * 86_400)
    await h.processor.process(_rec(t, "payment.create", _PAY, "c1", "k2"))
    assert await _effects(h, t, "charge") == 1


async def test_a_legacy_pointer_not_expired_yet_still_redirects(harness: Harness) -> None:
    """Before the legacy pointer expires, the scan's map names its key."""
    h = harness
    t = await _c1_parked_under_k1(h)
    _legacy_pointer(h, t, 3600)
    h.processor.rescan_expiry()
    h.processor.purge_expired(t, time.time())  # the scan at start-up
    again = await _answer(h, _rec(t, "payment.create", _PAY, "c1", "k2"))
    assert kind(again) == "payment.succeeded"
    assert await _effects(h, t, "charge") == 1


async def test_a_legacy_pointer_redirects_in_the_first_batch_after_a_start(
    harness: Harness,
) -> None:
    """The scan's map was filled by the first purge, which runs after a tenant's first
    batch: the command sent again under another key in that batch ran as new, a second
    charge (review finding)."""
    h = harness
    t = await _c1_parked_under_k1(h)
    _legacy_pointer(h, t, 3600)
    h.processor.rescan_expiry()  # start-up after the upgrade: no purge yet
    again = await _answer(h, _rec(t, "payment.create", _PAY, "c1", "k2"))
    assert kind(again) == "payment.succeeded"
    assert await _effects(h, t, "charge") == 1


async def test_an_expired_legacy_pointer_of_a_parked_request_still_holds_the_id(
    harness: Harness,
) -> None:
    """Expired but not purged yet (the purge keeps it for its parked record), the
    legacy pointer was ignored: another request under the id ran while the first was
    still parked (review finding)."""
    h = harness
    t = await _c1_parked_under_k1(h)
    _legacy_pointer(h, t, -60)
    h.processor.rescan_expiry()
    other = await _answer(h, _rec(t, "payment.create", {**_PAY, "amount": 7000}, "c1", "k2"))
    assert data(other)["reason"] == "idempotency_conflict", data(other)
    again = await _answer(h, _rec(t, "payment.create", _PAY, "c1", "k3"))
    assert kind(again) == "payment.succeeded"
    assert await _effects(h, t, "charge") == 1


class _DaysLater:
    """The pipeline's and handlers' clock ``days`` on (nothing else's)."""

    def __init__(self, days: float) -> None:
        self.offset = days * 86_400

    def time(self) -> float:
        return _REAL_TIME() + self.offset

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


_REAL_TIME = time.time


async def test_an_id_is_free_again_once_the_request_a_retry_finished_has_expired(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """c1's pointer lasts as long as c1's park; a retry under its key (c9) finished the
    request, and two days on the id, reused for another request as README allows, was
    refused idempotency_conflict: for 540 days (review finding)."""
    from paystream.agents import handlers

    h = harness
    t = new_tenant_id()
    h.add_tenant(t, gateway_options={"lose_response_first": {f"pse:{t}:payment:p1": 3}})
    pay = {**_PAY, "payment_id": "p1"}
    await _parked(h, _rec(t, "payment.create", pay, "c1", "k1"))
    assert kind(await _answer(h, _rec(t, "payment.create", pay, "c9", "k1"))) == (
        "payment.succeeded"
    )
    h.processor.purge_expired(t, time.time() + 2 * 86_400)
    set_pipeline_clock(monkeypatch, _DaysLater(2))
    monkeypatch.setattr(handlers, "time", _DaysLater(2))
    refund = {"payment_id": "p1", "amount": 100}
    reused = await _answer(h, _rec(t, "refund.create", refund, "c1", "k3"))
    assert kind(reused) == "refund.succeeded", data(reused)


async def test_a_redrive_the_provider_refuses_as_another_request_under_its_key_is_parked(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Let through once (the provider may have charged), then refused as another request
    under its key (Stripe's 400 idempotency_error: a key is saved once its request ran,
    e.g. its parameters built otherwise since): answered idempotency_conflict, the sender
    told "not charged" while the first attempt was (review finding). Parked again."""
    from paystream.gateways.errors import ErrorCode, GatewayError

    h = harness
    t = await _c1_parked_under_k1(h)
    gateway = h.pool.get(Tenant.model_validate(h.tenants[t]))

    async def refused(*_: Any, **__: Any) -> Any:
        raise GatewayError(
            ErrorCode.IDEMPOTENCY_ERROR,
            "Keys for idempotent requests can only be used with the same parameters",
            provider="simulator",
            http_status=400,
        )

    monkeypatch.setattr(gateway, "create_payment", refused)
    redrive = await h.processor.process(_rec(t, "payment.create", _PAY, "c1", "k1", redrive=True))
    assert [e.topic for e in redrive] == [h.settings.retry_topic]
    headers = dict(redrive[0].record.headers)
    assert headers["paystream-park-reason"] == b"provider_key_conflict"
    assert h.idempotency[f"{t}:k1"]["state"] == "parked"


async def test_a_legacy_pointer_of_a_command_a_retry_finished_still_redirects(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """c1 parked under k1 by the version before (its pointer names no key and expires a
    day after the park); a retry under k1 (c9) finished the request; past the pointer's
    own expiry, c1 sent again under k3 ran as new: a second charge (review finding)."""
    from paystream.agents import handlers

    h = harness
    t = await _c1_parked_under_k1(h)
    _legacy_pointer(h, t, 3600)
    h.processor.rescan_expiry()
    retried = await _answer(h, _rec(t, "payment.create", _PAY, "c9", "k1"))
    assert kind(retried) == "payment.succeeded"
    later = _DaysLater(2 / 24)
    set_pipeline_clock(monkeypatch, later)
    monkeypatch.setattr(handlers, "time", later)
    again = await _answer(h, _rec(t, "payment.create", _PAY, "c1", "k3"))
    assert kind(again) == "payment.succeeded" and again.get_id() == retried.get_id()
    assert await _effects(h, t, "charge") == 1


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy pointer", "pointer"])
async def test_a_command_whose_retry_parked_too_is_not_run_again_under_a_third_key(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, legacy: bool
) -> None:
    """c1 parked under k1, its retry c9 under k1 parked too: k1's record lasts as long as
    the park and names c9, while c1's pointer lasted a day. Past it, c1 sent under k3 ran
    as new: a second charge (review finding)."""
    from paystream.agents import handlers

    h = harness
    t = await _c1_parked_under_k1(h, losses=6)
    if legacy:
        _legacy_pointer(h, t, 3600)
        h.processor.rescan_expiry()
    await _parked(h, _rec(t, "payment.create", _PAY, "c9", "k1"))
    h.pool._forget_circuits(t)  # (the provider is back)
    later = _DaysLater(2)
    set_pipeline_clock(monkeypatch, later)
    monkeypatch.setattr(handlers, "time", later)
    emits = await h.processor.process(_rec(t, "payment.create", _PAY, "c1", "k3"))
    assert await _effects(h, t, "charge") == 1, [e.topic for e in emits]


async def test_an_id_is_not_held_by_its_key_reused_for_another_request(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """c1 parked under k1, a retry under k1 (c9) finished it; past the window k1 was
    reused for another request (d1): c1's long-kept pointer held the id again, and
    another request under c1 was refused idempotency_conflict (review finding)."""
    from paystream.agents import handlers

    h = harness
    t = await _c1_parked_under_k1(h)
    assert kind(await _answer(h, _rec(t, "payment.create", _PAY, "c9", "k1"))) == (
        "payment.succeeded"
    )
    finished = dict(h.idempotency[f"{t}:k1"])
    later = _DaysLater(2)
    set_pipeline_clock(monkeypatch, later)
    monkeypatch.setattr(handlers, "time", later)
    h.processor.purge_expired(t, later.time())
    # k1 reused for another request (d1), answered: its record, as that would leave it.
    h.idempotency[f"{t}:k1"] = {
        **finished,
        "command_id": "d1",
        "request_hash": "another request",
        "expires_at": later.time() + 3600,
    }
    other = await _answer(h, _rec(t, "payment.create", {**_PAY, "amount": 700}, "c1", "k3"))
    assert kind(other) == "payment.succeeded", data(other)


async def test_moving_the_pipelines_clock_moves_every_rule_that_reads_it(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rules split out of pipeline.py (provider_window.py, key_pointers.py) read the
    clock through their own ``time``: moved with the pipeline's (set_pipeline_clock), or a
    time-travel test silently runs them on the real clock (review finding)."""
    import time

    first_attempt = int(time.time() * 1000)
    assert not harness.processor._past_key_window(first_attempt)
    set_pipeline_clock(monkeypatch, _DaysLater(2))
    assert harness.processor._past_key_window(first_attempt)  # past the providers' 24 h
