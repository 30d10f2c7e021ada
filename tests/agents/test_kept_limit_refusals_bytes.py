"""A limits refusal redelivered (the same record, after a crash; its tenant's limits
state restored from the changelog, JSON) is answered with the very record first produced:
the same event id, payload and headers, byte for byte. A tenant's first FULL_REFUSALS
refusals not yet committed are kept in full (as the release before kept them, and can
read them), later ones as their builder's arguments (tenancy/limits.py: _REFUSALS), made
again on a redelivery."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from paystream.tenancy import limits as lim
from tests.agents.harness import Harness, data
from tests.agents.test_limits import T0, _pay, _record


def _outcome(h: Harness, emits: list[Any]) -> tuple[Any, ...]:
    (out,) = [e.record for e in emits if e.topic == h.settings.events_topic]
    return out.key, out.value, tuple(out.headers)


_LISTED = {"USD": 10**6, "JPY": 10**6, "KWD": 10**6}
CASES: dict[str, tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any], dict[str, Any]]] = {
    # name: (limits, commands before, the refused payment's body, the limits changed
    # before the redelivery: it is answered as first, whatever they are now)
    "rate": ({"commands_per_second": 1, "burst": 1}, [_pay(100)], _pay(100),
             {"commands_per_second": 7, "burst": 9}),
    "currencies": ({"only_listed_currencies": True, "max_payment_amount": _LISTED}, [],
                   {**_pay(100), "currency": "EUR"},
                   {"only_listed_currencies": True,
                    "max_payment_amount": {**_LISTED, "GBP": 1}}),
    "cap": ({"max_payment_amount": {"USD": 999}}, [], _pay(1000),
            {"max_payment_amount": {"USD": 998}}),
    "daily": ({"daily_payment_volume": {"USD": 1500}}, [_pay(1000)], _pay(600),
              {"daily_payment_volume": {"USD": 1550}}),
}  # fmt: skip


@pytest.mark.parametrize("form", ["full", "why"])
@pytest.mark.parametrize("name", sorted(CASES))
async def test_a_redelivered_limits_refusal_is_the_same_record(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, name: str, form: str
) -> None:
    if form == "why":  # (as if FULL_REFUSALS others were kept in full already)
        monkeypatch.setattr(lim, "FULL_REFUSALS", 0)
    limits, before, body, changed = CASES[name]
    t = harness.add_tenant(limits=limits)
    for i, b in enumerate(before, 1):
        await harness.processor.process(_record("payment.create", t, b, f"b{i}", T0, i))
    rec = _record("payment.create", t, body, "refused", T0, 10)
    first_emits = await harness.processor.process(rec)
    first = _outcome(harness, first_emits)
    gate = harness.processor.limits
    key = gate.key(t)
    state = gate.table[key]
    (kept,) = [d for d in state["decided"].values() if not d["admit"]]
    if form == "why":
        assert kept["why"][0] == name, kept
    else:  # the release before's own shape (tests/tenancy/test_limits_record_size.py)
        assert list(kept)[:6] == ["id", "day", "admit", "reason", "message", "extra"], kept
    # The next owner of the partition reads the state from its changelog (JSON).
    gate.table[key] = orjson.loads(orjson.dumps(state))
    harness.tenants[t] = {**harness.tenants[t], "limits": {**harness.tenants[t]["limits"],
                                                           **changed}}  # fmt: skip
    again = _outcome(harness, await harness.processor.process(rec))
    assert again == first
    assert data_of(harness, first_emits)["reason"] in ("rate_limited", "quota_exceeded")


def data_of(h: Harness, emits: list[Any]) -> dict[str, Any]:
    from tests.agents.harness import outcome_of

    out = outcome_of(h.settings, emits)
    assert out is not None
    return data(out)
