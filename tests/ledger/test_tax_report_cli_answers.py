"""`paystream ledger tax-report` as a new user meets it (review h74r): a tenant id the
ledger holds nothing of is said so, exit 3 (as `audit verify`'s), not reported as one
that collected no tax; run without PAYSTREAM_DB_APP_PASSWORD, the refusal names the
variable, not only the role the CLI picked from it."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from click.testing import CliRunner, Result
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.ledger import write_events
from paystream.ledger.cli import EXIT_NO_ENTRIES, audit_group, ledger_group
from paystream.tenancy.crypto import MasterKeyring
from tests.ledger.factories import EventFactory, LedgerDb, tax_rate

pytestmark = pytest.mark.asyncio

PERIOD = ["--from", "2025-01-01", "--to", "2025-01-02"]


def _env(ledger_db: LedgerDb, *, app_password: bool = True) -> dict[str, str]:
    return {
        "DATABASE_URL": ledger_db.owner_url,
        "PAYSTREAM_DB_APP_PASSWORD": (make_url(ledger_db.app_url).password or "")
        if app_password
        else "",
    }


async def _report(tenant: str, env: dict[str, str]) -> Result:
    return await asyncio.to_thread(
        CliRunner().invoke, ledger_group, ["tax-report", "--tenant", tenant, *PERIOD], env=env
    )


async def test_a_tenant_the_ledger_holds_nothing_of_is_said_so(
    ledger_db: LedgerDb, app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    """`--tenant nosuch` printed `"currencies": {}` with exit 0: for a tax return, "no
    tax collected" where the truth is "no such tenant" (a mistyped id)."""
    known = f"tx-{uuid.uuid4().hex[:10]}"
    await write_events(app_engine, [tax_rate(make_event, known, "vat")], keyring=keyring)
    env = _env(ledger_db)

    unknown = await _report(f"{known}x", env)
    assert unknown.exit_code == EXIT_NO_ENTRIES, unknown.output
    assert f"the ledger holds no events of tenant '{known}x'" in unknown.output
    assert "check the id" in unknown.output
    assert "currencies" not in unknown.output  # no report a script could take for zero tax

    # A tenant it knows, with no tax in the period: its (empty) report, exit 0.
    empty = await _report(known, env)
    assert empty.exit_code == 0, empty.output
    assert json.loads(empty.output)["currencies"] == {}


@pytest.mark.parametrize("group", ["tax-report", "audit verify"])
async def test_without_the_app_password_the_refusal_names_the_variable(
    ledger_db: LedgerDb, group: str
) -> None:
    """ "role 'postgres' bypasses row-level security ...; connect as paystream_app": the
    user connects nowhere by hand; the CLI picks the role from PAYSTREAM_DB_APP_PASSWORD."""
    env = _env(ledger_db, app_password=False)
    if group == "tax-report":
        out = await _report("acme", env)
    else:
        env["PAYSTREAM_MASTER_KEY"] = "A" * 43 + "="
        out = await asyncio.to_thread(
            CliRunner().invoke, audit_group, ["verify", "--tenant", "acme"], env=env
        )
    assert out.exit_code == 1, out.output
    assert "bypasses row-level security" in out.output, out.output
    assert "set PAYSTREAM_DB_APP_PASSWORD" in out.output, out.output
