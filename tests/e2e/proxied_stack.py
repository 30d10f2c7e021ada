"""A broker, Redis and deployment of a test's own, with every broker connection of the
workers and clients through a proxy the test controls: the broker advertises the
proxy's port, and clients connect wherever its metadata says."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from paystream.devstack.kafka import TansuBroker
from paystream.devstack.redis import EmbeddedRedis
from paystream.tenancy.models import Tenant
from tests.e2e.threaded_proxy import ThreadedProxy
from tests.fixtures.pipeline import Deployment

__all__ = ["ProxiedStack", "proxied_stack"]

P = TypeVar("P", bound=ThreadedProxy)


@dataclass
class ProxiedStack(Generic[P]):
    dep: Deployment
    proxy: P
    broker_port: int  # the broker's own port, past the proxy
    redis_url: str


@asynccontextmanager
async def proxied_stack(
    deployment_factory: Any, make_proxy: Callable[[int], P], tenant: str, **env: str
) -> AsyncIterator[ProxiedStack[P]]:
    """``make_proxy(port)`` in front of a broker of the test's own (retargeted to the
    broker's port once it has one); a deployment on it (with the worker environment
    ``env``) and ``tenant`` registered."""
    root = Path(tempfile.mkdtemp(prefix="paystream-proxied-"))
    # The broker's port is its own choice (another if a parallel test's server takes
    # the first: TansuBroker.start), so the proxy learns it once the broker is up.
    proxy = make_proxy(0)
    broker = TansuBroker(root / "tansu.log", advertised_port=proxy.port)
    redis = EmbeddedRedis(root / "redis")
    try:
        proxy.start()
        broker.start()
        proxy.retarget(broker.port)
        redis.start()
        dep: Deployment = await deployment_factory(
            kafka_broker_url=f"kafka://127.0.0.1:{proxy.port}",
            paystream_broker_flavor="tansu",
            redis_url=redis.url,
            **env,
        )
        await dep.add_tenants(Tenant(tenant_id=tenant))
        yield ProxiedStack(dep, proxy, broker.port, redis.url)
    finally:
        proxy.stop()
        redis.stop()
        broker.stop()
        shutil.rmtree(root, ignore_errors=True)
