"""A window counts the commands rejected in it, by reason: `command.rejected` (whose type
starts as a command's does) was read as no outcome, and every window's rejections were
empty (review finding)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from paystream.insights.observe import observe
from paystream.settings import CloudEventsMode
from paystream.streams.codec import decode_record
from paystream.streams.outcomes import CommandRef, RejectReason, encode_outcome, rejection_data
from tests.insights.test_runner import PAID, T0, Harness


def test_observe_reads_a_rejection() -> None:
    cmd = CommandRef("acme", "c1", "payment.create", "c1", datetime.fromtimestamp(T0 / 1000, UTC))
    data = rejection_data("payment.create", RejectReason.RATE_LIMITED, "slow down")
    rec = encode_outcome(cmd, "command.rejected", data, CloudEventsMode.BINARY)
    event = decode_record(rec.key, rec.value, dict(rec.headers))
    assert event.get_type() == "com.paystream.command.rejected"
    seen = observe(event)
    assert seen is not None, "a paystream outcome (command.rejected) is read as 'not an outcome'"
    assert seen.reject_reason == "rate_limited"


@pytest.mark.asyncio
async def test_a_windows_rejections_count_its_rejected_commands() -> None:
    h = Harness("rejections")
    rejected = rejection_data("payment.create", RejectReason.QUOTA_EXCEEDED, "over the day")
    await h.runner.run_batch(
        [
            h.event("payment.succeeded", PAID, cid="c1"),
            h.event("command.rejected", rejected, cid="c2"),
        ]
    )
    h.now = (T0 + 70_000) / 1000
    await h.runner.tick(lambda p: True)
    [window] = [e.get_data() for e in h.published]
    assert window["outcomes"] == {"payment.succeeded": 1, "command.rejected": 1}, window
    assert window["rejections"] == {"quota_exceeded": 1}, window
