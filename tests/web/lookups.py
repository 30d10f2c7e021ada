"""The dashboard's lookup form, as the browser tests drive it."""

from __future__ import annotations

import re

from playwright.async_api import Locator, Page


async def submit_lookup(page: Page, tenant: str, kind: str, entity_id: str) -> Locator:
    """Fill the lookup form, submit it, wait for its request's answer; the locator of
    the answer shown (`#l-result`)."""
    await page.fill("#l-tenant", tenant)
    await page.select_option("#l-kind", kind)
    await page.fill("#l-id", entity_id)
    async with page.expect_response(re.compile(r"/v1/tenants/")):
        await page.click("#lookup button[type=submit]")
    return page.locator("#l-result")
