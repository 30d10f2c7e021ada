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
