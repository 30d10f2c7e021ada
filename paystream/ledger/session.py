"""Tenant-scoped database sessions: every query runs under row-level security for one tenant."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import URL, make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from paystream.ledger.errors import LedgerError, RlsNotEnforcedError
from paystream.ledger.models import TENANT_TABLES
from paystream.tenancy.models import TENANT_ID_PATTERN

__all__ = [
    "LIBPQ_TLS_PARAMS",
    "TENANT_SETTING",
    "assert_rls_enforced",
    "create_engine",
    "tenant_session",
    "tls_dsn",
]

TENANT_SETTING = "app.current_tenant_id"
_TENANT_ID = re.compile(TENANT_ID_PATTERN)


# libpq's TLS parameters, the form managed PostgreSQL services hand out
# (``?sslmode=verify-full&sslrootcert=/path/ca.pem``). SQLAlchemy passes a URL's query to
# asyncpg.connect() as keyword arguments, which has none of these (a TypeError on every
# connect); asyncpg reads them, as libpq does, only from a DSN.
LIBPQ_TLS_PARAMS = frozenset(
    {"sslmode", "sslrootcert", "sslcert", "sslkey", "sslcrl", "sslpassword"}
    | {"ssl_min_protocol_version", "ssl_max_protocol_version"}
)


def create_engine(database_url: str | URL, **kwargs: Any) -> AsyncEngine:
    """An asyncpg engine; ``pool_pre_ping`` (unless given) so a restarted database costs
    one retry, not a crash. libpq's TLS parameters in the URL (verified TLS:
    ``sslmode=verify-full`` and ``sslrootcert``) reach asyncpg in a DSN of their own; the
    rest of the URL (hosts, the dialect's own keys, asyncpg's) as SQLAlchemy passes it."""
    kwargs.setdefault("pool_pre_ping", True)
    url = make_url(database_url)
    tls = tls_dsn(url)
    if tls is None:
        return create_async_engine(url, **kwargs)
    connect_args = dict(kwargs.pop("connect_args", None) or {})
    # (asyncpg reads what a DSN says where no argument says otherwise: only these.)
    connect_args["dsn"] = tls
    bare = url.difference_update_query([*LIBPQ_TLS_PARAMS, "ssl"])
    return create_async_engine(bare, connect_args=connect_args, **kwargs)


def tls_dsn(url: URL) -> str | None:
    """A DSN holding only the URL's libpq TLS parameters (``ssl``, SQLAlchemy's spelling
    of ``sslmode``, with them), or None if it has none."""
    if not LIBPQ_TLS_PARAMS & url.query.keys():
        return None
    query = {k: v for k, v in url.query.items() if k in LIBPQ_TLS_PARAMS}
    if "ssl" in url.query:
        query.setdefault("sslmode", url.query["ssl"])
    return "postgresql://?" + urlencode(query, doseq=True)


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


# How PostgreSQL renders the tenant policy's expression (whitespace removed), for a
# ``tenant_id`` of type varchar (ours) or text.
_TENANT_QUALS = frozenset(
    {
        "((tenant_id)::text=current_setting('app.current_tenant_id'::text,true))",
        "(tenant_id=current_setting('app.current_tenant_id'::text,true))",
    }
)


async def assert_rls_enforced(engine: AsyncEngine) -> None:
    """Refuse to run as a role that row-level security would not restrict, or on tables
    where it is not in force.

    Superusers and BYPASSRLS roles skip every policy; a table's owner, and any member of
    the owning role (PostgreSQL lets members act as owners: a common layout on managed
    PostgreSQL), can switch it off (``NO FORCE ROW LEVEL SECURITY``) or disable the
    audit log's triggers. Every ledger table the application reaches (resolved as its
    queries resolve them, through the search path) must have RLS enabled and forced with
    the ``tenant_isolation`` policy as migrated, and no other policy widening what this
    role sees: one left off or loosened after maintenance would show every tenant's rows
    to every tenant's session. The application must connect as ``paystream_app``.
    """
    async with engine.connect() as conn:
        role = (
            await conn.execute(
                text(
                    "SELECT rolname, rolsuper, rolbypassrls, rolcreaterole, "
                    # (Review h67n: what it made there, a function or an operator, runs in
                    # the trigger functions and the owner's sessions: migration 0011.)
                    "has_schema_privilege(current_user, 'public', 'CREATE') "
                    "AS creates_in_public, "
                    # (Review h67q: or as a role it may SET ROLE to, or inherits from.)
                    # (Only a membership it can use: PostgreSQL 16 grants one that gives
                    # neither SET nor INHERIT; and not where CREATE is PUBLIC's, which
                    # the message below is for: every role would be named.)
                    "(SELECT string_agg(r.rolname, ', ' ORDER BY r.rolname) FROM pg_roles r "
                    "WHERE r.rolname <> current_user "
                    "AND CASE WHEN current_setting('server_version_num')::int >= 160000 "
                    "THEN pg_has_role(current_user, r.oid, 'USAGE') "
                    "OR pg_has_role(current_user, r.oid, 'SET') "
                    "OR pg_has_role(current_user, r.oid, 'MEMBER WITH ADMIN OPTION') "
                    "ELSE pg_has_role(current_user, r.oid, 'MEMBER') END "
                    "AND NOT has_schema_privilege('public', 'public', 'CREATE') "
                    "AND has_schema_privilege(r.oid, 'public', 'CREATE')) AS creating_roles, "
                    # Another role it may SET ROLE to (or inherits) that skips policies.
                    "EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname <> current_user "
                    "AND (r.rolsuper OR r.rolbypassrls) "
                    "AND pg_has_role(current_user, r.oid, 'MEMBER')) AS bypass_member "
                    "FROM pg_roles WHERE rolname = current_user"
                )
            )
        ).one()
        tables = (
            await conn.execute(
                text(
                    "SELECT t.name, c.oid IS NOT NULL AS found, "
                    "coalesce(c.relrowsecurity AND c.relforcerowsecurity, false) AS forced, "
                    "coalesce(pg_has_role(current_user, c.relowner, 'MEMBER'), false) AS owns, "
                    "(SELECT array_agg(regexp_replace(pg_get_expr(p.polqual, p.polrelid), "
                    "'\\s', '', 'g') || '|' || regexp_replace(coalesce(pg_get_expr("
                    "p.polwithcheck, p.polrelid), ''), '\\s', '', 'g')) FROM pg_policy p "
                    "WHERE p.polrelid = c.oid AND p.polname = 'tenant_isolation' "
                    "AND p.polpermissive AND p.polcmd = '*') AS isolation, "
                    "EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid "
                    "AND p.polname <> 'tenant_isolation' AND p.polpermissive "
                    "AND (0 = ANY(p.polroles) OR EXISTS (SELECT 1 FROM unnest(p.polroles) r "
                    "WHERE pg_has_role(current_user, r, 'MEMBER')))) AS widened "
                    "FROM unnest(CAST(:tables AS text[])) AS t(name) "
                    "LEFT JOIN pg_class c ON c.oid = to_regclass(quote_ident(t.name)) "
                    "AND c.relkind IN ('r', 'p')"
                ),
                {"tables": list(TENANT_TABLES)},
            )
        ).all()
    if role.rolsuper or role.rolbypassrls:
        raise RlsNotEnforcedError(
            f"role {role.rolname!r} bypasses row-level security (superuser or BYPASSRLS); "
            "connect as paystream_app"
        )
    if owned := sorted(t.name for t in tables if t.owns):
        raise RlsNotEnforcedError(
            f"role {role.rolname!r} owns (or is a member of the role owning) "
            f"{', '.join(owned)} and could switch row-level security off; connect as "
            "paystream_app"
        )
    if role.bypass_member:
        raise RlsNotEnforcedError(
            f"role {role.rolname!r} is a member of a role that bypasses row-level security "
            "(superuser or BYPASSRLS), which it may SET ROLE to; connect as paystream_app "
            "without it"
        )
    if role.rolcreaterole:
        # (Before PostgreSQL 16 one may grant itself any non-superuser role: the tables'
        # owner included, and switch row-level security off.)
        raise RlsNotEnforcedError(
            f"role {role.rolname!r} has CREATEROLE and could grant itself the tables' "
            "owner; connect as paystream_app without it"
        )
    if role.creating_roles:
        raise RlsNotEnforcedError(
            f"role {role.rolname!r} is a member of {role.creating_roles}, which may create "
            "objects in schema public (where the ledger's trigger functions and the owner's "
            "sessions resolve names) and which it may SET ROLE to; revoke that membership "
            f"(REVOKE <role> FROM {role.rolname}) or that role's CREATE on schema public"
        )
    if role.creates_in_public:
        raise RlsNotEnforcedError(
            f"role {role.rolname!r} may create objects in schema public, where the ledger's "
            "trigger functions and the owner's sessions resolve names; have the schema's "
            f"owner run REVOKE CREATE ON SCHEMA public FROM PUBLIC, {role.rolname} "
            "(migration 0011 could not: it was run by another role)"
        )
    if unenforced := sorted(t.name for t in tables if not _isolated(t)):
        raise RlsNotEnforcedError(
            "row-level security is not in force on "
            + ", ".join(unenforced)
            + " (enabled, forced, with only its tenant_isolation policy as migrated); run "
            "`paystream migrate` or restore it"
        )


def _isolated(table: Any) -> bool:
    if not (table.found and table.forced) or table.widened:
        return False
    return table.isolation is not None and all(
        using in _TENANT_QUALS and check in _TENANT_QUALS
        for using, _, check in (q.partition("|") for q in table.isolation)
    )
