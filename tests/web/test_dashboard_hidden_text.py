"""The dashboard's fixes of review h60f as review h60g probed them, in Debian chromium
against a real worker: every character drawn as nothing or reordering text is shown as
its escape; a selection left in a table pauses it for 10 s at most, and the status says
so; repeated lookups show the latest answer; a lookup under no tenant's id is a 404."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, expect

from paystream.devstack.worker import WorkerProcess
from paystream.tenancy.models import Tenant
from tests.fixtures.browser import fresh_page
from tests.fixtures.pipeline import Deployment
from tests.web.conftest import wait_for_stats
from tests.web.lookups import submit_lookup

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

WAIT = 15_000
# Characters a browser draws as nothing (or that reorder what follows): each appended to
# "acme" in a command's tenant id.
HIDDEN = {
    "U+180E": "\u180e",
    "U+2028": "\u2028",
    "U+2029": "\u2029",
    "U+034F": "\u034f",
    "U+E0041 tag": "\U000e0041",
    "U+FE0F VS16": "\ufe0f",
    "U+00AD": "\u00ad",
    "U+206A": "\u206a",
}
ALM_NAME = "\u061c555-0100"  # ARABIC LETTER MARK: drawn "0100-555"


@dataclass
class W:
    dep: Deployment
    worker: WorkerProcess
    usd: str


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def w(deployment_factory: Any) -> AsyncIterator[W]:
    dep: Deployment = await deployment_factory()
    await dep.add_tenants(Tenant(tenant_id="acme"))
    with dep.worker() as worker:
        await asyncio.to_thread(worker.wait_ready, ["acme"], partitions=dep.settings.partitions)
        async with dep.client() as client:
            usd, *_ = await asyncio.gather(
                client.command(
                    "payment.create",
                    "acme",
                    {"amount": 2500, "currency": "USD", "payment_method_token": "pm_card_visa"},
                ),
                client.command(
                    "customer.create", "acme", {"name": ALM_NAME, "customer_id": "cus_alm"}
                ),
                *(client.command("customer.create", "acme" + c, {}) for c in HIDDEN.values()),
            )
        n = 2 + len(HIDDEN)
        await wait_for_stats(worker, lambda s: s["activity"]["total"] >= n)
        yield W(dep, worker, str(usd.get_data()["entity_id"]))  # type: ignore[index]


async def open_dashboard(page: Page, w: W) -> None:
    await page.goto(w.worker.base_url + "/")
    await expect(page.locator("#status")).to_have_text("live", timeout=WAIT)
    await expect(page.locator("#recent tbody tr").nth(1 + len(HIDDEN))).to_be_visible(timeout=WAIT)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def tenant_cells(browser: Browser, w: W) -> list[dict[str, Any]]:
    """Each row of the Tenants table as drawn: its first cell's text and width, and its
    status (one page load for every case below: they only read it)."""
    async with fresh_page(browser) as page:
        await open_dashboard(page, w)
        rows: list[dict[str, Any]] = await page.evaluate(
            """() => [...document.querySelectorAll('#tenants tbody tr')].map((tr) => {
                 const td = tr.cells[0]; const r = document.createRange(); r.selectNodeContents(td);
                 return {text: td.textContent, width: r.getBoundingClientRect().width,
                         status: tr.cells[1].textContent}; })"""
        )
        return rows


@pytest.mark.parametrize("name", list(HIDDEN))
async def test_an_invisible_character_does_not_make_a_tenant_read_acme(
    tenant_cells: list[dict[str, Any]], name: str
) -> None:
    """A command naming tenant "acme"+X (rejected unknown_tenant) is listed in Tenants:
    drawn exactly as the registered "acme" (same width), status "unknown"."""
    c = HIDDEN[name]
    rows = tenant_cells
    (acme,) = [r for r in rows if r["text"] == "acme"]
    units = c.encode("utf-16-be")
    escaped = "acme" + "".join(
        f"\\u{int.from_bytes(units[i : i + 2]):04X}" for i in range(0, len(units), 2)
    )
    (spoof,) = [r for r in rows if r["text"] in ("acme" + c, escaped)]
    assert c not in spoof["text"] and spoof["width"] != acme["width"], (
        f"tenant 'acme'+{name} is drawn as 'acme' ({spoof['width']} px, status "
        f"{spoof['status']}) next to the registered acme ({acme['width']} px)"
    )


async def test_an_arabic_letter_mark_does_not_reorder_a_lookup(page: Page, w: W) -> None:
    """A customer named "\\u061c555-0100" (ShortText): the lookup's JSON line is drawn
    "0100-555", as U+202E reversed one before 4252326."""
    await open_dashboard(page, w)
    result = await submit_lookup(page, "acme", "customers", "cus_alm")
    await expect(result).to_contain_text("0100", timeout=WAIT)
    left_to_right = await result.evaluate(
        """(pre) => { const n = pre.firstChild; const i = n.data.indexOf('555-0100');
             const x = (k) => { const r = document.createRange(); r.setStart(n, k);
               r.setEnd(n, k + 1); return r.getBoundingClientRect().left; };
             return x(i) < x(i + 4); }"""
    )
    assert left_to_right, "the customer's number 555-0100 is drawn as 0100-555"


AFTER = {
    "clicks the id field": lambda page: page.click("#l-id"),
    "tabs to the id field": lambda page: page.focus("#l-id"),
    "clicks the kind menu": lambda page: page.click("#l-kind"),
    "clicks Find": lambda page: page.click("#lookup button[type=submit]"),
    "leaves it selected (copied, went to another window)": lambda page: page.keyboard.press(
        "Control+c"
    ),
}


# The longest a table holding selected text may wait (the page's own bound is 10 s).
PAUSE_BOUND_MS = 15_000


@pytest.mark.parametrize("after", list(AFTER))
async def test_a_selection_left_in_a_table_does_not_freeze_it_while_live(
    page: Page, w: W, after: str
) -> None:
    """Double-click an id in Recent outcomes to copy it, then click the lookup's id field
    to paste it (or leave the page open): new outcomes arrive, the Commands tile counts
    them, the status says "live", and Recent outcomes never shows them.

    The page's clock is Playwright's: it runs on as a real one does, and the 10 s a
    selection may hold a table are jumped over (not waited out), then the rest of the
    bound given in real time."""
    await page.clock.install()
    await open_dashboard(page, w)
    cell = page.locator("#recent tbody td:nth-child(5)").filter(has_text=w.usd)
    await cell.dblclick()
    await AFTER[after](page)
    sel = await page.evaluate(
        "String(getSelection()) + ' | collapsed=' + getSelection().isCollapsed"
    )
    before = await page.locator("#recent tbody tr").count()
    assert int(await page.locator("#t-total").text_content() or 0) == before
    async with w.dep.client() as client:
        await client.command("customer.create", "acme", {})
    await expect(page.locator("#t-total")).to_have_text(str(before + 1), timeout=WAIT)
    rows = page.locator("#recent tbody tr")
    jumped = 10_000
    await page.clock.fast_forward(jumped)
    try:
        await expect(rows).to_have_count(before + 1, timeout=PAUSE_BOUND_MS - jumped)
    except AssertionError:
        status = await page.locator("#status").text_content()
        shown = await rows.count()
        raise AssertionError(
            f"Commands tile {before + 1}, Recent outcomes still {shown} rows "
            f"{PAUSE_BOUND_MS // 1000} s later (page time), status {status!r} "
            f"(selection: {sel!r})"
        ) from None


async def test_enter_pressed_repeatedly_shows_the_answer(page: Page, w: W) -> None:
    await open_dashboard(page, w)
    await page.fill("#l-tenant", "acme")
    await page.select_option("#l-kind", "payments")
    await page.fill("#l-id", w.usd)
    for _ in range(5):
        await page.press("#l-id", "Enter")
    await expect(page.locator("#l-result")).to_contain_text('"status": "succeeded"', timeout=WAIT)
    await page.wait_for_timeout(1_000)
    await expect(page.locator("#l-result")).to_contain_text('"status": "succeeded"')


async def test_tenant_shape_guard(w: W) -> None:
    base = w.worker.base_url
    async with aiohttp.ClientSession() as s:

        async def get(path: str) -> tuple[int, Any]:
            async with s.get(base + path) as r:
                return r.status, await r.json()

        assert (await get(f"/v1/tenants/%61cme/payments/{w.usd}"))[0] == 200
        for path in (
            "/v1/tenants/ACME/payments/x",
            "/v1/tenants/acme%3Ax/commands/k",
            "/v1/tenants/acme%0A/payments/x",
            "/v1/tenants/-acme/customers/x",
        ):
            status, body = await get(path)
            assert status == 404 and body["error"] == "not_found", (path, status, body)
        status, body = await get("/v1/tenants/ACME/widgets/x")
        print("bad tenant, bad kind:", status, body)
