"""The Redis-outage drill's provider check can fail: a doubled or lost effect shows."""

from __future__ import annotations

from paystream.gateways.simulator.store import Effect
from tests.e2e.test_redis_outage import effects_beyond_reference, reference_effects


def _as_made(tenant: str) -> list[Effect]:
    effects = []
    for (kind, amount, key), n in reference_effects(tenant, 4).items():
        for i in range(n):
            effects.append(
                Effect.of(kind, key or f"pse:{tenant}:k{amount}{i}", "obj", amount, "usd")
            )
    return effects


def test_the_reference_matches_the_effects_it_describes() -> None:
    assert effects_beyond_reference(_as_made("t"), reference_effects("t", 4)) == ({}, {})


def test_a_charge_doubled_under_another_key_is_found() -> None:
    """The simulator keeps one effect per key, so a second charge for pay_1 under a new
    key (a resend under a new id) was invisible to a count by key."""
    effects = [*_as_made("t"), Effect.of("charge", "pse:t:cmd-2", "ch_2", 1001, "usd")]
    beyond, missing = effects_beyond_reference(effects, reference_effects("t", 4))
    assert beyond == {("charge", 1001, None): 1} and not missing


def test_a_second_refund_and_a_lost_capture_are_found() -> None:
    made = _as_made("t")
    lost = next(e for e in made if e.kind == "capture")
    effects = [e for e in made if e is not lost] + [Effect.of("refund", "k", "re_x", 300, "usd")]
    beyond, missing = effects_beyond_reference(effects, reference_effects("t", 4))
    assert beyond == {("refund", 300, None): 1}
    assert missing == {("capture", lost.amount, None): 1}
