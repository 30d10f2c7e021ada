"""What the end-to-end tests of a provider's tenants share (tests/e2e/test_stripe_e2e.py,
test_square_e2e.py, test_square_webhooks.py, test_stripe_webhooks.py): a tenant
registered the documented way, the provider's objects read back, an outcome read."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import pytest_asyncio
from cloudevents.core.v1.event import CloudEvent

from paystream.client import PaystreamClient
from tests.fixtures.pipeline import Deployment

__all__ = ["add_tenant_with_cli", "client", "data", "outcome", "provider_objects"]


def add_tenant_with_cli(
    dep: Deployment,
    tenant: str,
    gateway: str,
    secrets: Mapping[str, str],
    options: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``paystream tenants add <tenant> --gateway <gateway> --secret <name>... --option
    <name>=<value>...``, each secret's value in ``PAYSTREAM_SECRET_<NAME>`` (as
    docs/stripe.md and docs/square.md say), so that it is sealed under the deployment's
    master key and opened only inside the worker."""
    args = ["tenants", "add", tenant, "--gateway", gateway]
    for name in secrets:
        args += ["--secret", name]
    for name, value in (options or {}).items():
        args += ["--option", f"{name}={value}"]
    env = {f"PAYSTREAM_SECRET_{name.upper()}": value for name, value in secrets.items()}
    return subprocess.run(
        [sys.executable, "-m", "paystream", *args],
        env={**os.environ, **dep.env, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def client(deployed: Deployment) -> AsyncIterator[PaystreamClient]:
    """A client of the module's deployment (its ``deployed`` fixture)."""
    async with deployed.client() as c:
        yield c


@contextlib.asynccontextmanager
async def provider_objects(
    base_url: str, token: str, version: str
) -> AsyncIterator[Callable[[str, str], Awaitable[dict[str, Any]]]]:
    """``await get("payments", id)`` → the object as the provider at ``base_url``
    (its API ``version``: ``v1`` at Stripe, ``v2`` at Square, ``""`` at Paddle, whose
    paths carry none) has it for ``token``."""
    auth = {"Authorization": f"Bearer {token}"}
    prefix = f"/{version}" if version else ""
    async with aiohttp.ClientSession(base_url=base_url, headers=auth) as session:

        async def get(resource: str, object_id: str) -> dict[str, Any]:
            async with session.get(f"{prefix}/{resource}/{object_id}") as resp:
                assert resp.status == 200, f"{resource}/{object_id}: {await resp.text()}"
                return dict(await resp.json())

        yield get


def data(event: CloudEvent) -> dict[str, Any]:
    out = event.get_data()
    assert isinstance(out, dict), out
    return out


def outcome(event: CloudEvent) -> str:
    """The outcome's type without its prefix (``payment.succeeded``)."""
    return str(event.get_type()).removeprefix("com.paystream.")
