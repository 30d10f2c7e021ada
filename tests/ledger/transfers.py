"""Test helpers for transfers through the pipeline on the simulator (the ledger's and
the insights' tests of them): a connected account enabled for transfers, and a
transfer made from a payment."""

from __future__ import annotations

from typing import Any

from cloudevents.core.v1.event import CloudEvent

from tests.agents.harness import Harness

LINK = {"refresh_url": "https://p.example/r", "return_url": "https://p.example/d"}


async def an_enabled_account(h: Harness, t: str) -> None:
    """Connected account ``ca1`` (US, transfers) onboarded and read back: enabled (the
    simulator's ``+enabled`` email tag)."""
    body = {"connected_account_id": "ca1", "country": "US",
            "email": "shop+enabled@example.com", "capabilities": ["transfers"]}  # fmt: skip
    await h.send("connected_account.create", t, body)
    await h.send("connected_account.onboarding_link", t, {"connected_account_id": "ca1", **LINK})
    await h.send("connected_account.refresh", t, {"connected_account_id": "ca1"})


async def a_transfer_made(h: Harness, t: str, **made: Any) -> list[CloudEvent]:
    """On an enabled ``ca1``: payment ``p1`` of 10 000 USD, then transfer ``tr1`` of
    6 000 from it (``made``: more fields of its create); their two outcomes."""
    await an_enabled_account(h, t)
    pay = {"payment_id": "p1", "amount": 10_000, "currency": "USD",
           "payment_method_token": "pm_card_visa"}  # fmt: skip
    outs = [await h.send("payment.create", t, pay)]
    transfer = {"transfer_id": "tr1", "connected_account_id": "ca1", "amount": 6_000,
                "currency": "USD", "payment_id": "p1", **made}  # fmt: skip
    outs.append(await h.send("transfer.create", t, transfer))
    return outs
