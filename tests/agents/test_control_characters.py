"""Control characters (C0, DEL, C1) in a command's id, key or tenant: no CloudEvents
string may hold one, and the rejection echoed them into its headers (causationid,
tenantid, partitionkey), making an outcome downstream SDKs may refuse and a header that
splits a log line (review finding)."""

from __future__ import annotations

import hashlib
import itertools
import re
import time

import pytest

from paystream.agents import pipeline
from paystream.agents.pipeline import Emit, Inbound
from paystream.client import InvalidCommand, build_command
from paystream.first_attempt import FIRST_ATTEMPT_HEADER
from paystream.settings import CloudEventsMode
from paystream.streams.codec import encode_event
from tests.agents.harness import Harness, data, kind, new_tenant_id, outcome_of
from tests.agents.test_command_id_resent import _effects

_offsets = itertools.count(1)
_CONTROL_BYTES = re.compile(rb"[\x00-\x1f\x7f]|\xc2[\x80-\x9f]")
_PAY = {"amount": 5000, "currency": "USD", "payment_method_token": "pm_card_visa"}


def _rec(tenant: str, command_id: str, key: str | None = None, **headers: bytes) -> Inbound:
    event = build_command("payment.create", "t", _PAY, command_id="c", idempotency_key=None)
    rec = encode_event(event, tenant.encode(), CloudEventsMode.BINARY)
    merged = {
        **dict(rec.headers),
        "ce_tenantid": tenant.encode(),
        "ce_id": command_id.encode(),
        **({"ce_idempotencykey": key.encode()} if key is not None else {}),
        **headers,
    }
    return Inbound(
        rec.key, rec.value, merged, int(time.time() * 1000), "paystream.commands", 0,
        next(_offsets),
    )  # fmt: skip


def _header_bytes(emits: list[Emit]) -> list[bytes]:
    return [value for e in emits for _, value in e.record.headers]


@pytest.mark.asyncio
@pytest.mark.parametrize("command_id", ["c\n1", "c\x001", "c\x7f1", "c\u00851", "c\u009f"])
async def test_an_id_with_a_control_character_is_refused_under_its_digest(
    harness: Harness, command_id: str
) -> None:
    t = harness.add_tenant()
    emits = await harness.raw(_rec(t, command_id))
    out = outcome_of(harness.settings, emits)
    assert out is not None and data(out)["reason"] == "validation_error"
    assert data(out)["message"] == "id holds a control character"
    digest = hashlib.sha256(command_id.encode()).hexdigest()
    assert out.get_extension("causationid") == f"sha256:{digest}"
    assert not [v for v in _header_bytes(emits) if _CONTROL_BYTES.search(v)]


@pytest.mark.asyncio
async def test_a_key_with_a_c1_control_character_is_refused(harness: Harness) -> None:
    t = harness.add_tenant()
    out = outcome_of(harness.settings, await harness.raw(_rec(t, "c1", "k\u0085")))
    assert out is not None and data(out)["message"] == "idempotencykey holds a control character"
    assert out.get_extension("causationid") == "c1"


@pytest.mark.parametrize("tenant", ["t\nx", "t\u0085x", "t\x00"])
@pytest.mark.asyncio
async def test_a_tenant_with_a_control_character_is_answered_under_no_tenant(
    harness: Harness, tenant: str
) -> None:
    emits = await harness.raw(_rec(tenant, "c1"))
    out = outcome_of(harness.settings, emits)
    assert out is not None and data(out)["reason"] == "unknown_tenant"
    assert out.get_extension("tenantid") == "_unknown"
    assert not [v for v in _header_bytes(emits) if _CONTROL_BYTES.search(v)]


@pytest.mark.asyncio
async def test_a_c1_command_let_through_by_the_version_before_goes_on(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parked by a version that took C1 characters, the provider may have charged it:
    re-driven, it is answered as it ran, not refused (a refused sender pays again)."""
    h = harness
    t = new_tenant_id()
    key = "k\u0085"
    h.add_tenant(t, gateway_options={"lose_response_first": {f"ps:{t}:{key}": 3}})
    with monkeypatch.context() as before:
        before.setattr(pipeline, "_CONTROL", re.compile(r"[\x00-\x1f\x7f]"))
        parked = await h.processor.process(_rec(t, "c1", key))
    assert [e.topic for e in parked] == [h.settings.retry_topic]
    redrive = _rec(t, "c1", key)
    redrive.headers[FIRST_ATTEMPT_HEADER] = str(int(time.time() * 1000)).encode()
    out = outcome_of(h.settings, await h.processor.process(redrive))
    assert out is not None and kind(out) == "payment.succeeded", data(out)
    assert await _effects(h, t, "charge") == 1


@pytest.mark.parametrize("where", ["tenant", "id", "key"])
def test_the_client_refuses_a_control_character(where: str) -> None:
    ids = {"tenant": "t1", "id": "c1", "key": "k1", where: "x\u0085"}
    with pytest.raises(InvalidCommand, match="control character"):
        build_command(
            "payment.create", ids["tenant"], _PAY, command_id=ids["id"], idempotency_key=ids["key"]
        )
