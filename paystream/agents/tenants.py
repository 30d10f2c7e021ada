"""Every worker follows the whole tenant registry (see tenancy/mirror.py for why not a
Faust GlobalTable fed by an agent in the consumer group)."""

from __future__ import annotations

from paystream.app import app, settings
from paystream.tenancy.mirror import RegistryMirror

__all__ = ["mirror_registry", "registry"]

registry = RegistryMirror(settings)


@app.task
async def mirror_registry() -> None:
    """Runs for the worker's life; the command agent waits for ``registry.ready``."""
    await registry.run()
