"""A suspension written under a key paystream does not write (' "acme"', '"\\u0061cme"':
kafka-console-producer, a script) holds while it is newer than the tenant's own record,
whatever order the registry's partitions are read in. Kafka partitions by the key's
bytes, so such a record sits on another partition, and a re-read may meet it first
(review finding: honoured only when read after the tenant's record, a restart lost the
suspension, or suspended again a tenant activated since: the fleet split on its status)."""

from __future__ import annotations

import itertools
import json

import pytest

from paystream.tenancy.mirror import RegistryState
from paystream.tenancy.models import Tenant, TenantStatus
from paystream.tenancy.registry import tenant_record

OWN = b'"acme"'
FOREIGN = b'"\\u0061cme"'


def _record(status: str = "active", **kw: object) -> bytes:
    return json.dumps({**tenant_record(Tenant(tenant_id="acme", **kw)), "status": status}).encode()


def _status(records: list[tuple[bytes, bytes | None, int]]) -> TenantStatus:
    state = RegistryState()
    for key, value, at in records:
        state.apply(key, value, at)
    return state.tenants["acme"].status


@pytest.mark.parametrize(
    ("history", "expected"),
    [
        # the tenant's record, then a suspension under another key: suspended
        ([(OWN, _record(), 1), (FOREIGN, _record("suspended"), 2)], TenantStatus.SUSPENDED),
        # activated since (a newer record of its own): active
        (
            [
                (OWN, _record(), 1),
                (FOREIGN, _record("suspended"), 2),
                (OWN, _record(name="activated"), 3),
            ],
            TenantStatus.ACTIVE,
        ),
        # the suspension taken back under the same key: active
        (
            [(OWN, _record(), 1), (FOREIGN, _record("suspended"), 2), (FOREIGN, _record(), 3)],
            TenantStatus.ACTIVE,
        ),
        (
            [(OWN, _record(), 1), (FOREIGN, _record("suspended"), 2), (FOREIGN, None, 3)],
            TenantStatus.ACTIVE,
        ),
    ],
)
def test_the_newest_says_whatever_the_read_order(
    history: list[tuple[bytes, bytes | None, int]], expected: TenantStatus
) -> None:
    own = [r for r in history if r[0] == OWN]
    foreign = [r for r in history if r[0] == FOREIGN]
    # Each key's records in their order (a partition's), interleaved every way.
    seen = set()
    for pattern in itertools.permutations([0] * len(own) + [1] * len(foreign)):
        if pattern in seen:
            continue
        seen.add(pattern)
        queues = [list(own), list(foreign)]
        order = [queues[which].pop(0) for which in pattern]
        assert _status(order) is expected, order


def test_a_tenant_served_from_an_earlier_read_is_suspended_all_the_same() -> None:
    """Its only record left is one this worker cannot read (a re-read kept what it served
    before): no record of its own here, and a suspension under another key still holds."""
    state = RegistryState()
    state.tenants["acme"] = Tenant(tenant_id="acme")  # (as RegistryMirror._swap_in keeps it)
    state.apply(FOREIGN, _record("suspended"), 5)
    assert state.tenants["acme"].status is TenantStatus.SUSPENDED
