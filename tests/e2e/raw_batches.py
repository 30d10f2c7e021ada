"""Hand-written Kafka v2 record batches, sent as they are (a producer may send any bytes):
compressed with codecs this environment lacks, corrupt, or out of range."""

from __future__ import annotations

import contextlib
import gzip
import struct
from collections.abc import AsyncIterator, Sequence
from typing import Any

from aiokafka.client import AIOKafkaClient
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record.util import calc_crc32c
from aiokafka.structs import TopicPartition

from paystream.streams.admin import bootstrap_servers
from paystream.tenancy.models import Tenant

NONE, GZIP, SNAPPY, LZ4, ZSTD = 0, 1, 2, 3, 4


def varint(n: int) -> bytes:
    z = (n << 1) ^ (n >> 63)  # zigzag
    z &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = z & 0x7F
        z >>= 7
        if z:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


Header = tuple[bytes, bytes | None]


def record(
    offset_delta: int,
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[Header] = (),
    ts_delta: int = 0,
    *,
    key_len: int | None = None,
    header_count: int | None = None,
) -> bytes:
    body = bytearray(b"\x00")
    body += varint(ts_delta) + varint(offset_delta)
    if key is None:
        body += varint(-1 if key_len is None else key_len)
    else:
        body += varint(len(key) if key_len is None else key_len) + key
    body += varint(-1) if value is None else varint(len(value)) + value
    body += varint(len(headers) if header_count is None else header_count)
    for name, hv in headers:
        body += varint(len(name)) + name
        body += varint(-1) if hv is None else varint(len(hv)) + hv
    return varint(len(body)) + bytes(body)


def snappy_raw(data: bytes) -> bytes:
    """Raw snappy, literals only (what any snappy decoder reads)."""
    out = bytearray(varint_u(len(data)))
    for i in range(0, len(data), 60):
        chunk = data[i : i + 60]
        out.append((len(chunk) - 1) << 2)
        out += chunk
    return bytes(out)


def varint_u(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def zstd_raw(data: bytes) -> bytes:
    """A zstd frame of one raw block (content size given, no checksum)."""
    assert len(data) < (1 << 16) + 256
    if len(data) < 256:
        head = b"\x28\xb5\x2f\xfd" + bytes([0x20, len(data)])
    else:
        head = b"\x28\xb5\x2f\xfd" + bytes([0x60]) + struct.pack("<H", len(data) - 256)
    block = (len(data) << 3) | 1
    return head + block.to_bytes(3, "little") + data


def _xxh32_short(data: bytes, seed: int = 0) -> int:
    """xxHash32 of fewer than 16 bytes (an LZ4 frame descriptor's checksum)."""
    p1, p2, p3, p4, p5 = 2654435761, 2246822519, 3266489917, 668265263, 374761393
    m = 0xFFFFFFFF

    def rotl(x: int, r: int) -> int:
        return ((x << r) | (x >> (32 - r))) & m

    assert len(data) < 16
    acc = (seed + p5 + len(data)) & m
    i = 0
    while i + 4 <= len(data):
        acc = (rotl((acc + int.from_bytes(data[i : i + 4], "little") * p3) & m, 17) * p4) & m
        i += 4
    for b in data[i:]:
        acc = (rotl((acc + b * p5) & m, 11) * p1) & m
    acc ^= acc >> 15
    acc = (acc * p2) & m
    acc ^= acc >> 13
    acc = (acc * p3) & m
    acc ^= acc >> 16
    return acc


def lz4_frame(data: bytes) -> bytes:
    """An LZ4 frame of one uncompressed block (what any LZ4 frame decoder reads)."""
    descriptor = bytes([0x60, 0x70])  # version 01, independent blocks; 4 MB blocks
    header = b"\x04\x22\x4d\x18" + descriptor + bytes([(_xxh32_short(descriptor) >> 8) & 0xFF])
    return header + struct.pack("<I", len(data) | 0x80000000) + data + b"\x00\x00\x00\x00"


def compress(codec: int, data: bytes) -> bytes:
    if codec == NONE:
        return data
    if codec == GZIP:
        return gzip.compress(data)
    if codec == SNAPPY:
        return snappy_raw(data)
    if codec == ZSTD:
        return zstd_raw(data)
    if codec == LZ4:
        return lz4_frame(data)
    raise ValueError(codec)


def batch(
    records: Sequence[bytes],
    *,
    codec: int = NONE,
    payload: bytes | None = None,
    first_ts: int = 1_700_000_000_000,
    max_ts: int | None = None,
    count: int | None = None,
    last_offset_delta: int | None = None,
    attributes: int | None = None,
    bad_crc: bool = False,
) -> bytes:
    data = b"".join(records)
    body = compress(codec, data) if payload is None else payload
    attrs = codec if attributes is None else attributes
    n = len(records) if count is None else count
    after_crc = (
        struct.pack(
            ">hiqqqhii",
            attrs,
            (len(records) - 1) if last_offset_delta is None else last_offset_delta,
            first_ts,
            first_ts if max_ts is None else max_ts,
            -1,
            -1,
            -1,
            n,
        )
        + body
    )
    crc = calc_crc32c(after_crc)
    if bad_crc:
        crc ^= 0xDEADBEEF
    head = struct.pack(">qiibI", 0, 4 + 1 + 4 + len(after_crc), 0, 2, crc)
    return head + after_crc


async def produce(bootstrap: str, topic: str, partition: int, data: bytes) -> int:
    """Send ``data`` as partition's record set; the broker's error code (0: stored)."""
    code, _offset = await produce_at(bootstrap, topic, partition, data)
    return code


async def produce_at(bootstrap: str, topic: str, partition: int, data: bytes) -> tuple[int, int]:
    """``produce``, and the offset the broker stored the record set at: (error code,
    base offset)."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        await client._wait_on_metadata(topic)
        node = client.cluster.leader_for_partition(TopicPartition(topic, partition))
        req = ProduceRequest(None, -1, 30000, [(topic, [(partition, data)])])
        resp = await client.send(node, req)
        [(_t, parts)] = resp.topics
        return int(parts[0][1]), int(parts[0][2])
    finally:
        await client.close()


def partition_of(settings: Any, tenant: str) -> int:
    """The commands partition ``tenant``'s key lands on (the default partitioner's)."""
    n = settings.partitions
    return int(DefaultPartitioner()(tenant.encode(), list(range(n)), list(range(n))))


@contextlib.asynccontextmanager
async def worker_for(dep: Any, tenant: str) -> AsyncIterator[tuple[Any, str, int]]:
    """A worker of ``dep`` ready for ``tenant`` (registered here): (the worker, the
    brokers' bootstrap servers, the tenant's commands partition), for a test to write a
    record there and then see the next command on it answered (``next_answered``)."""
    settings = dep.settings
    await dep.add_tenants(Tenant(tenant_id=tenant))
    with dep.worker() as worker:
        worker.wait_ready([tenant], partitions=settings.partitions)
        yield worker, bootstrap_servers(settings.require_broker()), partition_of(settings, tenant)


async def next_answered(dep: Any, tenant: str, timeout: float) -> None:
    """A command behind what the test wrote, on the same partition, is answered."""
    async with dep.client() as client:
        after = await client.command("customer.create", tenant, {}, timeout=timeout)
    assert after.get_type() == "com.paystream.customer.created"
