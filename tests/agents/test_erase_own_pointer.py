"""An erasure sent under its own idempotency key lost its command id's pointer: its in-flight
record named the customer, so its own scrub blanked the pointer's hash, and a different
request reusing the erasure's id under a new key ran instead of being refused (review
h68af)."""

from __future__ import annotations

from typing import Any

import pytest

from paystream.agents.idempotency_keeping import ERASED_HASH
from paystream.client import build_command
from paystream.tables.commands_view import command_id_key
from tests.agents.harness import Harness, data, kind, outcome_of
from tests.agents.harness import binary_inbound as _inbound

pytestmark = pytest.mark.asyncio


async def _run(h: Harness, t: str, offset: int, *args: Any, **kw: Any) -> Any:
    cmd = build_command(*args, **kw)
    return outcome_of(h.settings, await h.processor.process(_inbound(cmd, t, offset)))


async def test_an_erasure_sent_with_its_own_key_keeps_its_id_pointer(harness: Harness) -> None:
    t = harness.add_tenant()
    created = await _run(
        harness, t, 1, "customer.create", t, {"customer_id": "c1", "email": "a@x.io"},
        command_id="k0",
    )  # fmt: skip
    assert kind(created) == "customer.created"
    erased = await _run(
        harness, t, 2, "customer.erase", t, {"customer_id": "c1"},
        command_id="e1", idempotency_key="ek",
    )  # fmt: skip
    assert kind(erased) == "customer.erased", data(erased)
    pointer = harness.idempotency[command_id_key(t, "e1")]
    record = harness.idempotency[f"{t}:ek"]
    assert record["state"] == "done"
    # The erasure's pointer says which request its id names, as its record does.
    assert pointer["request_hash"] != ERASED_HASH
    assert pointer["request_hash"] == record["request_hash"]


async def test_another_request_under_the_erasures_command_id_is_still_refused(
    harness: Harness,
) -> None:
    t = harness.add_tenant()
    await _run(
        harness, t, 1, "customer.create", t, {"customer_id": "c1", "email": "a@x.io"},
        command_id="k0",
    )  # fmt: skip
    await _run(
        harness, t, 2, "customer.create", t, {"customer_id": "c2", "email": "b@x.io"},
        command_id="k1",
    )  # fmt: skip
    erased = await _run(
        harness, t, 3, "customer.erase", t, {"customer_id": "c1"},
        command_id="e1", idempotency_key="ek",
    )  # fmt: skip
    assert kind(erased) == "customer.erased", data(erased)
    # Another request (another customer) reusing the erasure's command id, new key:
    other = await _run(
        harness, t, 4, "customer.erase", t, {"customer_id": "c2"},
        command_id="e1", idempotency_key="ek2",
    )  # fmt: skip
    assert kind(other) == "command.rejected", (kind(other), data(other))
