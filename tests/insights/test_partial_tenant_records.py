"""A crash lands one tenant's record of a batch and not its neighbour's (the same
partition: their changelog records split over two producer batches, which land in
order), then a tick runs before the batch is redelivered (offsets are committed
periodically: the batches since the last commit come again, with a tick after each). The
tick raises the quiet-looking neighbour's stream time to the landed record's, and its own
outcomes of that batch, redelivered, count as late: lost. It needs two tenants on a
partition, over 512 KB of tenant records in one send (they then go in two producer
batches) and a backlog batch spanning more than the horizon (the ledger's database down
for a while). Found by a randomized crash exploration of the runner; fixed by taking the
quiet-tenant raise from a per-partition record produced after all of the partition's
tenant records, not from the highest of them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from paystream.agents.insights import partition_key
from paystream.insights.events import WINDOW_TYPE
from tests.insights.test_runner import PAID, T0, Harness

pytestmark = pytest.mark.asyncio

MINUTE = 60_000


def _recover(into: Harness, records: list[Any], frm: Harness) -> None:
    for rec in records:  # the changelog replayed into the new worker's stores
        state = rec.topic == frm.state.changelog_topic.get_topic_name()
        table = into.state if state else into.seen
        key = json.loads(rec.key)
        if rec.value is None:
            table.data.data.pop(key, None)
            table.data._key_partition.pop(key, None)
        else:
            table.data.data[key] = json.loads(rec.value)
            table.data._key_partition[key] = rec.partition


async def _published_after_an_hour(h: Harness) -> dict[tuple[str, str], int]:
    """Each window's count, the highest published, after a tick an hour on."""
    h.now = (T0 + 60 * MINUTE) / 1000
    h.runner._ticked = 0.0
    await h.runner.tick(lambda p: True)
    out: dict[tuple[str, str], int] = {}
    for e in h.of_type(WINDOW_TYPE):
        d = e.get_data()
        k = (d["tenant_id"], d["window_start"])
        out[k] = max(out.get(k, 0), d["events"])
    return out


async def _run(crash: bool) -> dict[tuple[str, str], int]:
    a = Harness(f"partial-a-{crash}")

    def at(ms: int) -> None:
        a.now = ms / 1000

    # beta: one outcome at T0, its window published.
    at(T0 + 1_000)
    await a.runner.run_batch(
        [a.event("payment.succeeded", PAID, cid="b0", tenant="beta", at_ms=T0, produced_ms=T0)]
    )
    at(T0 + 70_000)
    await a.runner.tick(lambda p: True)
    # A backlog read 40 minutes on (both tenants on partition 0): acme at +10 and +35 min,
    # beta at +10 min.
    t10, t35 = T0 + 10 * MINUTE, T0 + 35 * MINUTE
    batch = [
        a.event("payment.succeeded", PAID, cid="a0", at_ms=t10, produced_ms=t10),
        a.event("payment.succeeded", PAID, cid="b1", tenant="beta", at_ms=t10, produced_ms=t10),
        a.event("payment.succeeded", PAID, cid="a1", at_ms=t35, produced_ms=t35),
    ]
    at(T0 + 40 * MINUTE)
    landed_before = len(a.changelog)
    await a.runner.run_batch(batch)
    h = a
    if crash:
        # The crash: the ids and events landed (first send), the tenant records' send
        # landed its first producer batch (acme's record) and not its second (beta's).
        state_topic = a.state.changelog_topic.get_topic_name()
        new = a.changelog[landed_before:]
        state_keys = [json.loads(r.key) for r in new if r.topic == state_topic]
        assert state_keys == ["acme", "beta", partition_key(0)]
        # One partition's records land in order: beta's lost, what follows it is too.
        landed = a.changelog[:landed_before] + [
            r for r in new if not (r.topic == state_topic and json.loads(r.key) != "acme")
        ]
        b = Harness(f"partial-b-{crash}")
        _recover(b, landed, a)
        b.published = list(a.published)
        b.now = a.now + 1
        await b.runner.tick(lambda p: True)  # after a redelivered earlier batch, say
        await b.runner.run_batch(batch)  # redelivered from the last commit
        h = b
    return await _published_after_an_hour(h)


async def test_a_neighbours_record_landed_alone_does_not_make_a_tenants_outcomes_late() -> None:
    reference = await _run(crash=False)
    assert reference[("beta", "2023-11-14T22:24:00Z")] == 1  # b1 counted
    crashed = await _run(crash=True)
    assert crashed == reference


async def _run_redelivered_earlier(crash: bool) -> dict[tuple[str, str], int]:
    """Batch x lands in full (not committed), batch y's tenant records land beta's alone;
    redelivered from the last commit, x comes again before y, beta all applied in it."""
    a = Harness(f"earlier-a-{crash}")
    a.now = (T0 + 1_000) / 1000
    await a.runner.run_batch(
        [
            a.event("payment.succeeded", PAID, cid="b0", tenant="beta", at_ms=T0, produced_ms=T0),
            a.event("payment.succeeded", PAID, cid="a0", at_ms=T0, produced_ms=T0),
        ]
    )
    a.now = (T0 + 70_000) / 1000
    await a.runner.tick(lambda p: True)
    t5, t10, t35 = T0 + 5 * MINUTE, T0 + 10 * MINUTE, T0 + 35 * MINUTE
    x = [
        a.event("payment.succeeded", PAID, cid="a1", at_ms=t5, produced_ms=t5),
        a.event("payment.succeeded", PAID, cid="b1", tenant="beta", at_ms=t5, produced_ms=t5),
    ]
    y = [
        a.event("payment.succeeded", PAID, cid="b2", tenant="beta", at_ms=t10, produced_ms=t10),
        a.event("payment.succeeded", PAID, cid="a2", at_ms=t10, produced_ms=t10),
        a.event("payment.succeeded", PAID, cid="b3", tenant="beta", at_ms=t35, produced_ms=t35),
    ]
    a.now = (T0 + 40 * MINUTE) / 1000
    await a.runner.run_batch(x)
    landed_before = len(a.changelog)
    await a.runner.run_batch(y)
    h = a
    if crash:
        state_topic = a.state.changelog_topic.get_topic_name()
        new = a.changelog[landed_before:]
        assert [json.loads(r.key) for r in new if r.topic == state_topic] == [
            "beta",
            "acme",
            partition_key(0),
        ]
        landed = a.changelog[:landed_before] + [  # partition 0's prefix: beta's record
            r for r in new if not (r.topic == state_topic and json.loads(r.key) != "beta")
        ]
        b = Harness(f"earlier-b-{crash}")
        _recover(b, landed, a)
        b.published = list(a.published)
        b.now = a.now + 1
        await b.runner.run_batch(x)  # redelivered from the last commit (all applied)
        b.now += 1
        await b.runner.tick(lambda p: True)  # a tick after each batch
        await b.runner.run_batch(y)
        h = b
    return await _published_after_an_hour(h)


async def test_an_earlier_batch_redelivered_does_not_vouch_for_a_record_landed_alone() -> None:
    """The partition's record was written from every tenant the batch touched, beta too,
    whose outcomes in x were all applied before by its record from y, landed alone: it
    then vouched for y's stream time, and the tick moved acme there (review finding)."""
    reference = await _run_redelivered_earlier(crash=False)
    assert reference[("acme", "2023-11-14T22:24:00Z")] == 1  # a2 counted
    crashed = await _run_redelivered_earlier(crash=True)
    assert crashed == reference
