"""Producing a command from a web request (a webhook's refresh, the HTTP ingress)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from paystream.log_limits import ThrottledLog

__all__ = ["SEND_TIMEOUT_SECONDS", "NotProduced", "acknowledged"]

log = logging.getLogger(__name__)
_throttled = ThrottledLog(log)

# Callers wait on the answer (Stripe about 20 s, an HTTP client its own timeout): a
# produce that takes longer is answered 503 and the request sent again.
SEND_TIMEOUT_SECONDS = 10.0


class NotProduced(Exception):
    """The broker did not acknowledge the command in time; it may or may not be on the
    topic (the same command id is the safe retry). ``maybe_taken`` False: it was never
    handed to a producer."""

    def __init__(self, why: str, *, maybe_taken: bool = True) -> None:
        super().__init__(why)
        self.maybe_taken = maybe_taken


async def acknowledged(
    send: Callable[[], Awaitable[Awaitable[Any]]], tenant: str, why: str
) -> None:
    """``send()`` hands a record to a producer and gives the future of its delivery: both
    awaited within SEND_TIMEOUT_SECONDS, or NotProduced. ``why`` names the caller in the
    (throttled, per tenant) warning a failure logs."""
    try:
        # Bounded as a whole: the send itself waits while the producer has no metadata.
        async with asyncio.timeout(SEND_TIMEOUT_SECONDS):
            await (await send())
    except Exception as exc:  # whatever failed, the caller's answer is "send it again"
        _throttled.warning(
            (why, tenant), "%s for %s: command not produced: %s", why, tenant, type(exc).__name__
        )
        raise NotProduced(type(exc).__name__) from None
