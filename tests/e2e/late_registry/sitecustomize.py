"""Test shim, put on a worker's PYTHONPATH by tests/e2e/test_insights_registry_late.py:
the worker's tenant registry starts reading PAYSTREAM_TEST_REGISTRY_DELAY_SECONDS late,
as a large registry or a slow broker makes it (deterministic, where those are not)."""

import os

_delay = os.environ.get("PAYSTREAM_TEST_REGISTRY_DELAY_SECONDS")
if _delay:
    import asyncio
    import sys
    from typing import Any

    from paystream.tenancy import mirror

    _run = mirror.RegistryMirror.run

    async def _late_run(self: Any, *args: Any, **kwargs: Any) -> Any:
        print(f"test shim: the tenant registry starts {_delay} s late", file=sys.stderr)
        await asyncio.sleep(float(_delay))
        return await _run(self, *args, **kwargs)

    mirror.RegistryMirror.run = _late_run  # type: ignore[method-assign]
