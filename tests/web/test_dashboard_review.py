"""The operators' dashboard in a real browser (Debian chromium) against a real worker with
PAYSTREAM_WEB_TOKEN set, as review h60f probed it: a run-out token is not an unreachable
worker; an id stays selectable to copy; only the latest lookup's answer is shown; bidi
and invisible characters are shown as escapes, never drawn (a tenant "\u202eemca" read
"acme"); a lookup under no tenant's id finds nothing; hostile strings stay text; a
thousand tenants render quickly; money in each currency's digits."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import Page, Route, expect

from paystream.devstack.worker import WorkerProcess
from paystream.tenancy.models import Tenant
from tests.fixtures.pipeline import Deployment
from tests.web.conftest import wait_for_stats
from tests.web.lookups import submit_lookup

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

WAIT = 15_000
TOKEN = "h60f-s3cret-token"
BIDI_TENANT = "\u202eemca"  # shown right-to-left: reads "acme"


@dataclass
class Tok:
    dep: Deployment
    worker: WorkerProcess
    usd: str
    jpy: str
    kwd: str


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def tok(deployment_factory: Any) -> AsyncIterator[Tok]:
    dep: Deployment = await deployment_factory(paystream_web_token=TOKEN)
    await dep.add_tenants(Tenant(tenant_id="acme"), Tenant(tenant_id="globex"))
    with dep.worker() as worker:
        await asyncio.to_thread(
            worker.wait_ready, ["acme", "globex"], partitions=dep.settings.partitions
        )
        async with dep.client() as client:
            usd, jpy, kwd, _, cus, _ = await asyncio.gather(
                *(
                    client.command(
                        "payment.create",
                        "acme",
                        {
                            "amount": amount,
                            "currency": currency,
                            "payment_method_token": "pm_card_visa",
                        },
                    )
                    for amount, currency in ((2500, "USD"), (500, "JPY"), (1230, "KWD"))
                ),
                client.command("customer.create", BIDI_TENANT, {}),
                client.command(
                    "customer.create",
                    "acme",
                    {"name": "\u202emoc.knab@ecila", "customer_id": "cus_bidi"},
                ),
                client.command("customer.create", "globex", {}, idempotency_key="x:k"),
            )
            assert cus.get_type().endswith("customer.created"), cus.get_data()
        await wait_for_stats(worker, lambda s: s["activity"]["total"] >= 6)
        for e in (usd, jpy, kwd):
            assert "entity_id" in e.get_data(), (e.get_type(), e.get_data())
        yield Tok(
            dep,
            worker,
            *(str(e.get_data()["entity_id"]) for e in (usd, jpy, kwd)),  # type: ignore[index]
        )


async def open_dashboard(page: Page, tok: Tok) -> None:
    await page.goto(tok.worker.base_url + "/?token=" + TOKEN)
    await expect(page.locator("#status")).to_have_text("live", timeout=WAIT)
    await expect(page.locator("#recent tbody tr")).to_have_count(6, timeout=WAIT)


async def test_cookie_flags_csp_and_currencies(page: Page, tok: Tok, js_errors: list[str]) -> None:
    """The cookie's flags, the page's CSP, JPY/KWD digits."""
    response = await page.goto(tok.worker.base_url + "/?token=" + TOKEN)
    assert response is not None
    csp = response.headers["content-security-policy"]
    assert "unsafe-inline" not in csp and "script-src 'sha256-" in csp
    assert page.url == tok.worker.base_url + "/"
    (cookie,) = await page.context.cookies()
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["secure"]) == (True, "Strict", False)
    assert 12 * 3600 - 60 < cookie["expires"] - time.time() <= 12 * 3600
    await expect(page.locator("#status")).to_have_text("live", timeout=WAIT)
    acme = page.locator('#tenants tr[data-tenant="acme"] td')
    await expect(acme.nth(5)).to_have_text("25.00 USD, 500 JPY, 1.230 KWD", timeout=WAIT)
    amounts = page.locator("#recent tbody td:nth-child(6)")
    await expect(amounts.filter(has_text="JPY")).to_have_text("500 JPY")
    await expect(amounts.filter(has_text="KWD")).to_have_text("1.230 KWD")
    assert js_errors == []


async def test_an_expired_token_is_not_shown_as_an_unreachable_worker(page: Page, tok: Tok) -> None:
    """The cookie lasts 12 h: a dashboard left open overnight then gets 401 from a worker
    that is up, and says "worker unreachable" (an operator restarts healthy workers)."""
    await open_dashboard(page, tok)
    await page.context.clear_cookies()  # what the browser does once Max-Age passes
    # Until the page has polled without its cookie (each poll shows what it was told).
    await expect(page.locator("#status")).not_to_have_text(re.compile(r"^live"), timeout=WAIT)
    status = await page.locator("#status").text_content()
    stats = await page.evaluate("fetch('/v1/stats').then((r) => r.status)")
    assert stats == 401
    assert status != "worker unreachable", "a 401 (token expired) shown as an unreachable worker"
    assert status is not None and "token expired" in status, status


async def test_an_operator_can_select_an_id_to_copy_it(page: Page, tok: Tok) -> None:
    """Double-click an entity id in Recent outcomes to copy it into the lookup: the page
    rebuilds every table each second (innerHTML), and the selection goes with it."""
    await open_dashboard(page, tok)
    cell = page.locator("#recent tbody td:nth-child(5)").filter(has_text=tok.usd)
    await cell.dblclick()
    assert await page.evaluate("getSelection().toString()") == tok.usd
    await page.wait_for_timeout(2_500)  # two polls, nothing changed on the worker
    assert await page.evaluate("getSelection().toString()") == tok.usd, "selection lost"


async def test_a_slow_lookup_does_not_overwrite_the_next_ones_answer(page: Page, tok: Tok) -> None:
    """Look up acme's payment (slow: forwarded to a busy owner), then globex's: the page
    shows acme's answer last, under a form asking for globex's."""
    await open_dashboard(page, tok)

    async def slow(route: Route) -> None:
        await asyncio.sleep(2)
        await route.continue_()

    await page.route("**/v1/tenants/acme/**", slow)
    result = page.locator("#l-result")
    await page.fill("#l-tenant", "acme")
    await page.select_option("#l-kind", "payments")
    await page.fill("#l-id", tok.usd)
    await page.click("#lookup button[type=submit]")
    await page.fill("#l-tenant", "globex")
    async with page.expect_response(re.compile(r"/v1/tenants/globex/")):
        await page.click("#lookup button[type=submit]")
    await expect(result).to_have_text(re.compile(r"^HTTP 404\n"), timeout=WAIT)
    await page.wait_for_timeout(3_000)  # acme's answer arrives
    assert await page.input_value("#l-tenant") == "globex"
    shown = await result.text_content() or ""
    assert shown.startswith("HTTP 404"), f"globex's lookup now shows acme's payment: {shown[:80]!r}"


async def test_a_bidi_tenant_id_does_not_read_as_another_tenant(page: Page, tok: Tok) -> None:
    """A command naming tenant "\\u202eemca" (no control character: accepted, rejected
    unknown_tenant, listed by name) is shown as "acme" in Tenants and Recent outcomes."""
    await open_dashboard(page, tok)
    for cell in (
        page.locator("#tenants tbody td:first-child").filter(has_text="emca"),
        page.locator("#recent tbody td:nth-child(2)").filter(has_text="emca"),
    ):
        await expect(cell).to_have_count(1, timeout=WAIT)
        # The logical first letter "e" (index 1) is drawn left of the last "a" (index 4)?
        left_to_right = await cell.evaluate(
            """(td) => { const n = td.firstChild; const x = (i) => {
                 const r = document.createRange(); r.setStart(n, i); r.setEnd(n, i + 1);
                 return r.getBoundingClientRect().left; };
               return x(1) < x(4); }"""
        )
        shown = await cell.inner_text()
        assert left_to_right, f"tenant {shown!r} is drawn reversed: it reads 'acme'"


async def test_a_lookup_under_a_tenant_id_with_a_colon_finds_nothing(page: Page, tok: Tok) -> None:
    """No tenant id holds ":" (TENANT_ID_PATTERN); a lookup under "globex:x" reads
    globex's table key "globex:x:k" and shows globex's command as tenant "globex:x"."""
    await open_dashboard(page, tok)
    result = await submit_lookup(page, "globex:x", "commands", "k")
    await expect(result).not_to_have_text(re.compile(r"^(…)?$"), timeout=WAIT)
    shown = await result.text_content() or ""
    assert shown.startswith("HTTP 404"), shown


XSS = [
    '<img src=x onerror="window.__pwned=1">',
    '"><svg onload="window.__pwned=1">',
    "'><script>window.__pwned=1</script>",
    "${window.__pwned=1}",
    "</td></tr></tbody></table><img src=x onerror=window.__pwned=1>",
]


async def test_hostile_strings_in_every_stats_field_are_text(
    page: Page, tok: Tok, js_errors: list[str]
) -> None:
    """Every string of /v1/stats the page shows, rewritten on the wire: text, never markup."""

    async def hostile(route: Route) -> None:
        response = await route.fetch()
        s = json.loads(await response.text())
        for i, x in enumerate(XSS):
            s["tenants"][x] = {"status": x, "gateway": x, "limits": x}
            s["activity"]["by_tenant"][x + str(i)] = 1
            s["summaries"][x] = {"payments": {x: 1}, "captured": {x: 5}, "refunded": {x: x}}
            s["activity"]["recent"].append(
                {
                    "time": x,
                    "tenant": x,
                    "command": x,
                    "outcome": x,
                    "entity_id": x,
                    "amount": x,
                    "currency": x,
                    "reason": x,
                    "resent": x,
                }
            )
        s["minor_units"]["<b>"] = 2
        s["insights"] = {
            "alerts": [
                {
                    "window_start": x,
                    "tenant_id": x,
                    "rule": x,
                    "subject_type": x,
                    "subject": x,
                    "observed": x,
                    "threshold": x,
                }
                for x in XSS
            ],
            "windows": {
                x: {
                    "window_start": x,
                    "window_end": x,
                    "events": x,
                    "money": {x: {"captured": x, "refunded": 1}},
                }
                for x in XSS
            },
        }
        await route.fulfill(response=response, body=json.dumps(s))

    await page.route("**/v1/stats", hostile)
    await page.goto(tok.worker.base_url + "/?token=" + TOKEN)
    await expect(page.locator("#status")).to_have_text("live", timeout=WAIT)
    await expect(page.locator("#recent tbody tr")).to_have_count(6 + len(XSS), timeout=WAIT)
    await expect(page.locator("#windows tbody tr")).to_have_count(len(XSS))
    await page.wait_for_timeout(1_500)
    assert await page.evaluate("window.__pwned") is None
    assert await page.locator("main img, main svg, main script").count() == 0
    assert await page.locator("#recent tbody tr:first-child td").count() == 7
    assert js_errors == []


async def test_a_thousand_tenants_render(page: Page, tok: Tok) -> None:
    """1,000 registry rows (the cap) and 100 unregistered tenants: all listed, the rest
    counted. (Not timed: ~70 ms a refresh in the review's browser.)"""

    async def many(route: Route) -> None:
        response = await route.fetch()
        s = json.loads(await response.text())
        for i in range(1000):
            s["tenants"][f"tenant-{i:04d}-" + "x" * 40] = {
                "status": "active",
                "gateway": "stripe",
                "limits": "1000/s (burst 1000) · ≤ 500.00 EUR per payment",
            }
        for i in range(100):
            s["activity"]["by_tenant"][f"typo-{i}"] = 3
        s["tenants_omitted"] = 99_000
        await route.fulfill(response=response, body=json.dumps(s))

    await page.route("**/v1/stats", many)
    await open_dashboard(page, tok)
    await expect(page.locator("#tenants tbody tr")).to_have_count(1103, timeout=WAIT)
    await expect(page.locator("#tenants-omitted")).to_contain_text("99000 more")


async def test_a_bidi_customer_name_in_a_lookup_is_shown_escaped(page: Page, tok: Tok) -> None:
    """A customer's name (ShortText: anything but length) with U+202E: drawn, the lookup's
    JSON line read reversed from it ("alice@bank.com")."""
    await open_dashboard(page, tok)
    result = await submit_lookup(page, "acme", "customers", "cus_bidi")
    await expect(result).to_contain_text("ecila", timeout=WAIT)
    shown = await result.text_content() or ""
    # Shown as its escape (the same JSON string, written out), never drawn.
    assert "\u202e" not in shown and '"\\u202Emoc.knab@ecila"' in shown, shown
