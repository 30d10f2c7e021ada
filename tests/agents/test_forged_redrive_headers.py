"""A first-attempt header anyone may add does not make a fresh command a re-drive
(review finding): over the value or attribute limit, such a command was dead-lettered
unanswered and replayable, `dlq replay` sealed it, and the worker ran a command no
worker had admitted past the operator's limit; over the ceiling, every replay
dead-lettered it again with its first time, until its age held its dead-letter
partition back, every tenant's records behind it. Now it is refused as any other
command over the limit; a re-drive the worker's records know still waits unanswered."""

from __future__ import annotations

import time

import pytest

from paystream.agents.pipeline import Inbound
from paystream.dlq import ParkedRecord
from paystream.first_attempt import FIRST_ATTEMPT_HEADER
from paystream.settings import COMMAND_MAX_BYTES_CEILING
from tests.agents.harness import Harness, kind, new_tenant_id, outcome_of
from tests.agents.test_redrive_size import (  # noqa: F401 (keyed: a fixture)
    _big_payment,
    _lower_limit,
    _parked,
    _redriven,
    _structured_with_big_attribute,
    keyed,
)

pytestmark = pytest.mark.asyncio


def _with_forged_first_attempt(rec: Inbound, value: bytes | None = None) -> Inbound:
    headers = {**rec.headers, FIRST_ATTEMPT_HEADER: b"1"}
    return Inbound(rec.key, rec.value if value is None else value, headers, rec.timestamp_ms,
                   rec.topic, 0, 5)  # fmt: skip


def _refused_for_good(h: Harness, emits: list) -> None:  # type: ignore[type-arg]
    out = outcome_of(h.settings, emits)
    assert out is not None and kind(out) == "command.rejected", out
    assert out.get_data()["reason"] == "payload_too_large"
    [letter] = [e.record for e in emits if e.topic == h.settings.dlq_topic]
    parked = ParkedRecord(h.settings.dlq_topic, 0, 0, letter.key, letter.value,
                          tuple(letter.headers), int(time.time() * 1000))  # fmt: skip
    assert parked.reason == "payload_too_large" and not parked.replayable


async def test_a_fresh_command_over_the_limit_with_a_forged_first_attempt_is_refused(
    keyed: Harness,  # noqa: F811
) -> None:
    t = new_tenant_id()
    keyed.add_tenant(t)
    _lower_limit(keyed)
    emits = await keyed.processor.process(_with_forged_first_attempt(_big_payment(t, 20_000)))
    _refused_for_good(keyed, emits)


async def test_a_forged_first_attempt_over_the_ceiling_is_refused_not_replayable(
    keyed: Harness,  # noqa: F811
) -> None:
    t = new_tenant_id()
    keyed.add_tenant(t)
    fresh = _big_payment(t, 20_000)
    padded = (fresh.value or b"") + b" " * COMMAND_MAX_BYTES_CEILING
    emits = await keyed.processor.process(_with_forged_first_attempt(fresh, padded))
    _refused_for_good(keyed, emits)


async def test_a_known_request_resent_over_the_ceiling_unsealed_is_not_replayable(
    keyed: Harness,  # noqa: F811
) -> None:
    """Its own parked command, padded past any limit and sent with the parked record's
    first attempt but no seal: none such was ever admitted, so it is not one to wait
    (replayable, it would come back on every replay and then hold its partition)."""
    _, parked = await _parked(keyed, 20_000)
    unsealed = _redriven(keyed, parked, sealed=False)
    padded = (unsealed.value or b"") + b" " * COMMAND_MAX_BYTES_CEILING
    emits = await keyed.processor.process(
        Inbound(unsealed.key, padded, unsealed.headers, unsealed.timestamp_ms, unsealed.topic, 0, 3)
    )
    _refused_for_good(keyed, emits)


async def test_a_forged_first_attempt_on_oversized_attributes_is_refused(
    keyed: Harness,  # noqa: F811
) -> None:
    t = new_tenant_id()
    keyed.add_tenant(t)
    emits = await keyed.processor.process(
        _with_forged_first_attempt(_structured_with_big_attribute(t, "a1"))
    )
    _refused_for_good(keyed, emits)
