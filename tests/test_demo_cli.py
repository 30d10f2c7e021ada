"""`paystream demo`: demo traffic through a running fleet on the configured broker (what
docker-compose's `demo` service runs), against a real worker."""

from __future__ import annotations

import json
import re
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from paystream.devstack._process import free_port
from paystream.tenancy.limits import TenantLimits
from tests.fixtures.pipeline import Deployment
from tests.test_cli import at_once, run_cli

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]


async def test_demo_registers_its_tenants_and_drives_payments(deployment_factory: Any) -> None:
    dep: Deployment = await deployment_factory()
    with dep.worker() as worker:
        worker.wait_ready([], partitions=dep.settings.partitions)
        # (2 s at 20/s: some 40 flows, payments among them. The tax rates are made beside
        # the first flows and the run's end cancels them: the restart gets 3 s for its
        # three tax-rate round trips, review h80r3.)
        out = run_cli(dep, "demo", "--rate", "20", "--duration", "2").stdout
        # (The registry read meanwhile: --no-register writes nothing.)
        restarted_run, listed_run = at_once(
            partial(run_cli, dep, "demo", "--no-register", "--rate", "5", "--duration", "3"),
            partial(run_cli, dep, "tenants", "list"),
        )
        restarted = restarted_run.stdout
    assert "acme: registered" in out and "globex: registered" in out
    done = re.search(r"demo done: (\d+) outcomes in \d+ s \([\d.]+/s\):\n((?:  .*\n?)+)", out)
    assert done, out
    # Every kind on a line of its own: "  payment.succeeded      12"
    seen = {
        k: int(v.replace(",", "")) for k, v in (ln.split() for ln in done.group(2).splitlines())
    }
    assert int(done.group(1)) == sum(seen.values()) > 0
    assert any(kind.startswith("payment.") for kind in seen), seen
    assert seen["tax_rate.created"] == 3, seen  # acme's rate and globex's two
    # globex is a Connect platform: its connected account onboarded and enabled, then a
    # destination charge, a separate charge with a transfer reversed in part, and a
    # transfer over its daily_transfer_volume (refused before any call), at the start.
    for connect in (
        "connected_account.created",
        "connected_account.onboarding_link_created",
        "connected_account.updated",
        "payment.succeeded[destination]",
        "transfer.created",
        "transfer.reversed",
        "command.rejected[daily_transfer_volume]",
    ):
        assert seen.get(connect, 0) >= 1, (connect, seen)
    # Started again on the same stack (compose restarts the demo): the same rates,
    # answered as made before, not refused as existing (command.rejected).
    assert re.search(r"^  tax_rate\.created +3$", restarted, re.M), restarted
    # Started again: its account answered from its record, enabled, and the flows again.
    assert re.search(r"^  transfer\.created +\d+$", restarted, re.M), restarted
    listed = {t["tenant_id"]: t for t in map(json.loads, listed_run.stdout.splitlines())}
    assert listed["globex"]["limits"]["commands_per_second"] == 50
    assert listed["globex"]["limits"]["daily_transfer_volume"] == {"EUR": 500_000}
    # globex's bank account is closed: its payouts fail (payout.failed).
    assert listed["globex"]["gateway_options"] == {"payout_destination": "000111111113"}
    # A registered tenant is never rewritten (compose restarts the demo): an operator's
    # suspension stays, and so does --no-register's registry (the two runs at once).
    run_cli(dep, "tenants", "suspend", "acme")
    # An operator's limits stay as they set them: none at all (review h82rd: put back).
    run_cli(dep, "tenants", "limits", "globex", "--clear")
    again, _ = at_once(
        partial(run_cli, dep, "demo", "--rate", "5", "--duration", "1"),
        partial(run_cli, dep, "demo", "--no-register", "--rate", "5", "--duration", "1"),
    )
    assert "acme: already registered, left as it is" in again.stdout
    assert "globex: already registered, left as it is; commands_per_second, " in again.stdout
    after = {
        t["tenant_id"]: t
        for t in map(json.loads, run_cli(dep, "tenants", "list").stdout.splitlines())
    }
    assert after["acme"]["status"] == "suspended"
    assert after["globex"]["limits"] == TenantLimits().model_dump(mode="json")


async def test_dev_on_a_configured_broker_leaves_registered_tenants_as_they_are(
    deployment_factory: Any, tmp_path: Path
) -> None:
    """`dev` with KAFKA_BROKER_URL set uses that broker, whose registry outlives the run:
    a tenant it holds keeps its suspension (dev wrote every demo tenant anew), and its
    limits; a limit the demo expects that an older demo's record leaves unset is added, and said
    (globex from a run before its daily_transfer_volume never showed the cap's refusal)."""
    dep: Deployment = await deployment_factory()
    run_cli(dep, "tenants", "add", "acme", "--name", "Acme Corp")
    run_cli(dep, "tenants", "suspend", "acme")
    # An older run's globex (no transfer cap), as that demo wrote it.
    globex = ("--rate-limit", "50", "--max-payment", "USD=40000")
    run_cli(dep, "tenants", "add", "globex", "--name", "Globex", *globex)
    out = run_cli(
        dep,
        "dev",
        "--duration",
        "0.5",
        "--web-port",
        str(free_port()),
        "--ingress-port",  # (not 6070: another stack, or another process's test, may hold it)
        str(free_port()),
        PAYSTREAM_DATA_DIR=str(tmp_path),
    )
    listed = {
        t["tenant_id"]: t
        for t in map(json.loads, run_cli(dep, "tenants", "list").stdout.splitlines())
    }
    assert listed["acme"]["status"] == "suspended" and listed["acme"]["name"] == "Acme Corp"
    assert listed["globex"]["name"] == "Globex"
    assert listed["globex"]["limits"]["commands_per_second"] == 50
    assert listed["globex"]["limits"]["daily_transfer_volume"] == {"EUR": 500_000}
    assert "acme: already registered, left as it is" in out.stdout
    assert "globex: already registered; the demo's daily_transfer_volume added" in out.stdout
