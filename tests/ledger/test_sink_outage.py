"""Database outage: the sink stalls and retries while PostgreSQL is down, and loses nothing.

A dedicated embedded PostgreSQL (never the shared session server: stopping that would
break every other module) is stopped with ``pg_ctl stop -m fast`` from inside the
sink's own transaction, right after a batch's event rows were inserted and before its
entity rows are, so the outage deterministically lands mid-batch. While it is down the
writer must neither raise nor advance; after ``pg_ctl start`` every event must be in
the ledger exactly once, with each entity at its latest version and intact audit chains.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import event as sa_event
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from paystream.ledger import LedgerEvent, create_engine, verify_audit
from paystream.ledger.migrate import app_database_url, upgrade
from paystream.ledger.models import Event, Payment
from paystream.ledger.session import tenant_session
from paystream.ledger.sink import LedgerSink, outcome_to_ledger_events
from paystream.tenancy.crypto import MasterKeyring
from tests.fixtures.postgres import _bin, _start_embedded, fresh_database
from tests.ledger.test_sink import payment_outcome

TENANTS = ("acme", "globex", "initech")
PAYMENTS_PER_TENANT = 12
VERSIONS = 4
BATCH = 16


@dataclass
class StoppablePostgres:
    """An embedded server this module may stop and start at will."""

    url: str
    pgdata: Path
    user: str | None

    def _pg_ctl(self, *args: str) -> None:
        subprocess.run(
            [_bin("pg_ctl"), "-D", str(self.pgdata), "-w", *args],
            check=True,
            capture_output=True,
            user=self.user,
            timeout=60,
        )

    def stop(self) -> None:
        self._pg_ctl("-m", "fast", "stop")

    def start(self) -> None:
        # Same options _start_embedded used, so the URL (port) stays valid.
        root, port = self.pgdata.parent, make_url(self.url).port
        self._pg_ctl(
            "-l",
            str(root / "log"),
            "-o",
            f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off -c max_connections=100",
            "start",
        )


@pytest.fixture(scope="module")
def stoppable_postgres() -> Iterator[StoppablePostgres]:
    root = Path(tempfile.mkdtemp(prefix="paystream-pg-outage-"))
    url, pgdata, user = _start_embedded(root)
    server = StoppablePostgres(url, pgdata, user)
    try:
        yield server
    finally:
        subprocess.run(
            [_bin("pg_ctl"), "-D", str(pgdata), "-m", "immediate", "-w", "stop"],
            check=False,
            capture_output=True,
            user=user,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest_asyncio.fixture(scope="module")
async def outage_app_url(stoppable_postgres: StoppablePostgres) -> AsyncIterator[str]:
    owner_url = await fresh_database(stoppable_postgres.url, prefix="outage")
    password = secrets.token_urlsafe(12)
    await upgrade(owner_url, app_password=password)
    yield app_database_url(owner_url, password)


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


def the_stream() -> tuple[list[list[LedgerEvent]], dict[str, set[str]]]:
    """Batches of payment outcomes (v1..v4 per payment, interleaved across tenants) with
    redeliveries of earlier batches mixed in; plus the distinct event ids per tenant."""
    outcomes = [
        payment_outcome(t, f"pay_{p}", v, status="succeeded" if v == VERSIONS else "processing")
        for v in range(1, VERSIONS + 1)
        for p in range(PAYMENTS_PER_TENANT)
        for t in TENANTS
    ]
    events = [e for o in outcomes for e in outcome_to_ledger_events(o)]
    batches = [events[i : i + BATCH] for i in range(0, len(events), BATCH)]
    # At-least-once delivery: every third batch is followed by a replay of its predecessor.
    stream: list[list[LedgerEvent]] = []
    for i, batch in enumerate(batches):
        stream.append(batch)
        if i % 3 == 2:
            stream.append(batches[i - 1])
    expected: dict[str, set[str]] = {t: set() for t in TENANTS}
    for e in events:
        expected[e.tenant_id].add(e.event_id)
    return stream, expected


async def test_sink_stalls_through_a_database_outage_and_loses_nothing(
    stoppable_postgres: StoppablePostgres, outage_app_url: str, keyring: MasterKeyring
) -> None:
    engine = create_engine(
        outage_app_url, hide_parameters=True, connect_args={"timeout": 5, "command_timeout": 20}
    )
    sink = LedgerSink(engine, keyring, initial_backoff=0.05, max_backoff=0.4)
    stream, expected = the_stream()
    stop_in_batch = 6
    done: list[int] = []  # indexes of batches write_batch returned for, in order
    state: dict[str, Any] = {"arm": False, "stopped": False}

    def stop_mid_batch(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        # Runs inside the sink's transaction: the batch's event rows are already sent,
        # its entity upserts are next. Blocking the loop here is what makes it exact.
        if state["arm"] and statement.lstrip().upper().startswith("INSERT INTO PAYMENTS"):
            state["arm"] = False
            stoppable_postgres.stop()
            state["stopped"] = True

    sa_event.listen(engine.sync_engine, "before_cursor_execute", stop_mid_batch)

    async def writer() -> None:
        for i, batch in enumerate(stream):
            if i == stop_in_batch:
                state["arm"] = True
            result = await sink.write_batch(batch)
            assert result.dead_letters == []
            done.append(i)

    task = asyncio.create_task(writer())
    try:
        await until(lambda: state["stopped"], 20, "PostgreSQL to be stopped mid-batch")
        # Down: the writer retries with backoff, never raises, never moves on.
        failed_before = sink.failed_attempts
        await until(lambda: sink.failed_attempts >= failed_before + 3, 10, "three retries")
        assert not task.done(), "the writer must block, not fail, while the database is down"
        assert sink.stalled
        assert done == list(range(stop_in_batch)), "nothing may be acked past the outage"

        await asyncio.to_thread(stoppable_postgres.start)
        await asyncio.wait_for(task, timeout=20)
    finally:
        if not task.done():
            task.cancel()
        sa_event.remove(engine.sync_engine, "before_cursor_execute", stop_mid_batch)
    assert done == list(range(len(stream)))
    assert not sink.stalled

    try:
        for tenant in TENANTS:
            async with tenant_session(engine, tenant) as session:
                ids = (await session.scalars(select(Event.event_id))).all()
                versions = dict(
                    (await session.execute(select(Payment.payment_id, Payment.version))).all()
                )
                statuses = set((await session.scalars(select(Payment.status))).all())
            assert len(ids) == len(set(ids)) == len(expected[tenant])  # each exactly once
            assert set(ids) == expected[tenant]  # and nothing lost
            assert versions == {f"pay_{p}": VERSIONS for p in range(PAYMENTS_PER_TENANT)}
            assert statuses == {"succeeded"}
            audit = await verify_audit(engine, tenant, keyring)
            assert audit.ok, audit.problems
        async with tenant_session(engine, TENANTS[0]) as session:
            assert await session.scalar(select(func.count()).select_from(Event)) == len(
                expected[TENANTS[0]]
            )
    finally:
        await engine.dispose()
