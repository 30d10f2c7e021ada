"""Test shim, put on a worker's PYTHONPATH by tests/e2e/test_insights_registry_late.py:
the worker's tenant registry starts reading SHIM_REGISTRY_DELAY_SECONDS late,
or, once loaded, applies each new record SHIM_REGISTRY_LAG_SECONDS after its
fetch, as a large registry, a slow broker or a busy worker makes it (deterministic,
where those are not)."""

import os

_delay = os.environ.get("SHIM_REGISTRY_DELAY_SECONDS")
_lag = os.environ.get("SHIM_REGISTRY_LAG_SECONDS")
if _delay or _lag:
    import asyncio
    import sys
    from typing import Any

    from paystream.tenancy import mirror

    _run = mirror.RegistryMirror.run
    _loaded: list[Any] = []

    async def _late_run(self: Any, *args: Any, **kwargs: Any) -> Any:
        _loaded.append(self.ready)
        if _delay:
            print(f"test shim: the tenant registry starts {_delay} s late", file=sys.stderr)
            await asyncio.sleep(float(_delay))
        return await _run(self, *args, **kwargs)

    class _LaggingConsumer(mirror.AIOKafkaConsumer):  # type: ignore[misc]
        """The registry reader's consumer only (the module's name for the class)."""

        async def getmany(self, *args: Any, **kwargs: Any) -> Any:
            got = await super().getmany(*args, **kwargs)
            if got and _lag and any(ready.is_set() for ready in _loaded):
                print(f"test shim: registry records applied {_lag} s late", file=sys.stderr)
                await asyncio.sleep(float(_lag))
            return got

    mirror.RegistryMirror.run = _late_run  # type: ignore[method-assign]
    mirror.AIOKafkaConsumer = _LaggingConsumer  # type: ignore[misc]
