"""Test helpers for a refresh of a final entity (a payout canceled or failed, a transfer
reversed entirely, a refund failed, an account rejected, a payment or subscription
canceled, an invoice paid or void): answered from its record, the provider unread."""

from __future__ import annotations

from typing import Any

import pytest

from tests.agents.harness import Harness, data, kind, simulator_of


def provider_reads(h: Harness, t: str, monkeypatch: pytest.MonkeyPatch, call: str) -> list[Any]:
    """The provider's ``call`` reads (retrieve_payout, retrieve_transfer, ...) of the
    tenant's simulator from now on."""
    reads: list[Any] = []
    sim = simulator_of(h, t)
    read = getattr(sim, call)

    async def counted(req: Any, *, idempotency_key: str) -> Any:
        reads.append(req)
        return await read(req, idempotency_key=idempotency_key)

    monkeypatch.setattr(sim, call, counted)
    return reads


def assert_answered_from_the_record(echo: Any, outcome: str, status: str) -> None:
    """``echo`` is an ``outcome`` of the entity as recorded: ``status`` before and now."""
    assert kind(echo) == outcome, data(echo)
    assert (data(echo)["previous_status"], data(echo)["object"]["status"]) == (status, status)
