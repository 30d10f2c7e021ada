"""`dlq replay` and a dead letter kept without its bytes but with its key (review h70g):
passed over at once, never re-sent, and the tenant's real re-send behind it still goes."""

from __future__ import annotations

import time
from typing import Any

import pytest

from paystream.dlq import replay
from tests.fixtures.pipeline import RawSend

pytestmark = [pytest.mark.asyncio(loop_scope="session")]


async def test_replay_passes_over_a_keyed_redacted_letter_unpaced(
    deployment_factory: Any,
) -> None:
    """Redacted and dropped letters keyed by a paced tenant are passed over at once (no
    token taken, never re-sent); the tenant's real re-send behind them still goes."""
    dep = await deployment_factory()
    settings = dep.settings
    await dep.produce(
        settings.dlq_topic,
        RawSend(key=b"acme", value=b"", partition=0,
                headers=(("paystream-dlq-redacted", b"card_number"),)),
        RawSend(key=b"acme", value=b"", partition=0,
                headers=(("paystream-dlq-dropped", b"too_large_to_keep"),
                         ("paystream-source", b"c/0/1"))),
        RawSend(key=b"acme", value=b"cmd", partition=0),
    )  # fmt: skip
    started = time.monotonic()
    result = await replay(settings, [settings.dlq_topic], rate_per_tenant=1)
    assert time.monotonic() - started < 5
    assert result.redacted == 1 and len(result.dropped) == 1
    assert sum(result.replayed.values()) == 1 and result.paced_seconds == 0
