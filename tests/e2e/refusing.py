"""A Kafka-protocol proxy that can make the broker refuse writes to one topic.

The embedded broker never refuses a produce (it has no replicas to fall out of sync,
and it even accepts produces to a deleted topic), so what a cluster does when a
partition has too few in-sync replicas is played here: while :meth:`refuse` is on,
every Produce request naming the topic is answered by the proxy itself, each of its
partitions with the given error code (NOT_ENOUGH_REPLICAS by default), and is never
forwarded, so nothing of it is written. Everything else passes through unchanged.

Kafka clients match responses to requests by order on a connection, so a refusal made
up here waits until the broker has answered every request sent before it. Frames are
read with aiokafka's own protocol classes (Produce v0-v8, the non-flexible versions it
speaks). Runs on a thread of its own (tests/e2e/threaded_proxy.py).
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from io import BytesIO
from typing import Any

from aiokafka.protocol import produce

from tests.e2e.threaded_proxy import ThreadedProxy

__all__ = ["NOT_ENOUGH_REPLICAS", "RefusingProxy"]

NOT_ENOUGH_REPLICAS = 19
_PRODUCE = 0
_REQUESTS: dict[int, Any] = {
    v: getattr(produce, f"ProduceRequest_v{v}")
    for v in range(9)
    if hasattr(produce, f"ProduceRequest_v{v}")
}


class RefusingProxy(ThreadedProxy):
    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        super().__init__(target_port, host)
        self._refused_topic: str | None = None
        self._error_code = NOT_ENOUGH_REPLICAS
        self.refusals = 0  # Produce requests answered with a refusal

    def refuse(self, topic: str | None, error_code: int = NOT_ENOUGH_REPLICAS) -> None:
        """Refuse produces naming ``topic`` from now on (None: refuse nothing)."""
        self._error_code = error_code
        self._refused_topic = topic  # (an assignment: atomic for the proxy's thread)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = await self._upstream(writer)
        if upstream is None:
            return
        up_reader, up_writer = upstream
        # Requests awaiting their response, in order: None for one the broker answers,
        # the response frame for one refused here.
        pending: deque[bytes | None] = deque()

        def flush_refusals() -> None:
            while pending and pending[0] is not None:
                writer.write(pending.popleft() or b"")

        async def requests() -> None:
            while frame := await _read_frame(reader):
                refusal = self._refusal(frame)
                if refusal is not None:
                    pending.append(refusal)
                    flush_refusals()
                    continue
                if _expects_response(frame):
                    pending.append(None)
                up_writer.write(frame)
                await up_writer.drain()
            up_writer.close()

        async def responses() -> None:
            while frame := await _read_frame(up_reader):
                if pending:
                    pending.popleft()
                writer.write(frame)
                flush_refusals()
                await writer.drain()
            writer.close()

        try:
            await asyncio.gather(requests(), responses())
        except (OSError, asyncio.CancelledError, asyncio.IncompleteReadError):
            pass
        finally:
            up_writer.close()
            writer.close()

    def _refusal(self, frame: bytes) -> bytes | None:
        """The response frame refusing this request, if it is a produce to refuse."""
        topic = self._refused_topic
        api_key, version, correlation_id = struct.unpack_from(">hhi", frame, 4)
        if topic is None or api_key != _PRODUCE or version not in _REQUESTS:
            return None
        body = BytesIO(frame[12:])
        (client_id_length,) = struct.unpack(">h", body.read(2))
        body.read(max(client_id_length, 0))
        request = _REQUESTS[version].decode(body)
        topics = [(name, [p for p, _records in parts]) for name, parts in request.topics]
        if topic not in {name for name, _ in topics} or request.required_acks == 0:
            return None
        self.refusals += 1
        response = (
            _REQUESTS[version]
            .RESPONSE_TYPE(
                topics=[
                    (name, [_partition(version, p, self._error_code) for p in parts])
                    for name, parts in topics
                ],
                **({"throttle_time_ms": 0} if version >= 1 else {}),
            )
            .encode()
        )
        payload = struct.pack(">i", correlation_id) + response
        return struct.pack(">i", len(payload)) + payload


def _partition(version: int, partition: int, error_code: int) -> tuple[Any, ...]:
    """A partition's entry in a ProduceResponse of this version (offset -1: nothing)."""
    fields: tuple[Any, ...] = (partition, error_code, -1)
    if version >= 2:
        fields += (-1,)  # timestamp
    if version >= 5:
        fields += (-1,)  # log start offset
    if version >= 8:
        fields += ([], "refused by the test's proxy")  # record errors, error message
    return fields


def _expects_response(frame: bytes) -> bool:
    """Every request gets a response but a produce with acks=0."""
    api_key, version = struct.unpack_from(">hh", frame, 4)
    if api_key != _PRODUCE or version not in _REQUESTS:
        return True
    body = BytesIO(frame[12:])
    (client_id_length,) = struct.unpack(">h", body.read(2))
    body.read(max(client_id_length, 0))
    return bool(_REQUESTS[version].decode(body).required_acks != 0)


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    """One size-prefixed Kafka frame, size included; b"" at the end of the stream."""
    try:
        head = await reader.readexactly(4)
    except asyncio.IncompleteReadError:
        return b""
    (size,) = struct.unpack(">i", head)
    return head + await reader.readexactly(size)
