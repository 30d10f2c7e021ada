"""`paystream bench` on a server that already runs a ledger leaves its role alone.

``paystream_app`` is the whole server's role, not one database's: the bench's ledger
phase migrated its own database with a random password for it, which locked the running
ledger's workers out at their next connection (review finding)."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from paystream.bench.ledger import LedgerPhaseSkipped, _app_password
from paystream.ledger import create_engine
from paystream.ledger.migrate import create_database, upgrade
from paystream.ledger.sink import asyncpg_url
from paystream.settings import load_settings
from tests.ledger.factories import LedgerDb

pytestmark = pytest.mark.asyncio


async def _logs_in(url: str) -> bool:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False
    finally:
        await engine.dispose()


async def test_the_bench_keeps_the_running_ledgers_app_password(
    ledger_db: LedgerDb, ledger_database_url: str
) -> None:
    assert await _logs_in(ledger_db.app_url)
    bench_url = await create_database(asyncpg_url(ledger_database_url), "bench_ledger")
    with pytest.raises(LedgerPhaseSkipped, match="PAYSTREAM_DB_APP_PASSWORD"):
        await _app_password(bench_url, load_settings(db_app_password=None))
    # Told the role's password, the bench sets that same one: nothing changes for the ledger.
    running = make_url(ledger_db.app_url).password
    assert running is not None
    password = await _app_password(bench_url, load_settings(db_app_password=running))
    await upgrade(bench_url, app_password=password)
    assert await _logs_in(ledger_db.app_url)
