"""A refused record near the producer's size limit could not be parked (its dead letter
was its bytes plus our headers), so the batch failed on every attempt and its partition,
every tenant on it, stalled behind one record (review h68l). As the command dead-letter
topic does, bytes over 768 KiB are dropped with `paystream-dlq-dropped: too_large_to_keep`."""

from __future__ import annotations

import asyncio
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.app import app as real_app
from paystream.ledger.sink import LedgerSink
from paystream.tenancy.crypto import MasterKeyring

# Faust's producer_max_request_size default (paystream does not change it): aiokafka
# refuses, before sending, any record whose estimated size is above it.
LIMIT = real_app.conf.producer_max_request_size


class _Msg:
    def __init__(self, key: bytes | None, value: bytes, offset: int) -> None:
        self.key, self.value, self.headers = key, value, []
        self.timestamp, self.topic, self.partition, self.offset = 1.7e9, "ev", 0, offset
        self.generation_id = 7


class _Event:
    def __init__(self, message: _Msg) -> None:
        self.message = message


async def test_a_refused_record_near_the_size_limit_is_parked_not_retried_for_ever(
    app_engine: AsyncEngine, keyring: MasterKeyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    from paystream.agents import ledger_sink as agent

    sent: list[Any] = []

    class _Producer:  # aiokafka's own size check, as AIOKafkaProducer._serialize makes it
        async def send(
            self, topic: str, key: Any, value: Any, p: Any, ts: Any, headers: Any
        ) -> Any:
            size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
            if size > LIMIT:
                raise MessageSizeTooLargeError(f"The message is {size} bytes")
            sent.append((topic, key, value, headers))
            done = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done

    class _Topic:
        async def maybe_declare(self) -> None:
            return None

    monkeypatch.setattr(
        agent, "app", SimpleNamespace(producer=_Producer(), topic=lambda *a, **k: _Topic())
    )
    tenant = f"t{uuid.uuid4().hex[:8]}"
    key = tenant.encode()
    # A record the events topic took (under the same producer limit): not a CloudEvent.
    value = b"x" * (LIMIT - 200)
    assert DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, []) <= LIMIT
    runner = agent.LedgerSinkRunner(agent.settings)
    runner._sink = LedgerSink(app_engine, keyring)
    # Raises MessageSizeTooLargeError on every attempt: the agent retries the batch for ever.
    await runner.run_batch([_Event(_Msg(key, value, 3))])  # type: ignore[list-item]
    assert len(sent) == 1
