"""A tenant's commands read from two partitions of the commands topic: its state is split
between them (limits counted per partition, a capture not finding its payment), so the
worker counts and logs it (review finding: nothing told the operator)."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest

from paystream import metrics
from paystream.agents.pipeline import Inbound
from tests.agents.harness import Harness


def _create(tenant: str, command_id: str, partition: int, offset: int) -> Inbound:
    return Inbound(
        key=tenant.encode(),
        value=json.dumps({"email": "a@example.com"}).encode(),
        headers={
            "ce_specversion": b"1.0",
            "ce_id": command_id.encode(),
            "ce_type": b"com.paystream.command.customer.create",
            "ce_source": b"/x",
            "ce_tenantid": tenant.encode(),
            "content-type": b"application/json",
        },
        timestamp_ms=0,
        topic="paystream.commands",
        partition=partition,
        offset=offset,
    )


def _changes(tenant: str) -> float:
    return metrics.TENANT_PARTITION_CHANGES.labels(tenant)._value.get()


async def test_a_tenant_on_a_second_partition_is_counted_and_logged(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    t = harness.add_tenant()
    first = _create(t, "c1", partition=0, offset=1)
    await harness.raw(first)
    await harness.raw(_create(t, "c2", partition=0, offset=2))
    assert _changes(t) == 0  # one partition: as it should be
    with caplog.at_level(logging.WARNING):
        await harness.raw(_create(t, "c3", partition=1, offset=1))
    assert _changes(t) == 1
    assert f"tenant {t}: a command from commands-topic partition 1 after one from 0" in (
        caplog.text
    )
    await harness.raw(_create(t, "c4", partition=1, offset=2))
    await harness.raw(dataclasses.replace(first, offset=3))
    assert _changes(t) == 2  # back and forth: each change counts


async def test_unregistered_tenants_and_records_without_a_partition_are_not_tracked(
    harness: Harness,
) -> None:
    await harness.raw(_create("nobody-here", "c1", partition=0, offset=1))
    await harness.raw(_create("nobody-here", "c2", partition=1, offset=1))
    assert "nobody-here" not in harness.processor._partition_of  # made-up ids: unbounded
    t = harness.add_tenant()
    await harness.raw(_create(t, "c1", partition=-1, offset=-1))
    assert t not in harness.processor._partition_of


async def test_an_outcome_echoes_its_records_request_header(harness: Harness) -> None:
    """A sender's request header comes back on its record's outcome (not on a dead
    letter), so two senders of one command id tell their outcomes apart; a value that
    is not letters alone (card data could hide in digits) is not echoed."""
    t = harness.add_tenant()
    mine = b"abcdefghijklmnopqrstuvwxyz"
    rec = _create(t, "c1", partition=0, offset=1)
    emits = await harness.raw(
        dataclasses.replace(rec, headers={**rec.headers, "paystream-request": mine})
    )
    [outcome] = [e for e in emits if e.topic == harness.settings.events_topic]
    assert dict(outcome.record.headers)["paystream-request"] == mine
    other = b"zyxwvutsrqponmlkjihgfedcba"  # another sender, the same id and data
    again = dataclasses.replace(rec, offset=2, headers={**rec.headers, "paystream-request": other})
    [replayed] = [e for e in await harness.raw(again) if e.topic == harness.settings.events_topic]
    assert dict(replayed.record.headers)["paystream-request"] == other
    assert replayed.record.value == outcome.record.value  # the same event
    digits = dataclasses.replace(
        rec, offset=3, headers={**rec.headers, "paystream-request": b"4242424242424242"}
    )
    [plain] = [e for e in await harness.raw(digits) if e.topic == harness.settings.events_topic]
    assert "paystream-request" not in dict(plain.record.headers)
