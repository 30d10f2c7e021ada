"""A create first sent by a version before the webhook reference (no paystream_payment
in its metadata), re-driven by this one at a provider that sends webhooks.

The simulator compares parameters sent again under a key as Stripe does (and refuses
others with idempotency_error), so it stands in for Stripe here, given the WEBHOOKS
capability. (Review finding: the re-drive was parked provider_key_conflict, for good.)
"""

from __future__ import annotations

import pytest

from paystream.gateways.base import Capability
from paystream.tenancy.models import Tenant
from tests.agents.harness import Harness
from tests.agents.test_command_id_resent import _PAY, _c1_parked_under_k1, _effects, _rec

pytestmark = pytest.mark.asyncio


def _with_webhooks(h: Harness, tenant: str) -> None:
    gateway = h.pool.get(Tenant.model_validate(h.tenants[tenant]))
    gateway.capabilities = gateway.capabilities | {Capability.WEBHOOKS}  # type: ignore[misc]


async def test_a_create_parked_before_the_upgrade_is_answered_when_redriven(
    harness: Harness,
) -> None:
    h = harness
    t = await _c1_parked_under_k1(h)  # charged at the provider, its answer lost: parked
    assert await _effects(h, t, "charge") == 1
    _with_webhooks(h, t)  # the upgrade: creates now carry the reference
    redrive = await h.processor.process(_rec(t, "payment.create", _PAY, "c1", "k1", redrive=True))
    assert [e.topic for e in redrive] == [h.settings.events_topic]
    assert dict(redrive[0].record.headers)["ce_type"] == b"com.paystream.payment.succeeded"
    assert await _effects(h, t, "charge") == 1


async def test_a_new_create_carries_the_reference_and_is_not_sent_twice(
    harness: Harness,
) -> None:
    """Only one let through is sent again without it: a new create's refusal stands."""
    h = harness
    t = await _c1_parked_under_k1(h)
    _with_webhooks(h, t)
    # A new command under the provider key the parked one used (k1), with the reference:
    # the provider refuses the other parameters, and no second request is made.
    other = await h.processor.process(
        _rec(t, "payment.create", {**_PAY, "amount": 5001}, "c2", "k1")
    )
    assert [e.topic for e in other] == [h.settings.events_topic]
    assert dict(other[0].record.headers)["ce_type"] == b"com.paystream.command.rejected"
    assert await _effects(h, t, "charge") == 1
