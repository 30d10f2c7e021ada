"""The audit chain's trigger lookups are planned for each call (migration 0010). On a
ledger without statistics PL/pgSQL kept a generic plan that read the tenant's rows up to
the one looked for, for each audit row inserted (the primary key and another index
leading with ``tenant_id`` cost alike there): one batch's 35,500 audit rows of one tenant
took 53 s."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from paystream.ledger.audit import AuditEntry, append_audit
from paystream.ledger.models import Tenant
from paystream.ledger.session import tenant_session
from paystream.tenancy.crypto import MasterKeyring
from tests.ledger.factories import LedgerDb

# A lookup of audit_log rows, in a function's body.
_READS_AUDIT_LOG = re.compile(r"\bFROM\s+audit_log\b", re.IGNORECASE)


def _entries(n: int) -> list[AuditEntry]:
    now = datetime.now(UTC)
    return [
        AuditEntry("sink", "payment.succeeded", "payment", f"pay_{i}", None, {"v": i}, now)
        for i in range(n)
    ]


async def _rows_read(session: AsyncSession, table: str) -> int:
    """Rows of ``table`` read so far in this transaction, by any scan (its own counter)."""
    rows = await session.execute(
        text(
            "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) "
            "FROM pg_stat_xact_user_tables WHERE relname = :t"
        ),
        {"t": table},
    )
    return int(rows.scalar_one())


async def test_a_large_append_checks_each_link_by_key(
    ledger_db: LedgerDb, app_engine: AsyncEngine, keyring: MasterKeyring
) -> None:
    """On a ledger never analyzed, 3,000 rows appended (the planner's guess for a table
    that small reads the tenant's rows), then 2,000 more: one row read per link checked,
    and one for the head (3,846,990 rows read before 0010)."""
    tenant = f"t{uuid.uuid4().hex[:8]}"
    async with tenant_session(app_engine, tenant) as session:
        await session.execute(pg_insert(Tenant).values(tenant_id=tenant))
        await append_audit(session, tenant, _entries(3000), keyring=keyring)
        before = await _rows_read(session, "audit_log")
        assert before > 0  # the server counts reads (track_counts): 0 would prove nothing
        await append_audit(session, tenant, _entries(2000), keyring=keyring)
        assert await _rows_read(session, "audit_log") - before <= 2 * 2000


async def test_every_trigger_function_that_reads_the_audit_log_plans_each_call(
    owner_engine: AsyncEngine,
) -> None:
    """A later trigger function looking audit rows up gets the same setting."""
    async with owner_engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT p.proname, p.prosrc, p.proconfig FROM pg_proc p "
                "JOIN pg_language l ON l.oid = p.prolang "
                "WHERE p.pronamespace = 'public'::regnamespace AND l.lanname = 'plpgsql' "
                "AND p.prorettype = 'trigger'::regtype"
            )
        )
        functions = rows.all()
    reading = {r.proname: r.proconfig or [] for r in functions if _READS_AUDIT_LOG.search(r.prosrc)}
    assert set(reading) >= {"audit_log_linked", "audit_heads_name_a_row"}
    assert {name for name, config in reading.items()
            if "plan_cache_mode=force_custom_plan" not in config} == set()  # fmt: skip
