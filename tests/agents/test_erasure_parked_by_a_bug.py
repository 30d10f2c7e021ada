"""A customer command parked after one of our own bugs kept a hash of the customer's new
data past their erasure: it was parked from its in-flight record, which did not name the
customer, and the erasure finds records by customer (review h68ad)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from paystream.agents import pipeline
from paystream.agents.pipeline import Inbound, _request_hash
from paystream.client import build_command
from tests.agents.harness import Harness, data, kind, outcome_of
from tests.agents.harness import binary_inbound as _inbound

pytestmark = pytest.mark.asyncio


async def _as_the_agent_does(h: Harness, rec: Inbound) -> list[Any]:
    try:  # agents/commands.py: a bug of ours is dead-lettered (or parked) by dead_letter_bug
        return await h.processor.process(rec)
    except RuntimeError:
        return h.processor.dead_letter_bug(rec)


async def test_an_update_parked_by_a_bug_of_ours_keeps_its_hash_past_the_erasure(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A customer.update let through to the provider, then failing on a bug of ours, is
    parked (dead_letter_bug -> _repark) from its in-flight record, which names no
    customer: the customer's erasure does not find it, and the hash of the e-mail and
    name it sent stays in the idempotency table (kept as long as a parked record, up to
    the entity retention). A park by a provider outage (_park) names the customer and
    is scrubbed (review h59j); this one is not."""
    t = harness.add_tenant()
    created = await _as_the_agent_does(
        harness,
        _inbound(
            build_command(
                "customer.create", t, {"customer_id": "c1", "email": "a@x.io"}, command_id="k0"
            ),
            t,
            1,
        ),
    )
    assert kind(outcome_of(harness.settings, created)) == "customer.created"
    real = pipeline.HANDLERS["customer.update"]

    async def buggy(ctx: Any, body: Any) -> Any:
        await real(ctx, body)  # the provider updated the customer ...
        raise RuntimeError("a bug of ours after the provider acted")  # ... then we failed

    monkeypatch.setitem(pipeline.HANDLERS, "customer.update", buggy)
    upd = {"customer_id": "c1", "email": "ann.new@example.com", "name": "Ann New"}
    emits = await _as_the_agent_does(
        harness, _inbound(build_command("customer.update", t, upd, command_id="k1"), t, 2)
    )
    assert [e.topic for e in emits] == [harness.settings.retry_topic]
    assert harness.idempotency[f"{t}:k1"]["state"] == "parked"
    monkeypatch.setitem(pipeline.HANDLERS, "customer.update", real)

    pii_hash = _request_hash("customer.update", {**upd, "description": None, "metadata": None})
    assert pii_hash in json.dumps(harness.idempotency)
    erased = outcome_of(
        harness.settings,
        await _as_the_agent_does(
            harness,
            _inbound(
                build_command("customer.erase", t, {"customer_id": "c1"}, command_id="k2"), t, 3
            ),
        ),
    )
    assert kind(erased) == "customer.erased", data(erased)
    # As for a park by an outage: the erasure erases the hash of the personal data.
    assert pii_hash not in json.dumps(harness.idempotency)


async def test_one_let_through_while_suspended_and_parked_by_a_bug_meets_the_erasure(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same, for an update let through by its entity while its tenant was suspended
    (a crash lost its idempotency record, its entity kept the change). That path's own
    in-flight record named no customer (review h68ad's note); the run after it wrote the
    main path's, which does, so the erasure found the park either way. Both name it now."""
    t = harness.add_tenant()
    create = build_command(
        "customer.create", t, {"customer_id": "c1", "email": "a@x.io"}, command_id="k0"
    )
    assert (
        kind(
            outcome_of(harness.settings, await _as_the_agent_does(harness, _inbound(create, t, 1)))
        )
        == "customer.created"
    )
    upd = {"customer_id": "c1", "email": "ann.new@example.com", "name": "Ann New"}
    update = _inbound(build_command("customer.update", t, upd, command_id="k1"), t, 2)
    updated = outcome_of(harness.settings, await _as_the_agent_does(harness, update))
    assert kind(updated) == "customer.updated", data(updated)
    # A crash kept the customer's write and lost the idempotency records of the batch.
    for key in [k for k in harness.idempotency if k.endswith(":k1")]:
        del harness.idempotency[key]
    harness.tenants[t] = {**harness.tenants[t], "status": "suspended"}
    real = pipeline.HANDLERS["customer.update"]

    calls = 0

    async def buggy(ctx: Any, body: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:  # the entity probe: it finds the update applied
            return await real(ctx, body)
        raise RuntimeError("a bug of ours")  # the run let through

    monkeypatch.setitem(pipeline.HANDLERS, "customer.update", buggy)
    emits = await _as_the_agent_does(harness, update)  # redelivered
    assert [e.topic for e in emits] == [harness.settings.retry_topic]
    assert harness.idempotency[f"{t}:k1"]["state"] == "parked"
    monkeypatch.setitem(pipeline.HANDLERS, "customer.update", real)
    harness.tenants[t] = {**harness.tenants[t], "status": "active"}

    pii_hash = _request_hash("customer.update", {**upd, "description": None, "metadata": None})
    assert pii_hash in json.dumps(harness.idempotency)
    erase = build_command("customer.erase", t, {"customer_id": "c1"}, command_id="k2")
    erased = outcome_of(harness.settings, await _as_the_agent_does(harness, _inbound(erase, t, 3)))
    assert kind(erased) == "customer.erased", data(erased)
    assert pii_hash not in json.dumps(harness.idempotency)
