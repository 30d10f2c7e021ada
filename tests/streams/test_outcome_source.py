"""Outcome attribute rules the suite did not pin (mutation testing, round 3)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from paystream.settings import CloudEventsMode
from paystream.streams.codec import decode_record
from paystream.streams.outcomes import CommandRef, encode_outcome


@pytest.mark.parametrize("mode", list(CloudEventsMode))
def test_a_made_up_tenant_id_is_one_segment_of_the_source(mode: CloudEventsMode) -> None:
    """A sender's made-up tenant id (answered unknown_tenant) may hold slashes: unescaped,
    "x/../acme" made the rejection's source a path into another tenant's
    (/paystream/tenants/x/../acme/command resolves to acme's)."""
    cmd = CommandRef("x/../acme", "c1", "payment.create", "c1", datetime(2026, 1, 2, tzinfo=UTC))
    rec = encode_outcome(cmd, "command.rejected", {"reason": "unknown_tenant"}, mode)
    source = decode_record(rec.key, rec.value, dict(rec.headers)).get_source()
    assert source == "/paystream/tenants/x%2F..%2Facme/command"
