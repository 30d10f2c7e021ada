"""Every Tansu (embedded development broker) workaround, in one place, off for real Kafka.

Tansu 0.6.0 with memory storage is the only Kafka-protocol broker the development
machines can run (``/work/shared/TANSU.md`` has the measurements). Everything here is
gated on ``settings.embedded_broker`` (``PAYSTREAM_BROKER_FLAVOR=tansu``), and
``paystream doctor`` checks both the quirk and that its workaround is active, so each
item can be deleted the day Tansu fixes the underlying bug:

==========================  =====================================  =========================
workaround                  why                                    drop it when
==========================  =====================================  =========================
short session/heartbeat     a new group's join takes about         doctor's group-join check
(``faust_overrides``)       ``session_timeout / 2`` on Tansu       is fast with defaults
short worker fetch wait     a waiting Fetch is not woken by new    doctor's caught-up fetch
(``_patch_fetch_wait``)     data; Faust hard-codes 1500 ms         latency is low unpatched
end-offset correction       ``ListOffsets(LATEST)`` answers the    doctor's end-offset check
(``_patch_end_offsets``)    last batch's base offset + 1           passes unpatched
InitProducerId v3           v0 (aiokafka's only version) fails     ``enable_idempotence``
(``_patch_init_producer``)  with UNKNOWN_SERVER_ERROR              works unpatched
LeaveGroup at generation 0  a group's first generation is 0 (1 on  a new group's first join
(``_patch_leave_group``)    Kafka); aiokafka leaves a group only   says ``(generation 1)``
                            from generation 1 up, so a stopped
                            member held its partitions a session
==========================  =====================================  =========================

Not worked around, because no client setting helps: a fetch costs Tansu time in
proportion to the record batches in the partitions fetched. A producer sending about one
record per batch at 500/s, with one caught-up consumer, took the broker from 17% CPU to
98% within 20 s (10,000 batches) and the consumer's p99 to 201 ms. ``paystream bench``
measures this floor beside the pipeline (a raw passthrough at the offered rate).

The patches are process-wide (aiokafka and Faust classes), so :func:`apply` must be
called once, before any consumer or producer is created; it is idempotent.
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict
from typing import Any, ClassVar, Final

from aiokafka.consumer.fetcher import READ_COMMITTED, Fetcher, OffsetResetStrategy
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.errors import KafkaError
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.protocol.group import LeaveGroupRequest
from aiokafka.protocol.types import CompactString, Int16, Int32, Int64, Schema, TaggedFields
from aiokafka.structs import TopicPartition

from paystream.errors import ConfigurationError
from paystream.settings import Settings

__all__ = [
    "FAUST_FETCH_MAX_WAIT_MS",
    "FAUST_SESSION_TIMEOUT_S",
    "TANSU_FETCH_MAX_WAIT_MS",
    "TANSU_FETCH_MIN_BYTES",
    "active_patches",
    "apply",
    "corrected_end_offsets",
    "faust_overrides",
    "patches_active",
    "worker_fetch_max_wait_ms",
    "worker_fetch_min_bytes",
]

log = logging.getLogger(__name__)

#: Worker consumer fetch max wait on Tansu. Tansu re-checks a waiting Fetch about every
#: ``max_wait / 2`` instead of waking it on new data, so this bounds pipeline latency
#: (50 ms gave p50 55 ms vs 1.09 s with Faust's 1500 ms; 20 ms took `paystream bench`'s
#: p50 at 500 commands/s from 41 to 32 ms). Never 0: Tansu then returns no data at all.
#: Each idle poller costs the broker ~3% CPU at 50 ms, ~8% at 10 ms.
TANSU_FETCH_MAX_WAIT_MS: Final = 20

#: Worker consumer fetch min bytes on Tansu. With the default (1) a loaded worker fetches
#: as fast as the round trip allows, one or two commands a time; each fetch cost the
#: worker ~0.4 ms of CPU (its consumer thread was a quarter of its CPU at 500 commands/s).
#: Asking for 4 KiB makes Tansu hold the fetch until its next re-check (max_wait / 2)
#: unless that much is already there: CPU per command at 500/s fell by ~18%. Tansu only:
#: real Kafka wakes a waiting fetch on new data and Faust's 1.5 s wait would apply.
TANSU_FETCH_MIN_BYTES: Final = 4096

#: Max wait of the one-off Fetch that reads the true high watermark. The offset asked
#: for always exists, so the broker answers at once; this only caps a pathological wait.
_HIGHWATER_PROBE_WAIT_MS: Final = 10

#: What ``faust/transport/drivers/aiokafka.py`` hard-codes for worker consumers.
FAUST_FETCH_MAX_WAIT_MS: Final = 1500

#: Faust's default group session timeout (``broker_session_timeout``), where the broker
#: needs no shorter one. Faust refuses a request timeout below the session timeout.
FAUST_SESSION_TIMEOUT_S: Final = 60.0

_MARK: Final = "__paystream_broker_compat__"


def faust_overrides(settings: Settings) -> dict[str, Any]:
    """Faust ``App`` settings the broker needs; empty of Tansu items for real Kafka."""
    # Safe everywhere: Faust's internal topics default to 8 partitions and it raises
    # PartitionsMismatch unless they match the source topics.
    overrides: dict[str, Any] = {"topic_partitions": settings.partitions}
    if settings.embedded_broker:
        overrides.update(
            # A new group's join takes ~session_timeout/2 on Tansu: Faust's 60 s default
            # meant a 32 s first join and 92 s failover; 6 s gives ~5 s and ~9 s.
            # (Measured with aiokafka, h75a: Tansu answers a JoinGroup half the session,
            # rounded up to whole seconds, after the last join; a SIGKILL'd member's
            # partitions move after the session and that again. 4 s gave 2 s joins and
            # 5 s failovers, no flapping at load 6-10 on 2 cores; not taken: tests freeze
            # a worker for up to 5.5 s expecting its group not to notice.)
            broker_session_timeout=6.0,
            broker_rebalance_timeout=6.0,
            # Kafka wants heartbeats well inside the session (< session / 3).
            broker_heartbeat_interval=1.0,
            # Faust refuses a request timeout below the session timeout.
            broker_request_timeout=30.0,
        )
    if (timeout := settings.broker_request_timeout_seconds) is not None:
        # How long a connection gone silent holds the worker: aiokafka gives a request up
        # after it, and the connection with it.
        session = overrides.get("broker_session_timeout", FAUST_SESSION_TIMEOUT_S)
        if timeout < session:
            raise ConfigurationError(
                f"PAYSTREAM_BROKER_REQUEST_TIMEOUT_SECONDS={timeout:g} is below the consumer "
                f"group's session timeout ({session:g} s): Faust refuses it"
            )
        overrides["broker_request_timeout"] = timeout
    return overrides


def worker_fetch_max_wait_ms(settings: Settings) -> int:
    """The fetch max wait Faust worker consumers run with on this broker."""
    return TANSU_FETCH_MAX_WAIT_MS if settings.embedded_broker else FAUST_FETCH_MAX_WAIT_MS


def worker_fetch_min_bytes(settings: Settings) -> int:
    """The fetch min bytes Faust worker consumers run with on this broker."""
    return TANSU_FETCH_MIN_BYTES if settings.embedded_broker else 1


def apply(settings: Settings, *, worker_consumers: bool = True) -> list[str]:
    """Install the process-level Tansu patches when the broker is Tansu; else do nothing.

    Returns the names of the patches now active. Idempotent: a second call changes
    nothing. There is no "unapply": a process talks to one broker for its lifetime.

    ``worker_consumers=False``: all but the patch on Faust's worker consumers, for a
    process that makes none (the CLI's commands; a worker's app applies it when
    created), and returns nothing (reading that patch imports Faust): importing Faust
    for it was about half the CPU of each `paystream tenants ...` or `send`.
    """
    if settings.embedded_broker:
        if worker_consumers:
            _patch_fetch_wait()
        _patch_end_offsets()
        _patch_init_producer()
        _patch_leave_group()
    return active_patches() if worker_consumers else []


def _patch_targets() -> dict[str, Any]:
    from aiokafka.producer.sender import InitPIDHandler
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    return {
        "end_offsets": Fetcher._proc_offset_request,
        "fetch_wait": AIOKafkaConsumerThread._create_worker_consumer,
        "init_producer_id_v3": InitPIDHandler.create_request,
        "leave_group_at_generation_0": GroupCoordinator._maybe_leave_group,
    }


def active_patches() -> list[str]:
    """Names of the patches installed in this process, read from the patched classes."""
    return sorted(name for name, fn in _patch_targets().items() if getattr(fn, _MARK, False))


def patches_active() -> bool:
    """True when every Tansu patch is installed (doctor checks this for flavor=tansu)."""
    return len(active_patches()) == len(_patch_targets())


# --- (a) worker consumer fetch max wait ------------------------------------------------


def _patch_fetch_wait() -> None:
    """Lower Faust's hard-coded ``fetch_max_wait_ms=1500`` for worker consumers (and ask
    for ``TANSU_FETCH_MIN_BYTES`` so a loaded worker does not fetch in a tight loop).

    How: wrap ``AIOKafkaConsumerThread._create_worker_consumer`` and change the created
    (not yet started) consumer's ``_fetch_max_wait_ms`` and ``_fetch_min_bytes``, which
    ``AIOKafkaConsumer.start()`` hands to its Fetcher. Nothing else about the consumer
    changes, and no Faust source is copied. Drop: delete this function once Tansu wakes
    waiting fetches on new data.
    """
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    original = AIOKafkaConsumerThread._create_worker_consumer
    if getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    def _create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = TANSU_FETCH_MAX_WAIT_MS
        consumer._fetch_min_bytes = TANSU_FETCH_MIN_BYTES
        return consumer

    setattr(_create_worker_consumer, _MARK, True)
    AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer  # type: ignore[method-assign]


# --- (b) ListOffsets(LATEST) correction -------------------------------------------------

OffsetAnswer = tuple[int, int | None]
TopicData = dict[str, list[tuple[int, int]]]


async def corrected_end_offsets(
    fetcher: Fetcher,
    node_id: int,
    answers: dict[TopicPartition, OffsetAnswer],
) -> dict[TopicPartition, OffsetAnswer]:
    """Replace Tansu's LATEST answers with the high watermark of a one-record Fetch.

    Tansu answers ``base offset of the last batch + 1``, which is below the true end when
    that batch held several records, but it reports the high watermark in Fetch
    responses correctly. A Fetch at ``answer - 1`` (an offset that always exists, so the
    broker answers at once) with a 1-byte partition limit returns the true end. An
    answer of 0 means an empty partition and needs no correction.
    """
    probe: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    for tp, (offset, _ts) in answers.items():
        if offset > 0:
            probe[tp.topic].append((tp.partition, offset - 1, 1))
    if not probe:
        return answers
    request = FetchRequest(
        _HIGHWATER_PROBE_WAIT_MS,
        1,  # min_bytes: the record at answer-1 exists, so this returns immediately
        1,  # max_bytes: we only want the header; brokers still return one whole batch
        fetcher._isolation_level,
        list(probe.items()),
    )
    response = await fetcher._client.send(node_id, request)
    corrected = dict(answers)
    for topic, partitions in response.topics:
        for partition, error_code, highwater, *part_data in partitions:
            tp = TopicPartition(topic, partition)
            if error_code != 0 or tp not in corrected:
                # Keep the broker's own answer rather than invent one.
                continue
            end = highwater
            if fetcher._isolation_level == READ_COMMITTED and response.API_VERSION >= 4:
                end = part_data[0]  # last stable offset, what LATEST means for read_committed
            offset, ts = corrected[tp]
            if end > offset:
                corrected[tp] = (end, ts)
    return corrected


def _patch_end_offsets() -> None:
    """Correct ``ListOffsets(LATEST)`` answers inside aiokafka's Fetcher.

    How: wrap ``Fetcher._proc_offset_request``, the single place where both offset
    lookups (``end_offsets``, hence Faust ``highwaters`` and table recovery) and offset
    resets (``seek_to_end``, ``auto_offset_reset='latest'``) send ``ListOffsets``. LATEST
    answers are then corrected by :func:`corrected_end_offsets`; EARLIEST and
    timestamp lookups pass through untouched. Drop: delete this function once doctor's
    end-offset check passes without it.
    """
    original = Fetcher._proc_offset_request
    if getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    async def _proc_offset_request(
        self: Fetcher, node_id: int, topic_data: TopicData
    ) -> dict[TopicPartition, OffsetAnswer]:
        answers: dict[TopicPartition, OffsetAnswer] = await original(self, node_id, topic_data)
        latest = {
            TopicPartition(topic, partition)
            for topic, parts in topic_data.items()
            for partition, timestamp in parts
            if timestamp == OffsetResetStrategy.LATEST
        }
        if not latest:
            return answers
        fixed = await corrected_end_offsets(
            self, node_id, {tp: a for tp, a in answers.items() if tp in latest}
        )
        return {**answers, **fixed}

    setattr(_proc_offset_request, _MARK, True)
    Fetcher._proc_offset_request = _proc_offset_request


# --- (c) InitProducerId v3 --------------------------------------------------------------


class _InitProducerIdResponseV3(Response):
    API_KEY = 22
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("error_code", Int16),
        ("producer_id", Int64),
        ("producer_epoch", Int16),
        ("tags", TaggedFields),
    )


class _InitProducerIdRequestV3(RequestStruct):
    FLEXIBLE_VERSION = True
    API_KEY = 22
    API_VERSION = 3
    RESPONSE_TYPE = _InitProducerIdResponseV3
    SCHEMA = Schema(
        ("transactional_id", CompactString("utf-8")),
        ("transaction_timeout_ms", Int32),
        ("producer_id", Int64),
        ("producer_epoch", Int16),
        ("tags", TaggedFields),
    )


class InitProducerIdV3Request(Request[_InitProducerIdRequestV3]):
    """InitProducerId at version 3 only (the response fields aiokafka reads are the same)."""

    API_KEY: ClassVar[int] = 22

    def __init__(self, transactional_id: str | None, transaction_timeout_ms: int) -> None:
        self._transactional_id = transactional_id
        self._transaction_timeout_ms = transaction_timeout_ms

    def build(
        self, request_struct_class: type[_InitProducerIdRequestV3]
    ) -> _InitProducerIdRequestV3:
        # producer_id/epoch -1: a new producer, not an epoch bump of an existing one.
        return request_struct_class(
            self._transactional_id, self._transaction_timeout_ms, -1, -1, {}
        )


def _patch_init_producer() -> None:
    """Send InitProducerId v3 instead of v0 so ``enable_idempotence=True`` works on Tansu.

    How: wrap ``InitPIDHandler.create_request`` (aiokafka's sender) to build the v3
    request; ``handle_response`` reads the same three fields from the v3 response.
    Harmless on real Kafka (v3 exists since 2.5). Drop: delete this function once an
    idempotent producer starts on Tansu without it.
    """
    from aiokafka.producer.sender import InitPIDHandler

    original = InitPIDHandler.create_request
    if getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    def create_request(self: Any) -> InitProducerIdV3Request:
        txn_manager = self._sender._txn_manager
        return InitProducerIdV3Request(
            transactional_id=txn_manager.transactional_id,
            transaction_timeout_ms=txn_manager.transaction_timeout_ms,
        )

    setattr(create_request, _MARK, True)
    InitPIDHandler.create_request = create_request


# --- (d) LeaveGroup from generation 0 ---------------------------------------------------


def _patch_leave_group() -> None:
    """Leave the group on stop from Tansu's first generation too.

    Tansu numbers a group's generations from 0, Kafka from 1, and aiokafka sends
    LeaveGroup only ``if self.generation > 0``: a worker stopped cleanly (SIGTERM, a
    rolling restart, a scale-in) while its group was in its first generation left
    without a word, and the group handed its partitions on only once its session ran out
    (in a full test run: 45 stopped members of generation 0, none left; 32 of later
    generations, all did). How: wrap ``GroupCoordinator._maybe_leave_group``; at
    generation 0 send the same minimal-effort LeaveGroup first, then let aiokafka's own
    method reset the generation (it sends nothing at 0). Drop: delete this function once
    a new group's first join says ``(generation 1)``.
    """
    original = GroupCoordinator._maybe_leave_group
    if getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    async def _maybe_leave_group(self: Any) -> None:
        if self.generation == 0 and self._group_instance_id is None:
            try:
                await self._send_req(LeaveGroupRequest(self.group_id, self.member_id))
            except KafkaError as err:
                log.error("LeaveGroup request failed: %s", err)
            else:
                log.info("LeaveGroup request succeeded (generation 0)")
            # (As aiokafka's own, after its send: a join meanwhile is not left again.)
            self.reset_generation()
            return
        await original(self)

    setattr(_maybe_leave_group, _MARK, True)
    GroupCoordinator._maybe_leave_group = _maybe_leave_group
