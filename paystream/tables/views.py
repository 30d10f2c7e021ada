"""Read views over the tables: what the dashboard and the JSON endpoints serve.

Views read this worker's local table partitions only; with several workers each serves
the tenants whose partitions it owns (the dashboard lists the owner in `partitions`).
"""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from paystream.tenancy.models import UNREGISTERED

# Distinct tenant ids that are not registered the activity counts keep by name.
MAX_UNREGISTERED_SHOWN = 100

__all__ = ["ActivityLog", "entity_view", "tenant_summaries"]


@dataclass
class ActivityLog:
    """Recent outcomes and running counts, kept by the command agent for the dashboard."""

    recent: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=50))
    by_outcome: Counter[str] = field(default_factory=Counter)
    by_tenant: Counter[str] = field(default_factory=Counter)
    dead_letters: int = 0
    parked: int = 0
    unregistered_shown: int = 0  # distinct unregistered tenant ids counted by name

    def record(self, entry: dict[str, Any]) -> None:
        self.recent.appendleft(entry)
        self.by_outcome[entry["outcome"]] += 1
        tenant = entry["tenant"]
        if not entry.get("registered", True) and tenant not in self.by_tenant:
            # A mistyped tenant id is worth showing by name; a flood of made-up ones
            # must not grow the counts without bound.
            if self.unregistered_shown >= MAX_UNREGISTERED_SHOWN:
                tenant = UNREGISTERED
            else:
                self.unregistered_shown += 1
        self.by_tenant[tenant] += 1

    def as_json(self) -> dict[str, Any]:
        return {
            "recent": list(self.recent),
            "by_outcome": dict(self.by_outcome),
            "by_tenant": dict(self.by_tenant),
            "dead_letters": self.dead_letters,
            "parked": self.parked,
            "total": sum(self.by_outcome.values()),
        }


def tenant_summaries(payments: Mapping[str, Any], limit: int = 100_000) -> dict[str, Any]:
    """Per tenant: payments by status and captured/refunded volume per currency."""
    out: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"payments": Counter(), "captured": Counter(), "refunded": Counter()}
    )
    for n, (key, raw) in enumerate(payments.items()):
        if n >= limit or raw is None:
            break
        tenant = str(key).split(":", 1)[0]
        row = out[tenant]
        row["payments"][raw["status"]] += 1
        row["captured"][raw["currency"]] += int(raw.get("amount_captured", 0))
        row["refunded"][raw["currency"]] += int(raw.get("amount_refunded", 0))
    return {t: {k: dict(v) for k, v in row.items()} for t, row in out.items()}


def entity_view(table: Mapping[str, Any], tenant_id: str, entity_id: str) -> dict[str, Any] | None:
    """One entity of one tenant, without bookkeeping; another tenant's id is simply absent."""
    raw = table.get(f"{tenant_id}:{entity_id}")
    if raw is None:
        return None
    return {k: v for k, v in raw.items() if k != "applied"}
