"""The tenant record as it lives on the compacted `paystream.tenants` topic."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, StringConstraints

from paystream.tenancy.limits import TenantLimits

__all__ = ["TENANT_ID_PATTERN", "Tenant", "TenantStatus"]

TENANT_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
TenantId = Annotated[str, StringConstraints(pattern=TENANT_ID_PATTERN)]


class TenantStatus(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"


class Tenant(BaseModel):
    """A tenant. ``secrets`` hold ciphertext only (see tenancy.secrets); never plaintext."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tenant_id: TenantId
    name: str = ""
    status: TenantStatus = TenantStatus.ACTIVE
    gateway: str = "simulator"
    gateway_options: dict[str, Any] = {}
    secrets: dict[str, str] = {}  # name → "v1:<wrapped ciphertext>"
    connected_account: str | None = None
    limits: TenantLimits = TenantLimits()  # rate limit and payment quotas (tenancy/limits.py)

    def redacted(self) -> dict[str, Any]:
        """For display and logs: secret names only."""
        out = self.model_dump(mode="json")
        out["secrets"] = sorted(self.secrets)
        return out
