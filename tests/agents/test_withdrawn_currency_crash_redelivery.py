"""A BGN payment.create charged by a worker of the version before the withdrawn-currency check,
which died before delivering its batch, was refused `validation_error` by an upgraded worker
before its provider was asked, though the provider had charged under its key (review
h68ak). The simulator now decides inside its keyed call, which answers from the key."""

from __future__ import annotations

import dataclasses
import time

import pytest

from paystream import money
from paystream.agents import handlers
from paystream.gateways import stripe_rules
from paystream.gateways.simulator import operations
from tests.agents.harness import Harness, data, kind, outcome_of
from tests.agents.test_applied_by_entity import _crash_back_to, _durable, _effects
from tests.agents.test_let_through import _answer, _command

pytestmark = pytest.mark.asyncio

_LEV = {"amount": 800, "currency": "BGN", "payment_method_token": "pm_card_visa"}


async def test_a_lev_charge_in_flight_at_a_crash_during_the_upgrade_keeps_its_answer(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness
    t = h.add_tenant()
    record = dict(h.tenants[t])
    durable = _durable(h)
    rec = _command(t, "payment.create", {**_LEV, "payment_id": "p-bgn"}, "cmd-bgn")
    rec = dataclasses.replace(rec, timestamp_ms=int(time.time() * 1000))  # a crash just now
    with monkeypatch.context() as before_upgrade:  # the version before be5176e
        for module in (money, handlers, operations, stripe_rules):  # wherever it is read
            if hasattr(module, "WITHDRAWN_CURRENCIES"):
                before_upgrade.setattr(module, "WITHDRAWN_CURRENCIES", frozenset())
        first = await _answer(h, rec)
    assert kind(first) == "payment.succeeded", data(first)
    _crash_back_to(h, durable)  # the worker died before delivering the batch
    again = outcome_of(h.settings, await h.processor.process(rec))  # an upgraded worker
    assert [k for k, _ in await _effects(h, record)] == ["charge"]  # the customer paid
    assert again is not None
    # The provider holds the charge under the command's key: answered as it was (as the
    # K1 test has it for a suspended tenant), never "validation_error, nothing charged".
    assert kind(again) == "payment.succeeded", data(again)
    assert again.get_id() == first.get_id()
