"""Seeded crashes anywhere in the insights runner's sends: every window still counts each
outcome once, as a run without crashes does (and as the outcomes say).

The crash model. ``InsightsRunner._produce`` makes up to three sends, each awaited before
the next: *first* (the counted ids, the alerts and windows), *last* (the tenant records,
each partition's record after its tenants') and *forgotten* (the tick's deletions of
counted ids). The producer is not transactional: a send goes out as producer batches per
topic-partition, and a crash may land any part of it. One partition's records land in
order, so what a crash lands of the send it hits is, per topic-partition, a prefix (any,
from none to all), with every earlier send landed in full and no later one. The worker is
then replaced by one recovered from the changelog that landed; its first tick is a
takeover's (it publishes its tenants' windows again), and the outcomes since the last
commit of offsets are read again, in batches that need not be the first run's.

Each seed makes an outcome log: 2-3 tenants on 1-2 partitions, a backlog over up to four
hours (beyond the 15-minute horizon: the quiet-tenant raise and the forgetting of ids
matter), some outcomes re-emitted under their id, and in some seeds clients' clocks a few
minutes ahead of the producer's. The runner reads it in random batches, with ticks
between them and offsets committed now and then, through the real ``_produce`` (a stand-in
producer, ``send_batches`` recorded). The crash-free run must publish the true counts; a
run with crashes must publish the same, each window's count the highest published for it.

Found by a randomized crash exploration (review): a batch redelivered after a crash that
landed a later batch's tenant record alone vouched for that record in its partition's
record, and the tick moved a quiet neighbour past its own redelivered outcomes.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import count
from types import SimpleNamespace
from typing import Any

import pytest

import paystream.agents.insights as insights
from paystream.insights.events import WINDOW_TYPE
from paystream.streams.batch_producer import OutRecord
from paystream.streams.codec import decode_record
from tests.insights.test_runner import PAID, T0, Harness, _Event

pytestmark = pytest.mark.asyncio

MINUTE = 60_000
# 0-47, and 104. The bugs found need a rare crash (one tenant's record landed alone, an
# earlier batch redelivered, a tick between): with 3d36d4a's fix undone (a partition's
# record vouching for every tenant a batch touched) seed 104 is the only one of 0-199
# that fails; with 7da6db6's undone (the tick raising a quiet tenant to its partition's
# furthest tenant record), 16 and 104 do.
SEEDS = [*range(48), 104]
TRIALS = 4  # crash runs per seed (each against the seed's crash-free run)
CRASH_CHANCE = 0.4  # after each batch or tick that sent something
CLIENT_AHEAD_MS = 3 * MINUTE
TICK_CHANCE = 0.4  # before each batch
COMMIT_CHANCE = 0.3  # after each batch landed
BATCH_MAX = 10
OUTCOMES_MAX = 7  # per tenant
SPANS = (20, 60, 120, 240)  # minutes the outcome log spans
SENDS = ("first", "last", "forgotten")  # _produce's, in order

# What the seeds crashed in, by send (checked once they all ran: the last test).
CRASHES_IN: Counter[str] = Counter()
SEEDS_RUN: set[int] = set()

WindowKey = tuple[str, int]  # (tenant, window start ms)


@dataclass(frozen=True)
class Shape:
    tenants: int
    partitions: int
    clients_ahead: bool  # some commands dated a few minutes ahead of their production


SHAPES = [
    Shape(tenants, partitions, ahead)
    for ahead in (False, True)
    for tenants, partitions in ((2, 1), (3, 2), (3, 1))
]


class _StandInProducer:
    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2, 3}


class _AppWithStandInProducer:
    """The app as the runner sees it, with a producer that needs no broker."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self.producer = SimpleNamespace(_ensure_producer=_StandInProducer)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._app, name)


class SendRecorder:
    """``send_batches`` as the runner calls it: the records of each send, none sent."""

    def __init__(self) -> None:
        self.sends: list[list[OutRecord]] = []

    async def __call__(self, producer: Any, records: Sequence[OutRecord]) -> list[Any]:
        self.sends.append(list(records))
        return []


@dataclass
class Landed:
    """What reached the broker: the tables' changelog and the events published."""

    changelog: list[tuple[str, Any, Any, int]]  # (table, key, value or None, partition)
    published: list[Any]

    def add(self, worker: Harness, records: Sequence[OutRecord]) -> None:
        tables = {
            worker.state.changelog_topic.get_topic_name(): "state",
            worker.seen.changelog_topic.get_topic_name(): "seen",
        }
        for rec in records:
            table = tables.get(rec.topic)
            if table is None:
                self.published.append(decode_record(rec.key, rec.value, dict(rec.headers)))
            else:
                value = None if rec.value is None else json.loads(rec.value)
                self.changelog.append((table, json.loads(rec.key or b""), value, rec.partition))


_workers = count()


def _worker(landed: Landed, now: float, tenants: dict[str, Any]) -> Harness:
    """A worker whose tables are recovered from the changelog that landed."""
    worker = Harness(f"crashx{next(_workers)}")
    del worker.runner._produce  # the real one: its three sends
    worker.runner.tenants = tenants
    for table_name, key, value, partition in landed.changelog:
        store: Any = (worker.state if table_name == "state" else worker.seen).data
        if value is None:
            store.data.pop(key, None)
            store._key_partition.pop(key, None)
        else:
            store.data[key] = value
            store._key_partition[key] = partition
    worker.now = now
    return worker


def _send_kind(worker: Harness, records: Sequence[OutRecord]) -> str:
    state_topic = worker.state.changelog_topic.get_topic_name()
    seen_topic = worker.seen.changelog_topic.get_topic_name()
    if all(r.topic == state_topic for r in records):
        return "last"
    if all(r.topic == seen_topic and r.value is None for r in records):
        return "forgotten"
    return "first"


def _land_up_to_a_crash(
    rng: random.Random, worker: Harness, sends: list[list[OutRecord]], landed: Landed
) -> str:
    """A crash in one of the sends: those before it land, of it a prefix per
    topic-partition. Returns which send it hit."""
    hit = rng.randrange(len(sends))
    for records in sends[:hit]:
        landed.add(worker, records)
    in_order: dict[tuple[str, int], list[OutRecord]] = {}
    for rec in sends[hit]:
        in_order.setdefault((rec.topic, rec.partition), []).append(rec)
    for records in in_order.values():
        landed.add(worker, records[: rng.randint(0, len(records))])
    return _send_kind(worker, sends[hit])


def _outcome_log(
    rng: random.Random, shape: Shape
) -> tuple[list[_Event], dict[WindowKey, int], dict[str, Any]]:
    """The outcomes (offsets in order, per partition by production time), the true count
    of each tenant's windows, and the registered tenants."""
    maker = Harness(f"crashx{next(_workers)}")
    tenants = ["acme", "beta", "gamma"][: shape.tenants]
    partition_of = {t: rng.randrange(shape.partitions) for t in tenants}
    span = rng.choice(SPANS)
    commands = sorted(
        (T0 + rng.randrange(span * MINUTE), tenant, f"{tenant}{i}")
        for tenant in tenants
        for i in range(rng.randint(1, OUTCOMES_MAX))
    )
    events: list[_Event] = []
    ids: dict[WindowKey, set[str]] = {}
    produced_last = dict.fromkeys(range(shape.partitions), 0)
    for at_ms, tenant, cid in commands:
        ahead = rng.choice([0, 0, 0, 0, CLIENT_AHEAD_MS]) if shape.clients_ahead else 0
        partition = partition_of[tenant]
        produced = produced_last[partition] = max(at_ms, produced_last[partition])
        for again in range(2 if rng.random() < 0.15 else 1):  # re-emitted under its id
            event = maker.event(
                "payment.succeeded",
                PAID,
                cid=cid,
                tenant=tenant,
                at_ms=at_ms + ahead,
                produced_ms=produced + again * 1000,
                partition=partition,
            )
            events.append(event)
        window = (at_ms + ahead) // MINUTE * MINUTE
        ids.setdefault((tenant, window), set()).add(cid)
    truth = {key: len(cids) for key, cids in ids.items()}
    return events, truth, {t: object() for t in tenants}


def _window_counts(published: list[Any]) -> dict[WindowKey, int]:
    """Per tenant and window, the highest count published."""
    counts: dict[WindowKey, int] = {}
    for event in published:
        if event.get_type() != WINDOW_TYPE:
            continue
        data = event.get_data()
        start = datetime.fromisoformat(data["window_start"].replace("Z", "+00:00"))
        key = (data["tenant_id"], int(start.timestamp() * 1000))
        counts[key] = max(counts.get(key, 0), data["events"])
    return counts


@dataclass
class Run:
    counts: dict[WindowKey, int]  # as published
    truth: dict[WindowKey, int]  # as the outcomes say
    crashes: Counter[str]  # by send


async def _run(seed: int, shape: Shape, recorder: SendRecorder, trial: int | None) -> Run:
    """The seed's outcome log read to the end; crashing if ``trial`` is given."""
    events, truth, tenants = _outcome_log(random.Random(seed), shape)
    schedule = random.Random(seed * 7 + 1)  # batches, ticks, commits
    crash_rng = random.Random(seed * 1000 + (trial or 0) + 17)
    crash_chance = 0.0 if trial is None else CRASH_CHANCE
    landed = Landed([], [])
    last_produced = max(e.message.timestamp or 0 for e in events)
    worker = _worker(landed, last_produced + schedule.choice([1, 300, 1200]), tenants)
    read: dict[int, int] = {}  # partition → offset read up to
    committed: dict[int, int] = {}
    crashes: Counter[str] = Counter()
    for _ in range(2000):
        unread = [e for e in events if e.message.offset > read.get(e.message.partition, 0)]
        steps = ["tick"] if schedule.random() < TICK_CHANCE else []
        if unread:
            steps.append("batch")
        elif not steps:
            break
        for step in steps:
            recorder.sends.clear()
            if step == "tick":
                worker.now += schedule.choice([1, 2, 30, 120])
                await worker.runner.tick(lambda p: True)
            else:
                batch = unread[: schedule.randint(1, BATCH_MAX)]
                worker.now += schedule.choice([0, 1, 5])
                await worker.runner.run_batch(batch)  # type: ignore[arg-type]
                for event in batch:
                    read[event.message.partition] = event.message.offset
            if recorder.sends and crash_rng.random() < crash_chance:
                crashes[_land_up_to_a_crash(crash_rng, worker, recorder.sends, landed)] += 1
                worker = _worker(landed, worker.now + 1, tenants)  # restarted
                read = dict(committed)  # read again from the last commit
                break
            for records in recorder.sends:
                landed.add(worker, records)
            if step == "batch" and schedule.random() < COMMIT_CHANCE:
                committed = dict(read)
    else:
        raise AssertionError(f"seed {seed}: the log was never read to its end")
    # Every window closed: the tick publishes what it has not.
    worker.now = (T0 + 400 * MINUTE) / 1000
    worker.runner._ticked = 0.0
    recorder.sends.clear()
    await worker.runner.tick(lambda p: True)
    for records in recorder.sends:
        landed.add(worker, records)
    return Run(_window_counts(landed.published), truth, crashes)


def _differences(got: dict[WindowKey, int], want: dict[WindowKey, int]) -> dict[Any, Any]:
    return {
        k: (got.get(k), want.get(k)) for k in got.keys() | want.keys() if got.get(k) != want.get(k)
    }


@pytest.mark.parametrize("seed", SEEDS)
async def test_a_crash_in_any_send_loses_and_doubles_no_outcome(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = SendRecorder()
    monkeypatch.setattr(insights, "app", _AppWithStandInProducer(insights.app))
    monkeypatch.setattr(insights, "send_batches", recorder)
    shape = SHAPES[seed % len(SHAPES)]
    reference = await _run(seed, shape, recorder, trial=None)
    assert reference.counts == reference.truth, (
        shape,
        _differences(reference.counts, reference.truth),
    )
    for trial in range(TRIALS):
        crashed = await _run(seed, shape, recorder, trial)
        # (got, crash-free) per window that differs
        assert crashed.counts == reference.counts, (
            shape,
            trial,
            dict(crashed.crashes),
            _differences(crashed.counts, reference.counts),
        )
        CRASHES_IN.update(crashed.crashes)
    SEEDS_RUN.add(seed)


async def test_the_seeds_crashed_in_each_of_the_three_sends() -> None:
    """(Run after the seeds, when they all ran: crashes hit each of _produce's sends.)"""
    if not SEEDS_RUN.issuperset(SEEDS):
        pytest.skip("only with every seed run")
    for send in SENDS:
        assert CRASHES_IN[send] >= 20, dict(CRASHES_IN)
