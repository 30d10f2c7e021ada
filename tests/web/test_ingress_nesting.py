"""The HTTP command ingress under hostile input (review h60h; in process, as
tests/web/test_ingress_review_findings.py runs it: registry, produce and waits faked):
binary-mode data nested past what the JSON encoders take is a 400, not a 500 with a
traceback."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.web.test_ingress_review_findings import _ingress

pytestmark = pytest.mark.asyncio

BINARY = {
    "ce-specversion": "1.0",
    "ce-id": "c1",
    "ce-source": "/t",
    "ce-type": "com.paystream.command.customer.create",
    "ce-tenantid": "acme",
    "Content-Type": "application/json",
}


@pytest.mark.parametrize("depth", [980, 1000])
async def test_deeply_nested_binary_data_is_a_400_not_a_500(
    depth: int, caplog: pytest.LogCaptureFixture
) -> None:
    """orjson reads data nested up to 1,024 deep; its dumps stops at 255 and the SDK's
    stdlib fallback raises RecursionError near 1,000: uncaught, a 500 and a traceback
    logged per request (a 4 KB body, any key holder)."""
    app, produced, key = _ingress()
    body = ('{"metadata":{"a":' + "[" * depth + "]" * depth + "}}").encode()
    async with TestClient(TestServer(app)) as client:
        resp = await client.post(
            "/v1/commands", data=body, headers={**BINARY, "Authorization": f"Bearer {key}"}
        )
        status = resp.status
    assert not produced
    assert status == 400, status
    assert "Traceback" not in caplog.text and "RecursionError" not in caplog.text
