"""Commands as the pipeline receives them, for the transfer and payout limit tests: one
record of a command at a broker time and offset, run through the harness's processor."""

from __future__ import annotations

import itertools
import time
from typing import Any

from paystream.agents.pipeline import Emit, Inbound
from paystream.client import build_command
from paystream.settings import CloudEventsMode
from paystream.streams.codec import encode_event
from tests.agents.harness import Harness, outcome_of

__all__ = ["OFFSETS", "T0", "command_record", "run", "send"]

# The broker's time of the records (what the tests set up before is sent now).
T0 = int(time.time() * 1000)
OFFSETS = itertools.count(1_000)


def command_record(command_type: str, tenant: str, body: dict[str, Any], command_id: str,
           at_ms: int, offset: int, **kw: Any) -> Inbound:  # fmt: skip
    event = build_command(command_type, tenant, body, command_id=command_id, **kw)
    rec = encode_event(event, tenant.encode(), CloudEventsMode.BINARY)
    return Inbound(rec.key, rec.value, dict(rec.headers), at_ms, "paystream.commands", 0, offset)


async def run(h: Harness, rec: Inbound) -> tuple[list[Emit], Any]:
    emits = await h.processor.process(rec)
    return emits, outcome_of(h.settings, emits)


async def send(h: Harness, t: str, command_type: str, body: dict[str, Any],
               at_ms: int = T0, command_id: str | None = None) -> Any:  # fmt: skip
    offset = next(OFFSETS)
    _, out = await run(
        h, command_record(command_type, t, body, command_id or f"c{offset}", at_ms, offset)
    )
    assert out is not None
    return out
