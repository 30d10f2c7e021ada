"""The HTTP command ingress in-process, over a registry the test fills: no broker, no
worker. What it produces is kept in a list instead."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp.web

from paystream.settings import load_settings
from paystream.tenancy.mirror import RegistryMirror
from paystream.tenancy.models import Tenant
from paystream.web.ingress import CommandIngress
from paystream.web.route_errors import json_route_errors

__all__ = ["NoWaits", "ingress_app"]


class NoWaits:
    """No reader of the events topic: a `Prefer: wait` gets its 202."""

    closed = False

    async def reader(self, within: float) -> None:
        return None


def ingress_app(
    *tenants: Tenant,
    produce: Callable[[Any, str], Awaitable[None]] | None = None,
    **settings: Any,
) -> tuple[aiohttp.web.Application, list[tuple[str, Any]], RegistryMirror]:
    """``POST /v1/commands`` for ``tenants``: (the app, (tenant, record) for each command
    produced, the registry). ``produce``: instead of keeping them."""
    config = load_settings(kafka_broker_url="kafka://127.0.0.1:9", **settings)
    registry = RegistryMirror(config)
    for tenant in tenants:
        registry.tenants[tenant.tenant_id] = tenant
    registry.ready.set()
    produced: list[tuple[str, Any]] = []

    async def kept(rec: Any, tenant: str) -> None:
        produced.append((tenant, rec))

    ingress = CommandIngress(config, registry, produce or kept, NoWaits())
    app = aiohttp.web.Application(middlewares=[json_route_errors])
    app.router.add_post("/v1/commands", ingress.handle, expect_handler=ingress.expect)
    return app, produced, registry
