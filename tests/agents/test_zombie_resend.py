"""A batch's records were produced again after the worker's group membership lapsed
(frozen, or cut off from the coordinator, past the session timeout while its produce was
failing, or between the two produce groups of a batch that lands its decisions first;
review h68f). The lease was checked once, in _deliver, before the first send; the
retries in _publish and the second group in deliver_batch went out without asking it, so
a zombie worker's stale table changes could land in changelogs whose partitions another
worker then owned and had written newer values to (review h61c's failure, by another
door). Each send after the first now asks it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError

from paystream.agents import commands
from paystream.agents.commands import ProcessedBatch, _changelog_name
from paystream.agents.member_lease import lease
from paystream.agents.pipeline import Emit
from paystream.streams.batch_producer import OutRecord
from paystream.streams.codec import KafkaRecord
from paystream.tables import definitions as t
from paystream.tables.changelog import ChangelogBatch

pytestmark = [pytest.mark.asyncio(loop_scope="session")]


class _Coordinator:
    def __init__(self) -> None:
        self.member_id = "member-1"  # not told it is no member: not heard from the broker


def _batch(outcome: str) -> ProcessedBatch:
    records = [
        OutRecord(_changelog_name(t.payments), 0, b"pay_1", b"stale payment"),
        OutRecord(_changelog_name(t.idempotency), 0, b"k", b"decision"),
        OutRecord("paystream.events", 0, b"t", b"outcome"),
    ]
    emit = Emit(
        "paystream.events",
        KafkaRecord(b"t", b"outcome", ()),
        {"outcome": outcome, "tenant": "t", "command": "payment.create"},
    )
    return ProcessedBatch([], [emit], records, ChangelogBatch(), [0], [0, 0, 0])


def _lapse(monkeypatch: pytest.MonkeyPatch) -> None:
    """The last heartbeat accepted is older than the session timeout: the coordinator may
    have expired this worker and given its partitions to another."""
    monkeypatch.setattr(lease, "_accepted", time.monotonic() - 10 * lease.session_timeout)
    # Its next heartbeat, a moment after it thawed (or the network healed), is answered
    # UNKNOWN_MEMBER_ID: aiokafka resets its member id. Its retry does not wait for that.
    coordinator = lease._coordinator
    asyncio.get_running_loop().call_later(0.2, setattr, coordinator, "member_id", "")


def _member(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lease, "_coordinator", _Coordinator())
    monkeypatch.setattr(lease, "_accepted", time.monotonic())
    assert not lease.lapsed()


async def test_a_retry_after_the_lease_lapsed_is_not_produced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _member(monkeypatch)
    produced: list[list[bytes | None]] = []
    attempts = 0

    async def send_batches(producer: Any, records: list[OutRecord], **_: Any) -> list[Any]:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            # The broker unreachable; meanwhile the worker is frozen (or partitioned away)
            # past the session timeout, and its partitions go to another worker.
            _lapse(monkeypatch)
            raise KafkaConnectionError("connection to the broker lost")
        produced.append([r.value for r in records])
        return []

    monkeypatch.setattr(commands, "send_batches", send_batches)
    monkeypatch.setattr(commands, "PUBLISH_RETRY_MAX_SECONDS", 0.001)
    runner = commands.CommandRunner()
    monkeypatch.setattr(runner, "_kafka", lambda: (None, None))
    # (Failing the batch, so that the worker exits uncommitted, is a fine answer.)
    with contextlib.suppress(Exception):
        await runner.deliver_batch(_batch("payment.succeeded"))
    assert produced == [], "records produced again after this worker's membership lapsed"


async def test_the_rest_of_a_batch_is_not_produced_after_the_lease_lapsed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch with a rejection lands its decisions first, waits for them, then the rest
    (_delivery_order): a freeze past the session timeout during the first group's round
    trip leaves the rest (the entity writes) to go out unchecked."""
    _member(monkeypatch)
    groups: list[list[bytes | None]] = []

    async def publish(producer: Any, records: list[OutRecord], *a: Any, **kw: Any) -> list[Any]:
        groups.append([r.value for r in records])
        _lapse(monkeypatch)  # frozen while the first group's acknowledgement was awaited
        return []

    monkeypatch.setattr(commands, "_publish", publish)
    runner = commands.CommandRunner()
    monkeypatch.setattr(runner, "_kafka", lambda: (None, None))
    with contextlib.suppress(Exception):  # (failing the batch is a fine answer)
        await runner.deliver_batch(_batch("command.rejected"))
    assert groups == [[b"decision"]], "the rest produced after the membership lapsed"
