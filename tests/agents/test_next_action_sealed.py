"""A payment's next action carries the customer's client secret (as Stripe's 3-D Secure
URL does): its outcome delivers it, nothing paystream keeps holds it in clear."""

from __future__ import annotations

import base64
import logging
import os
import re
from typing import Any

import orjson
import pytest

from paystream.client import build_command
from paystream.ledger.sink import outcome_to_ledger_events
from paystream.tables.next_action import SEALED, NextActionSeal
from paystream.tables.views import entity_view
from paystream.tenancy.crypto import MasterKey, MasterKeyring
from tests.agents.conftest import running_harness
from tests.agents.harness import Harness, data, kind

_KEY = base64.b64encode(os.urandom(32)).decode()
_3DS = {"amount": 700, "currency": "EUR", "payment_method_token": "pm_card_authenticationRequired"}


def _client_secret(outcome_data: dict[str, Any]) -> str:
    url = outcome_data["object"]["next_action"]["redirect_to_url"]["url"]
    found = re.search(r"payment_intent_client_secret=([\w]+)", url)
    assert found, url
    return found.group(1)


def _kept(h: Harness) -> bytes:
    """Everything the worker keeps (its tables and idempotency records), as bytes."""
    return orjson.dumps({"payments": h.tables.payments, "idempotency": h.idempotency}, default=repr)


async def test_the_outcome_carries_the_secret_and_the_tables_keep_it_sealed(
    redis_url: str,
) -> None:
    async with running_harness(redis_url, master_key=_KEY) as h:
        t = h.add_tenant()
        out = await h.send("payment.create", t, {**_3DS, "payment_id": "pay_3ds"})
        assert kind(out) == "payment.requires_action"
        secret = _client_secret(data(out))
        assert secret.encode() not in _kept(h)
        kept = h.tables.payments[f"{t}:pay_3ds"]["next_action"]
        assert kept["type"] == "redirect_to_url" and SEALED in kept
        # The views show what kind of action waits, not the credential.
        view = entity_view(h.tables.payments, t, "pay_3ds")
        assert view is not None and view["next_action"] == {"type": "redirect_to_url"}


async def test_a_redelivered_command_gets_the_very_event_again(redis_url: str) -> None:
    async with running_harness(redis_url, master_key=_KEY) as h:
        t = h.add_tenant()
        command = build_command("payment.create", t, _3DS)
        first, out = await h.send_event(command)
        again, out_again = await h.send_event(command)
        assert out is not None and out_again is not None
        assert _client_secret(data(out_again)) == _client_secret(data(out))
        [sent] = [e.record for e in first if e.topic == h.settings.events_topic]
        [resent] = [e.record for e in again if e.topic == h.settings.events_topic]
        assert (resent.value, sorted(resent.headers)) == (sent.value, sorted(sent.headers))


async def test_a_later_command_on_the_payment_keeps_it_sealed(redis_url: str) -> None:
    async with running_harness(redis_url, master_key=_KEY) as h:
        t = h.add_tenant()
        out = await h.send("payment.create", t, {**_3DS, "payment_id": "pay_3ds"})
        secret = _client_secret(data(out))
        canceled = await h.send("payment.cancel", t, {"payment_id": "pay_3ds"})
        assert kind(canceled) == "payment.canceled", data(canceled)
        assert secret.encode() not in _kept(h)


async def test_a_customer_export_lists_the_action_type_alone(redis_url: str) -> None:
    async with running_harness(redis_url, master_key=_KEY) as h:
        t = h.add_tenant()
        await h.send("customer.create", t, {"customer_id": "cus_1", "email": "a@b.io"})
        await h.send(
            "payment_method.attach",
            t,
            {"customer_id": "cus_1", "payment_method_id": "pm_1", "token": "pm_card_visa"},
        )
        h.tables.payment_methods[f"{t}:pm_1"]["provider_payment_method_id"] = (
            "pm_card_authenticationRequired"
        )
        out = await h.send(
            "payment.create",
            t,
            {"amount": 700, "currency": "EUR", "customer_id": "cus_1", "payment_method_id": "pm_1"},
        )
        assert kind(out) == "payment.requires_action", data(out)
        export = await h.send("customer.export", t, {"customer_id": "cus_1"})
        [payment] = data(export)["export"]["payments"]
        assert payment["next_action"] == {"type": "redirect_to_url"}


async def test_without_a_master_key_the_action_still_reaches_the_tenant(
    harness: Harness,
) -> None:
    """Only the simulator runs without one (a Stripe tenant's key is itself sealed)."""
    t = harness.add_tenant()
    out = await harness.send("payment.create", t, _3DS)
    assert _client_secret(data(out))


async def test_the_ledger_keeps_the_action_type_alone(redis_url: str) -> None:
    async with running_harness(redis_url, master_key=_KEY) as h:
        t = h.add_tenant()
        _, out = await h.send_event(build_command("payment.create", t, _3DS))
        assert out is not None
        secret = _client_secret(data(out))
        [event] = outcome_to_ledger_events(out)
        assert event.data["next_action"] == {"type": "redirect_to_url"}
        assert secret.encode() not in orjson.dumps(event.data, default=str)


def _ring() -> MasterKeyring:
    return MasterKeyring(MasterKey(os.urandom(32)), ())


def _payment(action: Any) -> dict[str, Any]:
    return {"entity_type": "payment", "object": {"id": "pay_1", "next_action": action, "n": 1}}


def test_a_seal_opens_only_for_its_tenant_and_payment() -> None:
    seal = NextActionSeal(_ring())
    action = {"type": "redirect_to_url", "redirect_to_url": {"url": "https://x/?s=1"}}
    sealed = seal.sealed("acme", "pay_1", action)
    assert seal.opened("acme", _payment(sealed))["object"] == {
        "id": "pay_1",
        "next_action": action,
        "n": 1,
    }
    moved = seal.opened("globex", _payment(sealed))["object"]["next_action"]
    assert moved == {"type": "redirect_to_url"}
    assert seal.sealed("acme", "pay_1", sealed) is sealed  # not sealed twice


def test_a_seal_under_a_retired_key_is_emitted_as_its_type(
    caplog: pytest.LogCaptureFixture,
) -> None:
    action = {"type": "redirect_to_url", "redirect_to_url": {"url": "https://x/?s=1"}}
    sealed = NextActionSeal(_ring()).sealed("acme", "pay_1", action)
    with caplog.at_level(logging.WARNING, logger="paystream.tables.next_action"):
        opened = NextActionSeal(_ring()).opened("acme", _payment(sealed))
    assert opened["object"]["next_action"] == {"type": "redirect_to_url"}
    assert "no longer opens" in caplog.text and "https://x" not in caplog.text


def test_related_payments_are_opened_too() -> None:
    seal = NextActionSeal(_ring())
    action = {"type": "redirect_to_url", "redirect_to_url": {"url": "https://x/?s=1"}}
    part = {"entity_type": "payment", "entity_id": "pay_1", "object": {"id": "pay_1"}}
    part["object"]["next_action"] = seal.sealed("acme", "pay_1", action)
    data_ = {"object": {"id": "re_1"}, "related": [part, {"entity_type": "dispute"}]}
    opened = seal.opened("acme", data_)
    assert opened["related"][0]["object"]["next_action"] == action
    assert opened["related"][1] == {"entity_type": "dispute"}
    assert seal.opened("acme", {"object": {"id": "re_1"}}) == {"object": {"id": "re_1"}}
