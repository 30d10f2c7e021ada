"""What a record forged on the retry or dead-letter topic gains through `dlq replay`,
which seals the first-attempt time a parked record carries as it re-sends it: nothing a
command sent straight to the commands topic would not get (review finding).

* A read (`payment.refresh`) is never held back as stale, so a forged one "first run"
  long ago came back sealed with that time, and the card-data gate took the old time as
  a sign the provider may have acted on it: a security code in its id went out on the
  events topic. A read can double nothing: it is refused like any other.
"""

from __future__ import annotations

import time
from typing import Any

from paystream import dlq
from paystream.agents.pipeline import Inbound
from paystream.client import build_command
from paystream.dlq import ParkedRecord
from paystream.first_attempt import FIRST_ATTEMPT_HEADER
from tests.agents.conftest import running_harness
from tests.agents.harness import Harness, data, outcome_of
from tests.agents.test_card_data_hiding_places import _blob, _inbound, _shows_code
from tests.agents.test_replay_window import _KEY


class _Capture:
    """A producer that keeps what `dlq replay` sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []

    async def send_and_wait(
        self, topic: str, value: Any, *, key: Any, headers: Any, partition: Any
    ) -> None:
        self.sent.append((topic, key, value, headers, partition))


async def _through_replay(h: Harness, parked: ParkedRecord) -> Inbound:
    """``parked`` re-sent as `dlq replay` re-sends it, as the worker reads it back."""
    producer = _Capture()
    await dlq._resend(producer, h.settings, parked, {0})  # type: ignore[arg-type]
    [(_, key, value, headers, _)] = producer.sent
    return Inbound(
        key, value, dict(headers), int(time.time() * 1000), h.settings.commands_topic, 0, 7
    )


def _parked(topic: str, rec: Inbound, *extra: tuple[str, bytes]) -> ParkedRecord:
    headers = tuple(rec.headers.items()) + extra
    return ParkedRecord(topic, 0, 0, rec.key, rec.value, headers, int(time.time() * 1000))


async def test_a_forged_ancient_refresh_gets_no_card_code_past_the_gate(redis_url: str) -> None:
    async with running_harness(redis_url, master_key=_KEY) as h:
        t = h.add_tenant()
        direct = build_command(
            "payment.refresh", t, {"payment_id": "p1"}, command_id='{"card_cvc":"737"}'
        )
        out = outcome_of(h.settings, await h.raw(_inbound(direct, 1, ce_cardcvc=b"737")))
        assert out is not None and data(out)["reason"] == "card_data_forbidden"

        event = build_command(
            "payment.refresh", t, {"payment_id": "p2"}, command_id='{"n":2,"card_cvc":"737"}'
        )
        forged = _parked(
            h.settings.retry_topic,
            _inbound(event, 2, ce_cardcvc=b"737"),
            (FIRST_ATTEMPT_HEADER, b"1"),
            ("paystream-park-reason", b"provider_unavailable"),
        )
        assert forged.replayable and forged.reads_only  # never held back as stale
        emits = await h.raw(await _through_replay(h, forged))
        out = outcome_of(h.settings, emits)
        assert out is not None and data(out)["reason"] == "card_data_forbidden", data(out)
        assert not _shows_code(_blob(emits))
