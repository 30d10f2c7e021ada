"""A ledger write that times out says so in its warning (review h78d, failure drill: a
SIGSTOPped PostgreSQL hung the write for asyncpg's command_timeout, a minute, and the
one line then logged was "failed (connection, attempt 1): TimeoutError: ; retrying")."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.ledger.sink import BatchResult, LedgerSink
from paystream.tenancy.crypto import MasterKeyring


async def test_a_timed_out_write_is_said_to_have_had_no_answer(
    app_engine: AsyncEngine, keyring: MasterKeyring, caplog: pytest.LogCaptureFixture
) -> None:
    sink = LedgerSink(app_engine, keyring, initial_backoff=0.01, max_backoff=0.01)
    calls = 0

    async def times_out_once() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise TimeoutError  # (as asyncpg's command_timeout raises it: no text)
        return "stored"

    with caplog.at_level(logging.WARNING, logger="paystream.ledger.sink"):
        assert await sink._retrying(times_out_once, "ledger write", BatchResult()) == "stored"
    failed = [r.getMessage() for r in caplog.records if "failed (connection" in r.getMessage()]
    assert len(failed) == 1, failed
    assert "TimeoutError: no answer in time" in failed[0], failed[0]
    assert ": ;" not in failed[0]
