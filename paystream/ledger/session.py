"""Tenant-scoped database sessions: every query runs under row-level security for one tenant."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from paystream.ledger.errors import LedgerError, RlsNotEnforcedError
from paystream.ledger.models import TENANT_TABLES
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
    """Refuse to run as a role that row-level security would not restrict, or on tables
    where it is not in force.

    Superusers and BYPASSRLS roles skip every policy; a table's owner, and any member of
    the owning role (PostgreSQL lets members act as owners: a common layout on managed
    PostgreSQL), can switch it off (``NO FORCE ROW LEVEL SECURITY``) or disable the
    audit log's triggers. Every ledger table must have RLS enabled and forced with its
    ``tenant_isolation`` policy: one left off after maintenance would show every tenant's
    rows to every tenant's session. The application must connect as ``paystream_app``.
    """
    async with engine.connect() as conn:
        role = (
            await conn.execute(
                text(
                    "SELECT rolname, rolsuper, rolbypassrls FROM pg_roles "
                    "WHERE rolname = current_user"
                )
            )
        ).one()
        tables = (
            await conn.execute(
                text(
                    "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity, "
                    "pg_has_role(current_user, c.relowner, 'MEMBER') AS owns, "
                    "EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid "
                    "AND p.polname = 'tenant_isolation') AS isolated "
                    "FROM pg_class c WHERE c.relnamespace = current_schema()::regnamespace "
                    "AND c.relkind = 'r' AND c.relname = ANY(:tables)"
                ),
                {"tables": list(TENANT_TABLES)},
            )
        ).all()
    if role.rolsuper or role.rolbypassrls:
        raise RlsNotEnforcedError(
            f"role {role.rolname!r} bypasses row-level security (superuser or BYPASSRLS); "
            "connect as paystream_app"
        )
    if owned := sorted(t.relname for t in tables if t.owns):
        raise RlsNotEnforcedError(
            f"role {role.rolname!r} owns (or is a member of the role owning) "
            f"{', '.join(owned)} and could switch row-level security off; connect as "
            "paystream_app"
        )
    found = {t.relname: t for t in tables}
    if unenforced := sorted(
        name
        for name in TENANT_TABLES
        if name not in found
        or not (
            found[name].relrowsecurity and found[name].relforcerowsecurity and found[name].isolated
        )
    ):
        raise RlsNotEnforcedError(
            "row-level security is not in force on "
            + ", ".join(unenforced)
            + " (enabled, forced, with its tenant_isolation policy); run `paystream migrate` "
            "or restore it"
        )
