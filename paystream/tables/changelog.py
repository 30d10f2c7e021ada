"""Changelog writes that the command agent publishes and awaits with its outcomes.

Faust sends a table's changelog records through its producer buffer and flushes that
buffer before committing offsets. The flush gives up after 100 ms without progress and
can return while the buffer's task holds a popped, not yet produced record, so an
offset could be committed before the table change it depends on is durable; after a
crash the command would not be redelivered and its change would be gone.

While a batch is being collected, writes to a ``BatchedChangelogTable`` are queued
here instead; the agent produces them (as record batches, with the outcomes) and awaits
their delivery before the batch is acknowledged. Only the last write of a key in a
batch is produced: nothing outside the worker can observe the earlier ones (they would be published
together), and table recovery keeps only the last value of a key anyway. That drops the
in-flight idempotency record of every command that finishes within its batch.

Writes outside a batch (recovery, other agents) keep Faust's path.
"""

from __future__ import annotations

import functools
import logging
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import faust
import orjson
from faust.serializers import codecs
from faust.serializers.registry import Registry
from faust.serializers.schemas import Schema
from faust.stores.memory import Store as MemoryStore
from faust.streams import _current_event
from faust.types import TP
from faust.types.codecs import CodecArg
from faust.utils import json as faust_json

from paystream.streams.batch_producer import OutRecord, SentBatch
from paystream.tables.records import shed_applied

__all__ = [
    "CHANGELOG_VALUE_MAX_BYTES",
    "BatchedChangelogTable",
    "ChangelogBatch",
    "at_partition",
    "collect_changelog",
]

log = logging.getLogger(__name__)

# Largest changelog value produced as is: well under Kafka's default 1 MB message size.
CHANGELOG_VALUE_MAX_BYTES = 512 * 1024


class ChangelogBatch:
    """The last pending write of each (table, key) in one batch, in first-write order."""

    def __init__(self, committed: Callable[[int], int] | None = None) -> None:
        # ``committed(partition)``: the commands topic's committed offset (for shedding).
        self._committed = committed
        # (table name, key) → (table, partition, value, value serializer)
        self._writes: dict[tuple[str, Any], tuple[BatchedChangelogTable, int, Any, Any]] = {}

    def add(
        self,
        table: BatchedChangelogTable,
        partition: int | None,
        key: Any,
        value: Any,
        value_serializer: CodecArg | None,
    ) -> None:
        if partition is None:  # Faust passes the current event's partition
            raise TypeError(f"changelog write to {table.name} outside of a command event")
        self._writes[(table.name, key)] = (table, partition, value, value_serializer)

    def records(self) -> list[OutRecord]:
        """The coalesced writes, serialised as the tables' changelog topics would."""
        out = []
        # table name → (changelog topic name, whether plain JSON: see _plain_json), once
        # per batch
        tables: dict[str, tuple[str, bool]] = {}
        for (name, key), (table, partition, value, value_serializer) in self._writes.items():
            found = tables.get(name)
            if found is None:
                found = tables[name] = (table.changelog_topic.get_topic_name(), _plain_json(table))
            topic_name, plain = found
            if plain and value_serializer is None and type(key) is str and type(value) is dict:
                # What Faust's path below comes to for these (see _plain_json), without
                # its three layers of dispatch per key and per value; no headers. Each
                # kept as an exact-size copy of orjson's bytes (the same bytes): orjson
                # returns its output in the buffer it grew (4 KB at the least, about
                # twice the output beyond that), and the records of a batch are kept
                # until it is produced, so each one kept so left the heap a hole no
                # later dump fitted in: a fresh page, a page fault, per record (half
                # the time of this loop, measured; the copy costs 0.1-0.5 µs).
                try:  # (see _json_dumps_str_keys)
                    value_bytes = memoryview(_json_dumps_str_keys(value)).tobytes()
                except TypeError:
                    value_bytes = memoryview(_json_dumps(value)).tobytes()
                if len(value_bytes) <= CHANGELOG_VALUE_MAX_BYTES:  # else shed, below
                    key_bytes = memoryview(_json_dumps_str_keys(key)).tobytes()
                    out.append(OutRecord(topic_name, partition, key_bytes, value_bytes, []))
                    continue
            out.append(self._prepared(table, topic_name, partition, key, value, value_serializer))
        return out

    def _prepared(
        self,
        table: BatchedChangelogTable,
        topic_name: str,
        partition: int,
        key: Any,
        value: Any,
        value_serializer: Any,
    ) -> OutRecord:
        """A write serialised by the changelog topic (Faust's path), shed to fit."""
        topic = table.changelog_topic
        key_bytes, headers = topic.prepare_key(key, table.key_serializer)
        value_bytes, headers = topic.prepare_value(
            value, value_serializer or table.value_serializer
        )
        while (  # None: a deletion's tombstone
            value_bytes is not None
            and len(value_bytes) > CHANGELOG_VALUE_MAX_BYTES
            and (smaller := shed_applied(value, self._committed))
        ):
            # The broker refuses records over its message size (1 MB by default),
            # failing the batch on every redelivery; the outcomes an entity keeps
            # for replays are what can grow (up to 16, each echoing a command).
            log.warning("%s: %s sheds replay memory to fit", table.name, key)
            value = smaller
            value_bytes, headers = topic.prepare_value(
                value, value_serializer or table.value_serializer
            )
        return OutRecord(topic_name, partition, key_bytes, value_bytes, _headers(headers))

    def persisted(self, sent: list[SentBatch]) -> None:
        """Tell the tables' stores (RocksDB) the last changelog offset now durable."""
        # Each table's topic name asked once, not once per write, and no list made per
        # write by a starred unpacking (together 0.2 µs a write): per table name, the
        # table of its last write, as the comprehension over every write had it. (A
        # table's changelog topic is named after the app and the table: one per name.)
        by_name = {key[0]: write[0] for key, write in self._writes.items()}
        tables = {t.changelog_topic.get_topic_name(): t for t in by_name.values()}
        for batch in sent:
            table = tables.get(batch.topic)
            if table is not None and batch.future.done() and not batch.future.exception():
                base = batch.future.result().offset
                table.data.set_persisted_offset(
                    TP(batch.topic, batch.partition), base + batch.count - 1
                )


def _plain_json(table: BatchedChangelogTable) -> bool:
    """Whether Faust serialises a str key and a dict value written to ``table`` (no
    serializer given) as ``_json_dumps`` of each, and adds no headers.

    It serialises them as ``codecs.dumps("json", ...)`` (which is ``_json_dumps``: see
    _json_codec_is_orjson) when its changelog topic, the topic's schema and the app's
    serializer registry are Faust's own classes (their prepare/dumps methods only resolve the
    serializer and hand the key or value to that call; the schema's header hooks return
    the headers as given, None) and the serializer each resolves to is "json": the
    first set of the table's, the schema's and the registry's (a str or dict is no
    Faust model, whose own serializer would come first)."""
    topic = table.changelog_topic
    schema = topic.schema
    registry = topic.app.serializers
    return (
        type(topic).prepare_key is faust.Topic.prepare_key
        and type(topic).prepare_value is faust.Topic.prepare_value
        and type(schema) is Schema
        and type(registry) is Registry
        and _first(table.key_serializer, schema.key_serializer, registry.key_serializer) == "json"
        and _first(table.value_serializer, schema.value_serializer, registry.value_serializer)
        == "json"
        and _json_codec_is_orjson()
    )


def _json_codec_is_orjson() -> bool:
    """Whether ``codecs.dumps("json", obj)`` is ``_json_dumps(obj)``: the "json" codec
    registered is Faust's own, alone (no chained codecs), and Faust's JSON module picked
    its orjson variant (orjson is installed), whose ``dumps`` is exactly that orjson call
    (the codec's ``want_bytes`` returns orjson's bytes as they are)."""
    codec = codecs.get_codec("json")
    return (
        faust_json.orjson is orjson
        and type(codec) is codecs.json
        and not codec.children
        and codecs._json is faust_json
    )


# faust.utils.json.dumps with orjson, as one C-level call (no Python frame per value).
_json_dumps: Callable[[Any], bytes] = functools.partial(
    orjson.dumps,
    default=faust_json.on_default,
    option=orjson.OPT_NON_STR_KEYS | orjson.OPT_UTC_Z,
)

# The same call without OPT_NON_STR_KEYS, which slows orjson's pass over every dict
# (a third of its time on entity records): where every dict key is exactly a str, as in
# the JSON dicts the tables hold, the option changes nothing in the output, and where
# one is not, orjson raises a TypeError (JSONEncodeError) instead, and the caller
# serialises with ``_json_dumps``. (``on_default`` is a pure function: calling it again
# for the same values there returns what it returned here.)
_json_dumps_str_keys: Callable[[Any], bytes] = functools.partial(
    orjson.dumps, default=faust_json.on_default, option=orjson.OPT_UTC_Z
)


def _first(*serializers: CodecArg | None) -> CodecArg | None:
    return next((s for s in serializers if s), None)


@dataclass(frozen=True)
class QueuedMessage:
    partition: int | None


@dataclass(frozen=True)
class QueuedWrite:
    """What Faust's ``on_key_set``/``on_key_del`` read back: ``.message.partition``."""

    message: QueuedMessage


def _headers(headers: Any) -> list[tuple[str, bytes]]:
    items = headers.items() if isinstance(headers, dict) else headers or ()
    return [(str(k), bytes(v)) for k, v in items]


_batch: ContextVar[ChangelogBatch | None] = ContextVar("changelog_batch", default=None)


class BatchedChangelogTable(faust.Table):
    def send_changelog(
        self,
        partition: int | None,
        key: Any,
        value: Any,
        key_serializer: CodecArg | None = None,
        value_serializer: CodecArg | None = None,
    ) -> Any:
        batch = _batch.get()
        if batch is None or key_serializer is not None:
            return super().send_changelog(partition, key, value, key_serializer, value_serializer)
        batch.add(self, partition, key, value, value_serializer)  # deletes pass "raw"
        return QueuedWrite(QueuedMessage(partition))

    # Reads and writes in memory, by the dict itself: Faust's path costs 3 µs a read
    # (Mapping.get → __getitem__ → __missing__, and a KeyError per miss) and 5 µs a write,
    # and a command makes about ten. The same calls in the same order: the sensors see
    # each get and set, a write queues its changelog record for the current event's
    # partition, then lands in the store. (Other stores, and writes outside a batch,
    # keep Faust's path; so do the TTL hooks, which only windowed tables use.)

    def get(self, key: Any, default: Any = None) -> Any:
        store = self.data
        if type(store) is not MemoryStore or self.default is not None:
            return super().get(key, default)
        self._sensor_on_get(self, key)
        return store.data.get(key, default)

    def __setitem__(self, key: Any, value: Any) -> None:
        batch = _batch.get()
        # (``_data``: the store the ``data`` property returns, once it has made it; None
        # before, and Faust's path makes it. A table with a window, expiring keys or
        # not, takes Faust's path too.)
        store = self._data
        if batch is None or type(store) is not MemoryStore or self.window is not None:
            super().__setitem__(key, value)
            return
        partition = self.partition_for_key(key)
        if partition is None:
            batch.add(self, partition, key, value, None)  # (which refuses it)
            return
        # ChangelogBatch.add and _track, inlined: their calls were a third of this write.
        batch._writes[(self.name, key)] = (self, partition, value, None)
        self._sensor_on_set(self, key, value)
        store.data[key] = value
        store._key_partition[key] = partition

    # Faust's memory store learns a key's partition only from the changelog (recovery):
    # keys written here were never dropped when their partition moved to another worker,
    # and the views went on showing (and summing) tenants another worker now serves.
    # With each written key's partition known, recovery after a rebalance drops those
    # of partitions no longer this worker's (``MemoryStore.on_recovery_completed``).

    def on_key_set(self, key: Any, value: Any) -> None:
        super().on_key_set(key, value)
        if type(self.data) is MemoryStore:
            _track(self.data, key, self.partition_for_key(key))

    def on_key_del(self, key: Any) -> None:
        super().on_key_del(key)
        if type(self.data) is MemoryStore:
            self.data._key_partition.pop(key, None)  # (deleted keys must not pile up)


def _track(store: MemoryStore, key: Any, partition: int | None) -> None:
    if partition is not None:  # (None: a table partitioned by key, which Faust tracks)
        store._key_partition[key] = partition


@dataclass(frozen=True)
class _SourceMessage:
    topic: str
    partition: int


@dataclass(frozen=True)
class _SourceEvent:
    message: _SourceMessage


@contextmanager
def at_partition(topic: str, partition: int) -> Iterator[None]:
    """Table writes in this block go to changelog ``partition``, as for an event of
    ``topic``'s ``partition``: for an agent that knows where a key lives but is not
    iterating a Faust stream (a timer, or its own batches). Faust reads the current event."""
    stub = _SourceEvent(_SourceMessage(topic, partition))
    token = _current_event.set(weakref.ref(stub))  # type: ignore[arg-type]
    try:
        yield
    finally:
        _current_event.reset(token)


@contextmanager
def collect_changelog(committed: Callable[[int], int] | None = None) -> Iterator[ChangelogBatch]:
    """Queue changelog writes made in this context (and the tasks it starts)."""
    batch = ChangelogBatch(committed)
    token = _batch.set(batch)
    try:
        yield batch
    finally:
        _batch.reset(token)
