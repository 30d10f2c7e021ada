"""transfer.refresh reads the transfer's payment only when it learns a reversal (7ff57210):
the paths where it must still read it (review h82rd). A reversal learnt in two refreshes
gives each step back once; a refresh of a transfer whose payment retention swept is the
transfer alone, the payment not made again."""

from __future__ import annotations

import pytest

from tests.agents.harness import Harness, data, kind, simulator_of
from tests.agents.test_transfer_refresh import _made, _row

pytestmark = pytest.mark.asyncio


async def test_a_reversal_learnt_in_two_refreshes_gives_each_step_back(harness: Harness) -> None:
    t = harness.add_tenant()
    tr, pay = await _made(harness, t, 6_000)
    sim = simulator_of(harness, t)
    await sim.reverse_transfer_outside(tr["provider_transfer_id"], 1_000)
    first = await harness.send("transfer.refresh", t, {"transfer_id": tr["id"]})
    assert kind(first) == "transfer.reversed", data(first)
    assert (data(first)["previous_status"], data(first)["object"]["status"]) == (
        "created",
        "partially_reversed",
    )
    assert data(first)["related"][0]["object"]["amount_transferred"] == 5_000
    await sim.reverse_transfer_outside(tr["provider_transfer_id"])  # the rest
    second = await harness.send("transfer.refresh", t, {"transfer_id": tr["id"]})
    assert kind(second) == "transfer.reversed", data(second)
    assert (data(second)["previous_status"], data(second)["amount_reversed_now"]) == (
        "partially_reversed",
        5_000,
    )
    assert data(second)["related"][0]["object"]["amount_transferred"] == 0
    assert _row(harness, t, "payments", pay["id"])["amount_transferred"] == 0


async def test_a_reversal_of_a_transfer_whose_payment_was_swept_is_the_transfer_alone(
    harness: Harness,
) -> None:
    t = harness.add_tenant()
    tr, pay = await _made(harness, t, 6_000)
    del harness.tables.payments[f"{t}:{pay['id']}"]  # (retention: unchanged for long)
    unchanged = await harness.send("transfer.refresh", t, {"transfer_id": tr["id"]})
    assert kind(unchanged) == "transfer.updated", data(unchanged)
    await simulator_of(harness, t).reverse_transfer_outside(tr["provider_transfer_id"], 2_000)
    read = await harness.send("transfer.refresh", t, {"transfer_id": tr["id"]})
    assert kind(read) == "transfer.reversed", data(read)
    assert data(read)["amount_reversed_now"] == 2_000 and "related" not in data(read), data(read)
    assert f"{t}:{pay['id']}" not in harness.tables.payments
    assert _row(harness, t, "transfers", tr["id"])["amount_reversed"] == 2_000
