"""`paystream doctor` never shows a server password, even one the URL parser chokes on
(review finding: its error echoed most of it)."""

from __future__ import annotations

from paystream.doctor import _run_one, check_database, render_table
from paystream.settings import load_settings


async def test_doctor_never_shows_the_database_password() -> None:
    # A password holding "@" and ":" (unescaped, as `paystream config` expects them:
    # "everything up to the last @ is credentials").
    password = "a@b:Sup3rSecretPart"
    settings = load_settings(database_url=f"postgresql://owner:{password}@127.0.0.1:9/x")
    result = await _run_one("database answers", check_database, settings)
    table = render_table([result])
    assert "Sup3rSecretPart" not in table, table
