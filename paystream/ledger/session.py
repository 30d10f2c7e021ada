"""Tenant-scoped database sessions: every query runs under row-level security for one tenant."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from paystream.ledger.errors import LedgerError, RlsNotEnforcedError
from paystream.tenancy.models import TENANT_ID_PATTERN

__all__ = ["TENANT_SETTING", "assert_rls_enforced", "create_engine", "tenant_session"]

TENANT_SETTING = "app.current_tenant_id"
_TENANT_ID = re.compile(TENANT_ID_PATTERN)


def create_engine(database_url: str, **kwargs: Any) -> AsyncEngine:
    """An asyncpg engine; ``pool_pre_ping`` so a restarted database costs one retry, not a crash."""
    kwargs.setdefault("pool_pre_ping", True)
    return create_async_engine(database_url, **kwargs)


@asynccontextmanager
async def tenant_session(
    engine: AsyncEngine, tenant_id: str, *, snapshot: bool = False
) -> AsyncIterator[AsyncSession]:
    """One transaction with ``app.current_tenant_id`` set; commits on success, else rolls back.

    ``set_config(..., true)`` is transaction-local, so the setting dies with the
    transaction and a pooled connection can never carry one tenant into the next.
    ``snapshot``: a read-only transaction whose every statement sees the same snapshot
    (REPEATABLE READ), for reads that must agree with each other.
    """
    if not isinstance(tenant_id, str) or not _TENANT_ID.fullmatch(tenant_id):
        raise LedgerError(f"invalid tenant id {tenant_id!r}")
    async with AsyncSession(engine, expire_on_commit=False) as session, session.begin():
        if snapshot:  # must be the transaction's first statement
            await session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
        await session.execute(
            text("SELECT set_config(:name, :tenant, true)"),
            {"name": TENANT_SETTING, "tenant": tenant_id},
        )
        yield session


async def assert_rls_enforced(engine: AsyncEngine) -> None:
    """Refuse to run as a role that row-level security would not restrict.

    Superusers and BYPASSRLS roles skip every policy, and so would a table owner were
    FORCE ever dropped: the application must connect as ``paystream_app``.
    """
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT r.rolname, r.rolsuper, r.rolbypassrls, "
                    "EXISTS (SELECT 1 FROM pg_tables t WHERE t.schemaname = 'public' "
                    "AND t.tablename = 'audit_log' AND t.tableowner = r.rolname) AS owner "
                    "FROM pg_roles r WHERE r.rolname = current_user"
                )
            )
        ).one()
    if row.rolsuper or row.rolbypassrls or row.owner:
        raise RlsNotEnforcedError(
            f"role {row.rolname!r} bypasses row-level security (superuser, BYPASSRLS or "
            "table owner); connect as paystream_app"
        )
