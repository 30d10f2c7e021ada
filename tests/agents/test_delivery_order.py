"""A batch with a rejection lands its decisions before the rest (review finding: with the
idempotency records lost and a later command's entity landed, a payment refused
`not_found` was charged on redelivery, once its customer existed). A batch without one
is produced in one go, as before."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from paystream.agents import commands
from paystream.agents.commands import ProcessedBatch, _changelog_name
from paystream.agents.pipeline import Emit
from paystream.streams.batch_producer import OutRecord
from paystream.streams.codec import KafkaRecord
from paystream.tables import definitions as t
from paystream.tables.changelog import ChangelogBatch

pytestmark = [pytest.mark.asyncio(loop_scope="session")]


def _batch(
    outcome: str,
    command: str = "payment.create",
    topic: str = "paystream.events",
    entities: Any = t.payments,
) -> ProcessedBatch:
    idem, limits = _changelog_name(t.idempotency), _changelog_name(t.limits)
    records = [
        OutRecord(_changelog_name(entities), 0, b"k", b"entity"),
        OutRecord(idem, 0, b"k", b"decision"),
        OutRecord(limits, 0, b"k", b"kept answer"),
        OutRecord("paystream.events", 0, b"t", b"outcome"),
    ]
    summary = {"outcome": outcome, "tenant": "t", "command": command}
    emit = Emit(topic, KafkaRecord(b"t", b"outcome", ()), summary)
    return ProcessedBatch([], [emit], records, ChangelogBatch(), [0], [0, 0, 0, 0])


async def _delivered_in_groups(
    monkeypatch: pytest.MonkeyPatch, batch: ProcessedBatch
) -> list[list[bytes | None]]:
    groups: list[list[bytes | None]] = []

    async def publish(producer: Any, records: list[OutRecord], *a: Any, **kw: Any) -> list[Any]:
        groups.append([r.value for r in records])
        await asyncio.sleep(0)
        return []

    runner = commands.CommandRunner()
    monkeypatch.setattr(commands, "_publish", publish)
    monkeypatch.setattr(runner, "_kafka", lambda: (None, None))
    await runner.deliver_batch(batch)
    return groups


async def test_a_batch_with_a_rejection_lands_its_decisions_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    groups = await _delivered_in_groups(monkeypatch, _batch("command.rejected"))
    assert groups == [[b"decision", b"kept answer"], [b"entity", b"outcome"]]


async def test_a_batch_without_one_is_produced_in_one_go(monkeypatch: pytest.MonkeyPatch) -> None:
    groups = await _delivered_in_groups(monkeypatch, _batch("payment.succeeded"))
    assert groups == [[b"entity", b"decision", b"kept answer", b"outcome"]]


@pytest.mark.parametrize(
    "batch",
    [
        _batch("customer.exported", command="customer.export"),  # reads only: no entity
        _batch("", topic="paystream.commands.retry"),  # a park
        # a read of the provider: run again, it may find another status
        _batch("payment.succeeded", command="payment.refresh"),
        # a refund the provider failed: its payment read, not written (review finding)
        _batch("refund.failed", command="refund.create", entities=t.refunds),
        # an onboarding link: no entity, its URL kept nowhere (run again: a second link)
        _batch(
            "connected_account.onboarding_link_created",
            command="connected_account.onboarding_link",
        ),
    ],
    ids=["export", "park", "refresh", "refund_failed", "onboarding_link"],
)
async def test_other_answers_without_an_entity_land_their_decisions_first(
    monkeypatch: pytest.MonkeyPatch, batch: ProcessedBatch
) -> None:
    """An export's only record is its idempotency record: lost beside a later payment's
    landed entity, its redelivery listed that payment under the same event id (review
    finding)."""
    groups = await _delivered_in_groups(monkeypatch, batch)
    assert groups == [[b"decision", b"kept answer"], [b"entity", b"outcome"]]


@pytest.mark.parametrize(
    "table",
    [t.customers, t.payment_methods, t.disputes],
    ids=["customers", "payment_methods", "disputes"],
)
async def test_a_batch_changing_what_other_commands_only_read_lands_its_decisions_first(
    monkeypatch: pytest.MonkeyPatch, table: Any
) -> None:
    """A payment reads its customer and payment method, an attach its customer, a refund
    its payment's dispute, and writes none of them. With a charge's own writes lost and
    a later detach of its payment method landed, its redelivery was refused
    `invalid_state` after the card was charged (review finding; the redelivery itself:
    tests/agents/test_cross_table_redelivery.py)."""
    batch = _batch("payment_method.detached", command="payment_method.detach", entities=table)
    groups = await _delivered_in_groups(monkeypatch, batch)
    assert groups == [[b"decision", b"kept answer"], [b"entity", b"outcome"]]
