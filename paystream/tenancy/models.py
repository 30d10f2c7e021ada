"""The tenant record as it lives on the compacted `paystream.tenants` topic."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from paystream.tenancy.ingress_keys import KEY_ID_PATTERN, MAX_KEYS_PER_TENANT, IngressKey
from paystream.tenancy.limits import TenantLimits

__all__ = [
    "TENANT_ID_PATTERN",
    "UNREGISTERED",
    "Tenant",
    "TenantChanges",
    "TenantStatus",
    "register_or_update",
]

TENANT_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
# Where a tenant id is a label (metrics, dashboard counts), commands naming no
# registered tenant share this one: made-up ids must not grow them without bound.
UNREGISTERED = "(unregistered)"
TenantId = Annotated[str, StringConstraints(pattern=TENANT_ID_PATTERN)]
KeyId = Annotated[str, StringConstraints(pattern=KEY_ID_PATTERN)]


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
    # Keys for the HTTP command ingress, by id: digests only (tenancy/ingress_keys.py).
    # Not the provider's: a change of gateway keeps them.
    ingress_keys: Annotated[dict[KeyId, IngressKey], Field(max_length=MAX_KEYS_PER_TENANT)] = {}

    @model_validator(mode="after")
    def _text_is_unicode(self) -> Tenant:
        """A lone surrogate (an undecodable byte in a shell argument) would be written
        escaped, and then refused by every reader: the tenant could never change again."""
        bad = _invalid_text(self.model_dump())
        if bad is not None:
            raise ValueError(f"{bad} is not valid Unicode (an undecodable byte?)")
        return self

    def redacted(self) -> dict[str, Any]:
        """For display and logs: secret names only."""
        out = self.model_dump(mode="json")
        out["secrets"] = sorted(self.secrets)
        out["ingress_keys"] = sorted(self.ingress_keys)
        return out


def _invalid_text(value: Any, where: str = "tenant") -> str | None:
    """Where in ``value`` a string is not encodable as UTF-8, if anywhere."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _invalid_text(key, f"{where} key") or _invalid_text(item, f"{where}.{key}")
            if found is not None:
                return found.encode("utf-8", "backslashreplace").decode()
    elif isinstance(value, list | tuple):
        for item in value:
            found = _invalid_text(item, where)
            if found is not None:
                return found
    return None


@dataclass(frozen=True)
class TenantChanges:
    """What an operator asked to set; ``None`` (or nothing given) leaves a field alone."""

    name: str | None = None
    gateway: str | None = None
    gateway_options: dict[str, Any] | None = None
    secrets: dict[str, str] | None = None  # sealed; added to (or replacing) those held
    connected_account: str | None = None
    limits: TenantLimits | None = None


def register_or_update(tenant_id: str, known: Tenant | None, changes: TenantChanges) -> Tenant:
    """The record after ``changes``: a new tenant, or ``known`` with only those fields changed.

    An update never touches the status (suspend/activate do) and never falls back to a
    default for what was not given: re-running a registration to rename a Stripe tenant
    must not move its payments to the simulator, drop its key or re-activate it. A change
    of gateway starts that gateway's options, secrets and connected account afresh: the
    old provider's settings mean nothing to the new one.
    """
    if known is None:
        return Tenant(
            tenant_id=tenant_id,
            name=changes.name or tenant_id,
            gateway=changes.gateway or "simulator",
            gateway_options=changes.gateway_options or {},
            secrets=changes.secrets or {},
            connected_account=changes.connected_account or None,
            limits=changes.limits or TenantLimits(),
        )
    record = known.model_dump()
    if changes.gateway is not None and changes.gateway != known.gateway:
        record.update(gateway=changes.gateway, gateway_options={}, secrets={})
        record["connected_account"] = None
    if changes.name:
        record["name"] = changes.name
    if changes.gateway_options is not None:
        record["gateway_options"] = changes.gateway_options
    if changes.secrets:
        record["secrets"] = {**record["secrets"], **changes.secrets}
    if changes.connected_account is not None:
        # "" removes it: the calls go to the platform's own account again.
        record["connected_account"] = changes.connected_account or None
    if changes.limits is not None:
        record["limits"] = changes.limits
    return Tenant.model_validate(record)
