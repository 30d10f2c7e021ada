"""`tenants add` warns of a Stripe tenant given a webhook signing secret whose narrowed
capabilities leave out `webhooks` (review h60a): paystream then tags none of its
payments or refunds with its ids, and every webhook of the tenant is passed over as one
paystream did not make. docs/stripe.md's example of narrowing keeps `webhooks`."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from paystream.cli import cli
from paystream.gateways.stripe.gateway import STRIPE_CAPABILITIES

WARNING = "its capabilities leave out webhooks"
SECRETS = {"PAYSTREAM_SECRET_API_KEY": "sk_test_abc", "PAYSTREAM_SECRET_WEBHOOK_SECRET": "whsec_x"}


@pytest.mark.asyncio(loop_scope="session")
async def test_a_webhook_secret_beside_capabilities_without_webhooks_is_warned_of(
    deployment_factory: Any,
) -> None:
    dep = await deployment_factory()
    env = {**dep.env, **SECRETS, "PAYSTREAM_MASTER_KEY": base64.b64encode(os.urandom(32)).decode()}
    narrowed = '["customers","payments","refunds"]'
    cases = [
        ("nowebhooks", ["--option", f"capabilities={narrowed}"], True),
        ("withwebhooks", ["--option", 'capabilities=["payments","webhooks"]'], False),
        ("alldefault", [], False),
    ]
    for tenant, options, warned in cases:
        args = ["tenants", "add", tenant, "--gateway", "stripe", *options]
        args += ["--secret", "api_key", "--secret", "webhook_secret"]
        result = await asyncio.to_thread(CliRunner().invoke, cli, args, env=env)
        assert result.exit_code == 0, (tenant, result.output, result.exception)
        assert (WARNING in result.output) is warned, (tenant, result.output)
    # No secret, no warning: nothing to receive webhooks with.
    args = ["tenants", "add", "nosecret", "--gateway", "stripe", "--secret", "api_key",
            "--option", f"capabilities={narrowed}"]  # fmt: skip
    result = await asyncio.to_thread(CliRunner().invoke, cli, args, env=env)
    assert result.exit_code == 0 and WARNING not in result.output, result.output


def test_the_stripe_doc_lists_the_gateway_s_default_capabilities_and_keeps_webhooks() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "stripe.md").read_text()
    row = next(line for line in doc.splitlines() if line.startswith("| `capabilities="))
    example = json.loads(re.search(r"capabilities=(\[[^\]]*\])", row).group(1))  # type: ignore[union-attr]
    defaults = row.split("The default is all of:")[1].split(".")[0]
    assert set(re.findall(r"`([a-z_]+)`", defaults)) == {c.value for c in STRIPE_CAPABILITIES}
    assert "webhooks" in example
