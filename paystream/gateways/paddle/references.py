"""How paystream names what it makes at Paddle, which keeps no idempotency keys: a tag of
the request's key (and a digest of its parameters) on each object, by which a create sent
again finds what an earlier try made; and, for a tenant with webhooks, paystream's own
payment or refund id, by which an event finds its record.

A transaction and a customer carry them in ``custom_data`` (mapping.REQUEST_KEY,
mapping.PARAMS_KEY; a payment's reference under base.PAYMENT_REF_KEY, as Stripe's
metadata). An adjustment (a refund) has no custom_data: they end its ``reason`` instead,
``<reason> [ps:<request tag>:<params digest>]``, with ``:<tenant tag>:<refund id>`` before
the ``]`` for a webhook tenant (the tenant tag: 4 hex digits of SHA-256 over the tenant
id, as Square's; a collision is harmless, the row's provider id check ignores the other
tenant's events)."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from pydantic import BaseModel

__all__ = [
    "params_digest",
    "read_refund_reason",
    "refund_reason",
    "request_tag",
    "tenant_tag",
]

_REASON_REF = re.compile(
    r"\[ps:([0-9a-f]{16}):([0-9a-f]{12})(?::([0-9a-f]{4}):([A-Za-z0-9_-]{1,64}))?\]\Z"
)
# Paddle's reason is free text shown on the credit note: paystream's own words kept short.
REASON_MAX = 250


def request_tag(idempotency_key: str) -> str:
    """32 hex digits naming the request sent under ``idempotency_key`` (16 in a refund's
    reason: the refunds of one transaction are few)."""
    return hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]


def params_digest(operation: str, req: BaseModel) -> str:
    """12 hex digits of the request's parameters: the same request sent again has the
    same, another under the same key another (refused: idempotency_error)."""
    text = json.dumps([operation, req.model_dump(mode="json")], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def tenant_tag(tenant_id: str) -> str:
    return hashlib.sha256(tenant_id.encode()).hexdigest()[:4]


def refund_reason(reason: str | None, tag: str, params: str, ref: tuple[str, str] | None) -> str:
    """The adjustment's ``reason``: paystream's reason (or ``refund``) and its names."""
    names = f"ps:{tag[:16]}:{params}"
    if ref is not None:
        names += f":{tenant_tag(ref[0])}:{ref[1]}"
    return f"{reason or 'refund'} [{names}]"[-REASON_MAX:]


def read_refund_reason(value: Any, tenant_id: str) -> tuple[str, str, str | None, str | None]:
    """(request tag, params digest, tenant, refund id) an adjustment's reason names: the
    tenant is ``tenant_id`` when its tag is the tenant's, else the tag in parentheses;
    tenant and refund id None without a webhook reference. ("", "", None, None) for a
    reason paystream did not write."""
    found = _REASON_REF.search(value) if isinstance(value, str) else None
    if found is None:
        return "", "", None, None
    tag, params, tenant, refund_id = found.groups()
    if tenant is not None:
        tenant = tenant_id if tenant == tenant_tag(tenant_id) else f"({tenant})"
    return tag, params, tenant, refund_id
