"""Ledger test fixtures: a migrated database per module, owner and application engines."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.ledger import create_engine
from paystream.ledger.migrate import app_database_url, set_app_password, upgrade
from paystream.tenancy.crypto import MasterKey, MasterKeyring

# pytest only honours `pytest_plugins` in the top-level conftest; until tests/conftest.py
# registers "tests.fixtures.postgres", importing the fixtures here makes them visible.
from tests.fixtures.postgres import ledger_database_url, module_database_url
from tests.ledger.factories import EventFactory, LedgerDb, forget_master_keys

__all__ = ["ledger_database_url", "module_database_url"]


# Module name -> (its database's URL, the password its ledger_db gave paystream_app).
_module_passwords: dict[str, tuple[str, str]] = {}


@pytest_asyncio.fixture(scope="module")
async def ledger_db(
    request: pytest.FixtureRequest, module_database_url: str
) -> AsyncIterator[LedgerDb]:
    """This module's database, migrated to head, with a login password for paystream_app."""
    password = secrets.token_urlsafe(12) + ":'%"  # characters that need careful quoting
    await upgrade(module_database_url, app_password=password)
    _module_passwords[request.module.__name__] = (module_database_url, password)
    yield LedgerDb(module_database_url, app_database_url(module_database_url, password))
    _module_passwords.pop(request.module.__name__, None)


@pytest.fixture(autouse=True)
def _app_password_restored(request: pytest.FixtureRequest) -> Iterator[None]:
    """The module's paystream_app password, set again after each test. A role is the
    whole server's: a test migrating a database of its own with another password (the
    CLI's, a downgrade's) left the module's engines unable to open a connection, and the
    sink, which never gives up on a database, retried for ever (a test that hung CI's
    worker for 10 minutes under xdist)."""
    yield
    kept = _module_passwords.get(request.module.__name__)
    if kept is not None:
        asyncio.run(_set_password(*kept))


@pytest.fixture(autouse=True)
def _no_master_key_seen_yet(request: pytest.FixtureRequest) -> None:
    """Each test begins on a ledger that has seen no master key (migration 0012's record,
    emptied as the owner): a module's tests share its database, and most make keys of
    their own, a deployment each, whose first chain the writer would otherwise refuse as
    one begun under the wrong key (review h71f). What a test writes itself is recorded
    as ever; `test_wrong_master_key.py` checks the refusal. A module setting
    ``MASTER_KEYS_SEEN_KEPT`` (one key throughout) keeps the record. (After the module's
    ``ledger_db``, if the test asks for it: fixtures of wider scope are set up first.)"""
    kept = _module_passwords.get(request.module.__name__)
    if kept is not None and not getattr(request.module, "MASTER_KEYS_SEEN_KEPT", False):
        asyncio.run(forget_master_keys(kept[0]))


async def _set_password(url: str, password: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await set_app_password(conn, password)
    finally:
        await engine.dispose()


@pytest_asyncio.fixture(scope="module")
async def app_engine(ledger_db: LedgerDb) -> AsyncIterator[AsyncEngine]:
    """Engine connecting as the application role (RLS applies)."""
    engine = create_engine(ledger_db.app_url)
    yield engine
    await engine.dispose()


@pytest_asyncio.fixture(scope="module")
async def owner_engine(ledger_db: LedgerDb) -> AsyncIterator[AsyncEngine]:
    """Engine connecting as the schema owner (a superuser here): for setup and tampering."""
    engine = create_engine(ledger_db.owner_url)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
def keyring() -> MasterKeyring:
    return MasterKeyring(MasterKey.generate())


@pytest.fixture
def make_event() -> EventFactory:
    return EventFactory()
