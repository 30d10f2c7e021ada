"""Ledger test fixtures: a migrated database per module, owner and application engines."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.ledger import create_engine
from paystream.ledger.migrate import app_database_url, upgrade
from paystream.tenancy.crypto import MasterKey, MasterKeyring

# pytest only honours `pytest_plugins` in the top-level conftest; until tests/conftest.py
# registers "tests.fixtures.postgres", importing the fixtures here makes them visible.
from tests.fixtures.postgres import ledger_database_url, module_database_url
from tests.ledger.factories import EventFactory, LedgerDb

__all__ = ["ledger_database_url", "module_database_url"]


@pytest_asyncio.fixture(scope="module")
async def ledger_db(module_database_url: str) -> LedgerDb:
    """This module's database, migrated to head, with a login password for paystream_app."""
    password = secrets.token_urlsafe(12) + ":'%"  # characters that need careful quoting
    await upgrade(module_database_url, app_password=password)
    return LedgerDb(module_database_url, app_database_url(module_database_url, password))


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
