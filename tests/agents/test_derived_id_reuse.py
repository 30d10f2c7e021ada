"""A command id reused past the idempotency window (README: it then names another
request) for a create that chooses no id: the id it derives from the tenant and command
id names the entity the first request made, and the second request was refused
`invalid_state` ("already exists"). It now gets an id derived from the command and its
request; a redelivery of it, a crash that kept only its entity, and the first request
sent again are each answered as before."""

from __future__ import annotations

import time
from typing import Any

import pytest

from paystream.agents import handlers
from tests.agents.conftest import running_harness
from tests.agents.harness import Harness, data, kind, new_tenant_id, set_pipeline_clock
from tests.agents.test_applied_by_entity import _change, _entities
from tests.agents.test_command_id_resent import _DaysLater, _rec
from tests.agents.test_let_through import _answer

pytestmark = pytest.mark.asyncio


async def _setup(h: Harness, t: str) -> None:
    h.add_tenant(t)
    await _answer(h, _rec(t, "customer.create", {"email": "c@example.com"}, "setup-cus"))
    paid = {"amount": 10_000, "currency": "USD", "payment_method_token": "pm_card_visa"}
    await _answer(h, _rec(t, "payment.create", {**paid, "payment_id": "paid"}, "setup-pay"))


def _cases(h: Harness, t: str) -> list[tuple[str, dict[str, Any], dict[str, Any], str]]:
    cus = data_of_customer(h, t)
    return [
        ("customer.create", {"email": "a@example.com"}, {"email": "b@example.com"}, "customers"),
        (
            "payment.create",
            {"amount": 1000, "currency": "USD", "payment_method_token": "pm_card_visa"},
            {"amount": 2500, "currency": "USD", "payment_method_token": "pm_card_visa"},
            "payments",
        ),
        (
            "payment_method.attach",
            {"customer_id": cus, "token": "pm_card_visa"},
            {"customer_id": cus, "token": "pm_card_mastercard"},
            "payment_methods",
        ),
        (
            "refund.create",
            {"payment_id": "paid", "amount": 100},
            {"payment_id": "paid", "amount": 200},
            "refunds",
        ),
    ]


def data_of_customer(h: Harness, t: str) -> str:
    return next(v["id"] for k, v in h.tables.customers.items() if k.startswith(f"{t}:"))


@pytest.mark.parametrize(
    "case", [0, 1, 2, 3], ids=["customer", "payment", "payment_method", "refund"]
)
async def test_a_create_under_a_command_id_reused_past_the_window_makes_its_own_entity(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, case: int
) -> None:
    h = harness
    t = new_tenant_id()
    await _setup(h, t)
    command_type, body1, body2, table = _cases(h, t)[case]
    first = await _answer(h, _rec(t, command_type, body1, "order-1"))
    assert kind(first) != "command.rejected", data(first)
    id1 = data(first)["object"]["id"]
    h.processor.purge_expired(t, time.time() + 2 * 86_400)
    # The provider's records of the key expire with the window too (as Stripe's do).
    for key in await h.redis.keys(f"sim:{{{t}}}:idem:*"):
        await h.redis.delete(key)
    set_pipeline_clock(monkeypatch, _DaysLater(2))
    monkeypatch.setattr(handlers, "time", _DaysLater(2))
    second = await _answer(h, _rec(t, command_type, body2, "order-1"))
    assert kind(second) == kind(first), data(second)
    id2 = data(second)["object"]["id"]
    assert id2 != id1
    rows = getattr(h.tables, table)
    assert rows[f"{t}:{id1}"]["version"] == 1  # the first one's entity untouched
    assert data(second)["object"].get("amount") == body2.get("amount")
    # Redelivered: the same event, the same entity.
    again = await _answer(h, _rec(t, command_type, body2, "order-1"))
    assert again.get_id() == second.get_id() and data(again) == data(second)
    # A crash kept only the second one's entity, and the tenant was suspended
    # meanwhile: the entity under the id it derives with its request knows it applied.
    entities = _entities(h)
    del h.idempotency[f"{t}:order-1"]
    _change(h, t, "suspended")
    repaired = await _answer(h, _rec(t, command_type, body2, "order-1"))
    assert repaired.get_id() == second.get_id() and data(repaired) == data(second)
    assert _entities(h) == entities


async def test_the_crash_probes_take_the_configured_window(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A window shorter than a day: the probes that recognise a crash's lone entity took
    the default 24 h, so they looked for the second request's payment under the id of the
    first, and a charged payment was answered tenant_suspended (review finding)."""
    async with running_harness(redis_url, idempotency_ttl_seconds=3600) as h:
        t = new_tenant_id()
        h.add_tenant(t)
        card = {"currency": "USD", "payment_method_token": "pm_card_visa"}
        first = await _answer(h, _rec(t, "payment.create", {**card, "amount": 1000}, "order-1"))
        h.processor.purge_expired(t, time.time() + 2 * 3600)
        for key in await h.redis.keys(f"sim:{{{t}}}:idem:*"):
            await h.redis.delete(key)
        set_pipeline_clock(monkeypatch, _DaysLater(2 / 24))  # past 1 h, within 24 h
        monkeypatch.setattr(handlers, "time", _DaysLater(2 / 24))
        body2 = {**card, "amount": 2500}
        second = await _answer(h, _rec(t, "payment.create", body2, "order-1"))
        assert kind(second) == "payment.succeeded", data(second)
        assert data(second)["object"]["id"] != data(first)["object"]["id"]
        entities = _entities(h)
        del h.idempotency[f"{t}:order-1"]  # a crash kept only its entity
        _change(h, t, "suspended")
        repaired = await _answer(h, _rec(t, "payment.create", body2, "order-1"))
        assert repaired.get_id() == second.get_id() and data(repaired) == data(second)
        assert _entities(h) == entities
