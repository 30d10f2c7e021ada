"""The insights runner's _produce sent three groups one after another (the counted ids,
alerts and windows; then the tenant records; then the forgotten ids), each awaited, and
asked the membership lease only once, before run_batch: a worker frozen past the session
timeout while its first group's acknowledgement was awaited still produced the tenant
records afterwards, over the partitions' new owner's newer ones (review h68v; the
command agent's sibling hole closed by h68f)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from types import SimpleNamespace
from typing import Any

import pytest

from paystream.agents import insights
from paystream.agents.insights import InsightsRunner
from paystream.agents.member_lease import lease
from paystream.streams.batch_producer import OutRecord

pytestmark = [pytest.mark.asyncio(loop_scope="session")]


class _Coordinator:
    member_id = "member-1"


def _topic(name: str) -> Any:
    return SimpleNamespace(changelog_topic=SimpleNamespace(get_topic_name=lambda: name))


async def test_the_tenant_records_are_not_produced_after_the_lease_lapsed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(lease, "_coordinator", _Coordinator())
    monkeypatch.setattr(lease, "_accepted", time.monotonic())
    assert not lease.lapsed()
    groups: list[list[bytes | None]] = []

    async def send_batches(producer: Any, records: list[OutRecord]) -> list[Any]:
        groups.append([r.value for r in records])
        # Frozen while this group's acknowledgement was awaited, past the session
        # timeout; the coordinator then tells it it is no member.
        monkeypatch.setattr(lease, "_accepted", time.monotonic() - 10 * lease.session_timeout)
        asyncio.get_running_loop().call_later(0.05, setattr, lease._coordinator, "member_id", "")
        return []

    monkeypatch.setattr(insights, "send_batches", send_batches)
    producer = object()
    monkeypatch.setattr(
        insights,
        "app",
        SimpleNamespace(producer=SimpleNamespace(_ensure_producer=lambda: producer)),
    )
    runner = InsightsRunner.__new__(InsightsRunner)
    runner._partitioner = None
    runner.state = _topic("insights-state-changelog")
    runner.seen = _topic("insights-seen-changelog")
    records = [
        OutRecord("insights-seen-changelog", 0, b"t:evt_1", b"counted id"),
        OutRecord("insights-state-changelog", 0, b'"t"', b"tenant record"),
    ]
    with contextlib.suppress(Exception):  # (failing the batch is a fine answer)
        await runner._produce(records, [], SimpleNamespace(persisted=lambda sent: None))
    assert groups == [[b"counted id"]], "tenant records produced after the membership lapsed"
