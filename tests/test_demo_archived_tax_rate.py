"""A demo rate archived (by an operator, in the provider's dashboard then refreshed, or by
a test) is not handed to the flows when the demo starts again: the restart's
`tax_rate.create` is answered `tax_rate.created` from the rate's record whatever its
status, and every taxed flow of that tenant (10% of its payments, 30% of its subscribers)
was refused for the whole run (review h74q finding 3). The demo makes the rate anew under
the next id (`-2`, `-3`, ...), a bounded number of times, then stops taxing the tenant by
it, saying so in its counts. Through the real command processor on Redis, as the demo's
other tax tests."""

from __future__ import annotations

from collections import Counter
from typing import Any

from paystream import demo
from paystream.cli import demo as demo_cli
from paystream.client import build_command
from tests.agents.conftest import running_harness
from tests.agents.harness import ThroughTheProcessor


async def _archive(client: Any, tenant: str, rid: str) -> None:
    archived = await client.send(
        build_command("tax_rate.archive", tenant, {"tax_rate_id": rid}), timeout=5
    )
    assert archived.get_type() == "com.paystream.tax_rate.archived"


async def test_a_restarted_demo_makes_an_archived_rate_anew(redis_url: str) -> None:
    async with running_harness(redis_url) as h:
        acme = h.add_tenant()
        rates = {acme: demo_cli.DEMO_TAX_RATES["acme"]}
        client: Any = ThroughTheProcessor(h)
        assert await demo.make_tax_rates(client, rates, Counter()) == {acme: ["demo-vat"]}
        await _archive(client, acme, "demo-vat")
        assert h.tables.tax_rates[f"{acme}:demo-vat"]["status"] == "archived"
        # The demo started again on the same stack: an archived rate taxes nothing new,
        # so the flows get a new one, of the same terms.
        again: Counter[str] = Counter()
        made = await demo.make_tax_rates(client, rates, again)
        assert made == {acme: ["demo-vat-2"]}, (made, again)
        assert again == Counter({"tax_rate.created": 2, demo.RATE_PASSED_OVER: 1}), again
        remade = h.tables.tax_rates[f"{acme}:demo-vat-2"]
        assert (remade["status"], remade["percentage"], remade["inclusive"]) == (
            "active",
            "20",
            False,
        )
        # And once more: the archived one passed over again, the new one found active,
        # nothing made.
        third: Counter[str] = Counter()
        assert await demo.make_tax_rates(client, rates, third) == made
        assert third == again and len(h.tables.tax_rates) == 2, third


async def test_a_demo_rate_archived_every_time_stops_taxing_the_tenant(redis_url: str) -> None:
    async with running_harness(redis_url) as h:
        acme = h.add_tenant()
        rates = {acme: demo_cli.DEMO_TAX_RATES["acme"]}
        client: Any = ThroughTheProcessor(h)
        ids = ["demo-vat", *(f"demo-vat-{n}" for n in range(2, demo.RATE_REMAKES + 2))]
        for n, rid in enumerate(ids):
            made = await demo.make_tax_rates(client, rates, Counter())
            assert made == {acme: [rid]}, (n, made)
            await _archive(client, acme, rid)
        seen: Counter[str] = Counter()
        assert await demo.make_tax_rates(client, rates, seen) == {acme: []}
        assert seen[demo.RATE_NOT_TAXED_BY] == 1, seen
        assert demo.RATE_NOT_TAXED_BY in demo.demo_progress(
            Counter({**{str(i): 9 for i in range(9)}, demo.RATE_NOT_TAXED_BY: 1})
        )
        assert len(h.tables.tax_rates) == demo.RATE_REMAKES + 1
