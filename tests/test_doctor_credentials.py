"""`paystream doctor` never shows a server password, even one the URL parser chokes on
(review finding: its error echoed most of it)."""

from __future__ import annotations

import pytest

from paystream.doctor import _run_one, check_database, render_table
from paystream.errors import ConfigurationError
from paystream.settings import load_settings


async def test_doctor_never_shows_the_database_password() -> None:
    # A password holding "@" and ":", percent-encoded (unescaped, the settings refuse
    # it without showing it: SQLAlchemy's parse error quoted it).
    with pytest.raises(ConfigurationError) as refused:
        load_settings(database_url="postgresql://owner:a@b:Sup3rSecretPart@127.0.0.1:9/x")
    assert "Sup3rSecretPart" not in str(refused.value)
    settings = load_settings(
        database_url="postgresql://owner:a%40b%3ASup3rSecretPart@127.0.0.1:9/x"
    )
    result = await _run_one("database answers", check_database, settings)
    table = render_table([result])
    assert "Sup3rSecretPart" not in table, table


async def test_doctor_never_shows_the_app_roles_password() -> None:
    """PAYSTREAM_DB_APP_PASSWORD goes into the URL the ledger check builds for the app
    role: an error quoting that URL showed it (review finding)."""
    for password, shown in (
        ("AppRolePassw0rd", "AppRolePassw0rd"),
        ("Secr%tW0rd!", "Secr%25tW0rd%21"),  # as the app role's URL escapes it
    ):
        settings = load_settings(db_app_password=password)

        async def failing(_: object, shown: str = shown) -> str:
            raise RuntimeError(f"cannot connect to postgresql://paystream_app:{shown}@x/db")

        table = render_table([await _run_one("ledger", failing, settings)])
        assert shown not in table and "W0rd" not in table, table
