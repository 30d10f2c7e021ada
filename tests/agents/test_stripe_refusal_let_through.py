"""A BGN create Stripe charged under the previous version, parked with its answer lost and
re-driven after the upgrade, was refused by the Stripe gateway's new pre-call rule and the
refusal kept: the customer had paid and paystream had no payment (review h68am). A
refusal before the call of a command let through before parks it again."""

from __future__ import annotations

from typing import Any

import pytest
import stripe

from paystream.client import build_command
from paystream.gateways import stripe_rules
from tests.agents.harness import data, kind
from tests.agents.test_lost_answer_then_refused import _harness
from tests.gateways.stripe.test_stripe_transport import PI, FakeStripe

pytestmark = pytest.mark.asyncio

_LEV = {"payment_id": "p-bgn", "amount": 2000, "currency": "BGN",
        "payment_method_token": "pm_card_visa"}  # fmt: skip


async def test_a_lev_charge_parked_before_the_upgrade_is_not_refused_after_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    charged: list[str] = []
    answer_lost = [True]

    def stripe_side(req: dict[str, Any]) -> Any:
        charged.append(req["headers"]["Idempotency-Key"])
        if answer_lost[0]:  # Stripe charged under the key; every answer is lost
            raise stripe.APIConnectionError("network", should_retry=True) from TimeoutError()
        return 200, {**PI, "currency": "bgn"}  # the key's answer: the charge

    h = _harness(FakeStripe(stripe_side))
    t = h.add_tenant(gateway="stripe")
    cmd = build_command("payment.create", t, _LEV, idempotency_key="order-bgn")
    with monkeypatch.context() as before_upgrade:  # the version before be5176e
        before_upgrade.setattr(stripe_rules, "WITHDRAWN_CURRENCIES", frozenset())
        emits, parked = await h.send_event(cmd)
    assert parked is None and [e.topic for e in emits] == [h.settings.retry_topic]
    assert charged  # the request reached Stripe (and charged: its answer lost)

    answer_lost[0] = False
    _, again = await h.send_event(cmd)  # re-driven by an upgraded worker
    # Stripe holds a charge under the key: ask it (answered payment.succeeded), or park
    # the command again for a person; never a kept rejection saying nothing was charged.
    assert again is None or kind(again) != "command.rejected", data(again)
    assert h.idempotency[f"{t}:order-bgn"]["state"] != "done"
