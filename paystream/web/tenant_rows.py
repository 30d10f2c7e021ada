"""The registry's tenants as the dashboard's stats show them.

The registry is the whole fleet's. Built per request (each tenant's status, gateway and
limits line), 100,000 tenants took 0.43 s of the worker's event loop, the loop that runs
the payments, and an open dashboard asks every second (review finding). The rows are
built again only when the registry changes, and an answer holds at most
``TENANTS_SHOWN_MAX`` of them: the tenants this worker served first, then the rest by id.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

from paystream.tenancy.models import Tenant

__all__ = ["TENANTS_SHOWN_MAX", "TenantRows"]

TENANTS_SHOWN_MAX = 1000


class TenantRows:
    def __init__(self, max_shown: int = TENANTS_SHOWN_MAX) -> None:
        self.max_shown = max_shown
        self._built_at: tuple[int, int] | None = None
        self._rows: dict[str, dict[str, Any]] = {}
        self._order: list[str] = []

    def shown(
        self, tenants: Mapping[str, Tenant], changes: int, first: Iterable[str]
    ) -> tuple[dict[str, dict[str, Any]], int]:
        """The rows to show, and how many registered tenants they leave out.

        ``changes``: the registry's count of applied records (the rows are rebuilt when
        it or the number of tenants moves); ``first``: tenants to show before others."""
        version = (changes, len(tenants))
        if version != self._built_at:
            self._rows = {key: _row(tenant) for key, tenant in tenants.items()}
            self._order = sorted(self._rows)
            self._built_at = version
        if len(self._rows) <= self.max_shown:
            return self._rows, 0
        shown: dict[str, dict[str, Any]] = {}
        for name in itertools.chain(first, self._order):  # (no 100,000-item tuple each time)
            if len(shown) >= self.max_shown:
                break
            row = self._rows.get(name)
            if row is not None:
                shown.setdefault(name, row)
        return shown, len(self._rows) - len(shown)


def _row(tenant: Tenant) -> dict[str, Any]:
    row: dict[str, Any] = {"status": tenant.status.value, "gateway": tenant.gateway}
    if tenant.limits.enforced:
        row["limits"] = tenant.limits.describe()
    return row
