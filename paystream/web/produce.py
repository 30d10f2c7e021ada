"""Producing a command from a web request (a webhook's refresh, the HTTP ingress)."""

from __future__ import annotations

import asyncio
import logging

from paystream.app import app, settings
from paystream.log_limits import ThrottledLog
from paystream.streams.codec import KafkaRecord

__all__ = ["SEND_TIMEOUT_SECONDS", "NotProduced", "produce_command"]

log = logging.getLogger(__name__)
_throttled = ThrottledLog(log)

# Callers wait on the answer (Stripe about 20 s, an HTTP client its own timeout): a
# produce that takes longer is answered 503 and the request sent again.
SEND_TIMEOUT_SECONDS = 10.0


class NotProduced(Exception):
    """The broker did not acknowledge the command in time; it may or may not be on the
    topic (the same command id is the safe retry)."""


async def produce_command(rec: KafkaRecord, tenant: str, why: str) -> None:
    """Produce a command to the commands topic and wait for the broker's acknowledgement.
    ``why`` names the caller in the (throttled, per tenant) warning a failure logs."""

    async def send() -> None:
        sent = await app.producer.send(
            settings.commands_topic, rec.key, rec.value, None, None, list(rec.headers)
        )
        await sent

    try:
        # Bounded as a whole: the send itself waits while the producer has no metadata.
        await asyncio.wait_for(send(), SEND_TIMEOUT_SECONDS)
    except Exception as exc:  # whatever failed, the caller's answer is "send it again"
        _throttled.warning(
            (why, tenant), "%s for %s: command not produced: %s", why, tenant, type(exc).__name__
        )
        raise NotProduced(type(exc).__name__) from None
