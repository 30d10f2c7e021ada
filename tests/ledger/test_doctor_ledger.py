"""`paystream doctor` against a deployment: it checks what the ledger sink needs on its
first batch, which it would otherwise only find out there (and stall)."""

from __future__ import annotations

import base64

import pytest
from sqlalchemy.engine import make_url

from paystream.doctor import CheckFailed, check_ledger_ready
from paystream.settings import load_settings
from tests.ledger.factories import LedgerDb

KEY = base64.b64encode(bytes(range(32))).decode()


async def test_a_ready_ledger_passes(ledger_db: LedgerDb) -> None:
    password = make_url(ledger_db.app_url).password or ""
    settings = load_settings(
        database_url=ledger_db.owner_url, db_app_password=password, master_key=KEY
    )
    figure = await check_ledger_ready(settings)
    assert "paystream_app logs in under RLS" in figure


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        ({"db_app_password": None}, "PAYSTREAM_DB_APP_PASSWORD is not set"),
        ({"db_app_password": "wrong"}, "as paystream_app"),
        ({"master_key": None}, "PAYSTREAM_MASTER_KEY"),
    ],
)
async def test_what_would_stall_the_sink_fails_the_check(
    ledger_db: LedgerDb, overrides: dict[str, object], says: str
) -> None:
    password = make_url(ledger_db.app_url).password or ""
    values: dict[str, object] = {
        "database_url": ledger_db.owner_url,
        "db_app_password": password,
        "master_key": KEY,
        **overrides,
    }
    with pytest.raises(CheckFailed, match=says):
        await check_ledger_ready(load_settings(**values))
