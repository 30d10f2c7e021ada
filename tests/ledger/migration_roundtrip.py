"""A migration that adds nullable columns, tested the same way each time (0017's on
``payments``, 0018's on ``refunds``): up and down while no row holds them, then, once a
row does, its downgrade refused and rolled back whole."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool

from paystream.ledger import create_engine, verify_audit, write_events
from paystream.ledger.migrate import app_database_url, current, downgrade, head, upgrade
from paystream.tenancy.crypto import MasterKey, MasterKeyring
from tests.ledger.factories import EventFactory


@dataclass(frozen=True)
class RoundTrip:
    before: list[str]  # the columns at the version before the migration
    made: list[str]  # ... at head
    gone: tuple[list[str], str | None]  # ... and the version after a downgrade while unset
    problems: list[Any]  # the audit's, once a row holds them
    refusal: str | None  # the downgrade's error then (None: it went)
    at: str | None  # the version after that downgrade


async def _columns(url: str, table: str, columns: Sequence[str]) -> list[str]:
    owner = create_engine(url, poolclass=NullPool)
    try:
        async with owner.connect() as conn:
            found = await conn.execute(
                text(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = "
                    ":table AND column_name IN :columns ORDER BY column_name"
                ).bindparams(bindparam("columns", expanding=True)),
                {"table": table, "columns": list(columns)},
            )
            return [str(r[0]) for r in found]
    finally:
        await owner.dispose()


async def _write(
    url: str,
    password: str,
    keyring: MasterKeyring,
    row: tuple[str, str, str, Mapping[str, Any]],
    verify: bool = False,
) -> list[Any]:
    """Writes ``(tenant, entity, id, fields)`` as paystream_app; with ``verify``, the
    tenant's audit problems after (else [])."""
    app: AsyncEngine = create_engine(app_database_url(url, password), poolclass=NullPool)
    try:
        tenant, entity, entity_id, fields = row
        await write_events(
            app, [EventFactory()(tenant, entity, entity_id, 1, dict(fields))], keyring=keyring
        )
        return list((await verify_audit(app, tenant, keyring)).problems) if verify else []
    finally:
        await app.dispose()


def round_trip_while_unset(
    url: str,
    *,
    password: str,
    previous: str,
    expected_head: str,
    table: str,
    columns: Sequence[str],
    unset: tuple[str, str, str, Mapping[str, Any]],
    held: tuple[str, str, str, Mapping[str, Any]],
) -> RoundTrip:
    """From an empty schema: up to ``previous``, up to head (``expected_head``), a row
    ``unset`` (tenant, entity, id, fields) written without the columns, down to
    ``previous`` (which may go), up again, a row ``held`` naming them written, and down
    to ``previous`` once more (which must be refused)."""

    async def go() -> RoundTrip:
        keyring = MasterKeyring(MasterKey.generate())
        await downgrade(url, "base")
        await upgrade(url, previous, app_password=password)
        before = await _columns(url, table, columns)
        await upgrade(url, app_password=password)
        assert await current(url) == head() == expected_head
        made = await _columns(url, table, columns)
        await _write(url, password, keyring, unset)
        await downgrade(url, previous)
        gone = await _columns(url, table, columns), await current(url)
        await upgrade(url, app_password=password)
        problems = await _write(url, password, keyring, held, verify=True)
        refusal = None
        try:
            await downgrade(url, previous)
        except RuntimeError as exc:
            refusal = str(exc)
        return RoundTrip(before, made, gone, problems, refusal, await current(url))

    return asyncio.run(go())
