"""Kill a worker of Stripe tenants between an invoice's Stripe call and its offset
commit: no invoice made twice, no line added twice, no invoice charged twice (localstripe,
with Stripe's idempotency contract: tests/fixtures/localstripe_server.py).

An `invoice.create` makes a draft and then one InvoiceItem per line, each under a key
derived from the command's; an `invoice.pay` charges under the command's key. A recording
proxy (tests/e2e/crash_harness.py) SIGKILLs the worker once localstripe has run a line's
POST, and again once it has run a pay, before their answers return, so that both
commands are certain to be redelivered and sent again under the same keys."""

from __future__ import annotations

import base64
import uuid
from collections import Counter
from typing import Any

import pytest
from cloudevents.core.v1.event import CloudEvent

from paystream.client import build_command
from paystream.tenancy.crypto import MasterKey, MasterKeyring
from paystream.tenancy.models import Tenant
from paystream.tenancy.secrets import seal_secret
from tests.e2e.crash_harness import Cut, KillingProxy, outcome_kind, through_the_cuts
from tests.e2e.test_stripe_crash import STRIPE_HEADERS, _list_all, _replayed
from tests.fixtures.pipeline import Deployment

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

MASTER = MasterKey.generate()
N_INV = 4  # per tenant
LINES = [
    {"description": "Hours", "amount": 1500, "quantity": 2},
    {"description": "Fee", "amount": 700},
]
CUTS: list[Cut] = [
    (lambda post: post["path"] == "/v1/invoiceitems", 3),  # a line of a create
    (lambda post: post["path"].endswith("/pay"), 3),  # a pay
]


def workload(tenants: list[str]) -> list[CloudEvent]:
    """Per tenant and invoice: a customer, their card, the invoice, finalized, paid."""
    per: dict[str, list[CloudEvent]] = {}
    for t in tenants:
        per[t] = []
        for j in range(N_INV):
            cus, pm, inv = f"c{j}", f"m{j}", f"i{j}"
            body = {
                "customer_id": cus,
                "payment_method_id": pm,
                "invoice_id": inv,
                "currency": "USD",
                "line_items": LINES,
                "metadata": {"ref": f"{t}:{inv}"},
            }
            per[t] += [
                build_command("customer.create", t, {"customer_id": cus}),
                build_command(
                    "payment_method.attach",
                    t,
                    {"customer_id": cus, "token": "pm_card_visa", "payment_method_id": pm},
                ),
                build_command("invoice.create", t, body),
                build_command("invoice.finalize", t, {"invoice_id": inv}),
                build_command("invoice.pay", t, {"invoice_id": inv}),
            ]
    return [per[t][i] for i in range(len(per[tenants[0]])) for t in tenants]


async def test_sigkill_between_an_invoice_call_and_its_commit_makes_and_charges_once(
    deployment_factory: Any, localstripe_url: str
) -> None:
    proxy = KillingProxy(
        localstripe_url,
        CUTS,
        forward=STRIPE_HEADERS,
        key_of=lambda post: post["headers"].get("Idempotency-Key"),
    )
    proxy_url = proxy.start()
    dep: Deployment = await deployment_factory(
        paystream_stripe_api_base=proxy_url,
        paystream_master_key=base64.b64encode(MASTER.key).decode(),
    )
    run = uuid.uuid4().hex[:6]
    tenants = [f"ix{run}{i}" for i in range(2)]
    api_key = f"sk_test_ix{run}_{uuid.uuid4().hex}"  # (one Stripe account: listed at once)
    keyring = MasterKeyring(MASTER)
    await dep.add_tenants(
        *(
            Tenant(
                tenant_id=t,
                gateway="stripe",
                secrets={"api_key": seal_secret(keyring, t, "api_key", api_key)},
            )
            for t in tenants
        )
    )
    commands = workload(tenants)
    ids = {c.get_id() for c in commands}
    async with through_the_cuts(dep, proxy, tenants, commands, each_cut_within=120) as log:
        assert all(len(log.by_command[i]) == 1 for i in ids)
        first: dict[str, str] = {}
        for cause, _, raw in log.records:
            if cause in ids:
                first.setdefault(cause, outcome_kind(raw))
        kinds = Counter(first.values())
        assert kinds == {
            "customer.created": 2 * N_INV,
            "payment_method.attached": 2 * N_INV,
            "invoice.created": 2 * N_INV,
            "invoice.finalized": 2 * N_INV,
            "invoice.paid": 2 * N_INV,
        }, kinds
        # Each call a kill cut off was sent again under its key and answered as a replay.
        cuts = [proxy.cut[n] for n in range(len(CUTS))]
        for (matches, _), at in zip(CUTS, cuts, strict=True):
            cut = proxy.posts[at]
            assert matches(cut), cut["path"]
            again = [p for p in proxy.posts[at + 1 :] if p["key"] == cut["key"]]
            assert again and all(_replayed(p) for p in again), (cut, again)
        refused = [p for p in proxy.posts if p["status"] >= 400]
        assert refused == [], refused[:5]

        # What Stripe holds: one invoice per paystream invoice, its two lines once each,
        # paid its total once (one PaymentIntent each).
        invoices = await _list_all(localstripe_url, api_key, "invoices")
        ours: dict[str, list[dict[str, Any]]] = {}
        for inv in invoices:
            ref = (inv.get("metadata") or {}).get("ref", "")
            if ref.split(":")[0] in tenants:
                ours.setdefault(ref, []).append(inv)
        assert len(ours) == 2 * N_INV and {len(v) for v in ours.values()} == {1}, ours.keys()
        for ref, (inv,) in ours.items():
            assert (inv["status"], inv["amount_paid"]) == ("paid", 3700), (ref, inv)
            assert len(inv["lines"]["data"]) == 2, (ref, inv["lines"])
        intents = await _list_all(localstripe_url, api_key, "payment_intents")
        paid_ids = {inv["id"] for (inv,) in ours.values()}
        per_invoice = Counter(pi.get("invoice") for pi in intents if pi.get("invoice") in paid_ids)
        assert set(per_invoice.values()) == {1} and len(per_invoice) == 2 * N_INV, per_invoice
        print(f"{proxy.kills} kill(s) cut posts {cuts} of {len(proxy.posts)}")
