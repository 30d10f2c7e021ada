"""In a rolling upgrade (the ledger migrated to 0015, workers of the release before still
running beside the new ones, as README "The ledger" allows), a taxed payment, a taxed
invoice and a taxed subscription an old worker writes AFTER the migration keep their
tax columns NULL: the migration's one-off fill has run, and that worker's writer knows
none of them (review h74q finding 1: the tax report under-reported the tax for good, and
nothing said so). `audit verify` names those rows; `ledger backfill --unlisted --tenant
T` fills them as 0015 filled the rows before it (from the event of the row's version,
only where empty, no audit entry of their own), idempotent; then the report counts them
and verify is clean, and 0006's forward-only trigger is in force again."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
from click.testing import CliRunner
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from paystream.ledger import create_engine, tenant_session, verify_audit, write_events
from paystream.ledger.cli import ledger_group
from paystream.ledger.migrate import current, downgrade, head, upgrade
from paystream.tenancy.crypto import MasterKey, MasterKeyring
from tests.ledger.factories import EventFactory, tax_calculation, tax_rate
from tests.ledger.test_migration_0015 import (
    PASSWORD,
    _app,
    _as_of_0014,
    _events_only,
    _tax_columns,
)


def test_rows_an_old_worker_writes_after_0015_get_their_tax_columns(
    module_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = module_database_url
    key = MasterKey.generate()
    keyring = MasterKeyring(key)
    make = EventFactory()
    t = "roll15"

    async def rolling() -> list[str]:
        await downgrade(url, "base")
        await upgrade(url, app_password=PASSWORD)  # the new release's migrate step ran
        assert await current(url) == head() == "0019"
        app = _app(url)
        owner = create_engine(url, poolclass=NullPool)
        try:
            with monkeypatch.context() as m:
                _as_of_0014(m)  # an old worker, still draining its partitions
                pay = make.payment(
                    t, "pay_1", amount=1200, currency="GBP", amount_captured=1200,
                    amount_tax=200, tax_calculation_id="taxcalc_1",
                )  # fmt: skip
                plain = make.payment(t, "pay_2", currency="GBP")
                sub = make.subscription(t, "sub_1", currency="GBP", tax_rate_ids=["vat"])
                inv = make.invoice(t, "in_1", currency="GBP", amount=1200, subtotal=1000, tax=200)
                await write_events(app, [pay, plain, sub, inv], keyring=keyring)
            # (the old worker keeps tax events as events only: unlisted, for --unlisted)
            await _events_only(
                owner,
                t,
                [tax_rate(make, t, "vat"), tax_calculation(make, t, "taxcalc_1", {"vat": 200})],
            )
            return (await verify_audit(app, t, keyring)).problems
        finally:
            await app.dispose()
            await owner.dispose()

    problems = asyncio.run(rolling())
    # Named, with what to run (the untaxed payment is not).
    lacking = sorted(p.split(" lack ")[0] for p in problems if " lack the tax columns " in p)
    assert lacking == [
        "1 invoices row(s) (in_1)",
        "1 payments row(s) (pay_1)",
        "1 subscriptions row(s) (sub_1)",
    ], problems
    assert all("ledger backfill --unlisted" in p for p in problems if " lack " in p)

    env = {
        "DATABASE_URL": url,
        "PAYSTREAM_DB_APP_PASSWORD": PASSWORD,
        "PAYSTREAM_MASTER_KEY": base64.b64encode(key.key).decode(),
    }
    # What the README tells the operator to run once the rollout completes.
    ran = CliRunner().invoke(ledger_group, ["backfill", "--tenant", t, "--unlisted"], env=env)
    assert ran.exit_code == 0, ran.output
    assert ran.output.endswith(", tax columns filled: 1 payments, 1 subscriptions, 1 invoices\n"), (
        ran.output
    )
    report = CliRunner().invoke(
        ledger_group,
        ["tax-report", "--tenant", t, "--from", "2025-01-01", "--to", "2025-02-01"],
        env=env,
    )
    assert report.exit_code == 0, report.output
    gbp = json.loads(report.output)["currencies"].get("GBP")
    # 200 of tax on the payment and 200 on the paid invoice were collected.
    assert gbp is not None and (gbp["payments"], gbp["invoices"]) == (200, 200), report.output
    assert [(r["tax_rate_id"], r["total"]) for r in gbp["by_rate"]] == [("vat", 400)]
    # Idempotent: nothing left to fill.
    again = CliRunner().invoke(ledger_group, ["backfill", "--tenant", t, "--unlisted"], env=env)
    assert again.exit_code == 0, again.output
    assert again.output.endswith("0 row(s) moved forward, 4 already there\n"), again.output

    async def after() -> tuple[object, ...]:
        app = _app(url)
        try:
            async with tenant_session(app, t) as s:
                pays, inv, sub = await _tax_columns(s)
            # 0006's trigger is back: a same-version change is refused.
            refused = None
            try:
                async with tenant_session(app, t) as s:
                    await s.execute(
                        text("UPDATE payments SET amount_tax = 1 WHERE payment_id = 'pay_1'")
                    )
            except DBAPIError as exc:
                refused = str(exc.orig)
            return pays, inv, sub, refused, (await verify_audit(app, t, keyring)).problems
        finally:
            await app.dispose()

    pays, inv, sub, refused, problems = asyncio.run(after())
    assert pays == [("pay_1", 200, "taxcalc_1", 1), ("pay_2", None, None, 1)]
    assert (inv, sub) == ((1000, 200), ["vat"])
    assert refused is not None and "only move forward" in refused, refused
    assert problems == []
