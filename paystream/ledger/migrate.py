"""Run the ledger's Alembic migrations programmatically (``paystream migrate`` calls this)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import uuid
from typing import TYPE_CHECKING

from scramp import ScramException
from scramp.core import saslprep
from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.pool import NullPool

from paystream.errors import ConfigurationError
from paystream.ledger.errors import LedgerError
from paystream.ledger.session import create_engine

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = [
    "APP_ROLE",
    "app_database_url",
    "create_database",
    "current",
    "downgrade",
    "head",
    "is_app_url",
    "scram_verifier",
    "set_app_password",
    "upgrade",
    "worker_database_url",
]

APP_ROLE = "paystream_app"
# PostgreSQL's own default (scram_iterations) for the application role's password.
_SCRAM_ITERATIONS = 4096
# Arbitrary constant: serialises concurrent `paystream migrate` runs on one database.
_MIGRATION_LOCK = 0x7061_7973_7472_6561


# (Alembic is imported where it is used: a worker imports this module for its URLs, and
# alembic with mako and pygments took a third of a second of every worker's start.)


def alembic_config() -> Config:
    """Alembic configuration pointing at the migrations shipped inside the package."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", "paystream.ledger:migrations")
    return cfg


def _run(connection: Connection, action: str, revision: str) -> None:
    from alembic import command

    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    cfg.attributes["target"] = revision  # (0013's downgrade: only "base" drops its rows)
    if action == "upgrade":
        command.upgrade(cfg, revision)
    else:
        command.downgrade(cfg, revision)


async def _migrate(database_url: str, action: str, revision: str, password: str | None) -> None:
    # NullPool: a one-shot tool should leave no pooled connection behind.
    engine = create_engine(database_url, poolclass=NullPool, pool_pre_ping=False)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
            await conn.run_sync(_run, action, revision)
            if password is not None:
                await set_app_password(conn, password)
    finally:
        await engine.dispose()


async def upgrade(
    database_url: str, revision: str = "head", *, app_password: str | None = None
) -> None:
    """Upgrade as the schema owner; with ``app_password``, let ``paystream_app`` log in with it."""
    await _migrate(database_url, "upgrade", revision, app_password)


async def downgrade(database_url: str, revision: str = "-1") -> None:
    """Downgrade as the schema owner (``"base"`` removes every ledger object but the role)."""
    await _migrate(database_url, "downgrade", revision, None)


def head() -> str | None:
    """The latest revision this version's migrations know."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def current(database_url: str) -> str | None:
    """The database's current revision, or None if never migrated."""
    from alembic.runtime.migration import MigrationContext

    engine = create_engine(database_url, poolclass=NullPool, pool_pre_ping=False)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(
                lambda sync: MigrationContext.configure(sync).get_current_revision()
            )
    finally:
        await engine.dispose()


async def set_app_password(conn: AsyncConnection, password: str) -> None:
    """ALTER ROLE paystream_app LOGIN PASSWORD ...; the role must exist (run upgrade first).

    The statement carries the password's SCRAM-SHA-256 verifier, never the password:
    PostgreSQL stores a verifier given to it as is, and the statement text can reach the
    server's log (``log_statement = 'ddl'``) and monitoring views.
    """
    if not password or "\x00" in password:
        raise LedgerError("the application role password must be non-empty text")
    # ALTER ROLE takes no bind parameters; the verifier is base64 and '$', ':' only.
    verifier = scram_verifier(password)
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    assert driver is not None
    await driver.execute(f"ALTER ROLE {APP_ROLE} WITH LOGIN PASSWORD '{verifier}'")


def scram_verifier(password: str, iterations: int = _SCRAM_ITERATIONS) -> str:
    """PostgreSQL's stored form of ``password`` for SCRAM-SHA-256 authentication
    (``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>``, RFC 5802/5803),
    computed from the password as PostgreSQL and its clients normalise it."""
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", _pg_saslprep(password).encode(), salt, iterations)
    stored_key = hashlib.sha256(hmac.digest(salted, b"Client Key", "sha256")).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    b64 = base64.b64encode
    return (
        f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}"
        f"${b64(stored_key).decode()}:{b64(server_key).decode()}"
    )


def _pg_saslprep(password: str) -> str:
    """The password as PostgreSQL (``pg_saslprep``) and libpq/asyncpg hash it: ASCII as
    is (control characters too); otherwise SASLprep (RFC 4013), or as is where SASLprep
    refuses it or leaves nothing. (Strict SASLprep refused emoji and tabs, and gave a
    soft hyphen a verifier no client could match.)"""
    if password.isascii():
        return password
    try:
        prepared = saslprep(password)
    except ScramException:
        return password
    return prepared or password


def app_database_url(owner_url: str, password: str, role: str = APP_ROLE) -> str:
    """The URL the application uses: same server and database, the non-owner role."""
    url = make_url(owner_url).set(username=role, password=password)
    return url.render_as_string(hide_password=False)


def is_app_url(database_url: str) -> bool:
    """Is ``database_url`` the application role's own (not the owner's)?"""
    return make_url(database_url).username == APP_ROLE


def worker_database_url(database_url: str, app_password: str | None) -> str:
    """The URL a worker connects with, as ``paystream_app``: derived from the owner's URL
    and the role's password, or DATABASE_URL itself when it is already that role's own
    (a worker given nothing of the owner's)."""
    if app_password:
        return app_database_url(database_url, app_password)
    if is_app_url(database_url):
        return database_url
    raise ConfigurationError(
        f"the ledger connects as {APP_ROLE}: set DATABASE_URL to that role's own URL, or "
        "give the owner's with PAYSTREAM_DB_APP_PASSWORD (`paystream migrate` sets it)"
    )


async def create_database(server_url: str, prefix: str = "paystream") -> str:
    """Create a new, uniquely named database on the server of ``server_url``; its URL.

    For benchmarks and tests that must never write into an existing database.
    """
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    # (Outside a transaction, as CREATE DATABASE must be; over the URL's TLS, if any.)
    engine = create_engine(server_url, poolclass=NullPool, pool_pre_ping=False)
    try:
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        await engine.dispose()
    # (The URL's own query kept: its TLS parameters hold a path with slashes.)
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)
