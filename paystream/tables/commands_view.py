"""What became of one command: the operators' lookup by idempotency key or command id.

The idempotency table holds every command of the window (24 h by default) that got as
far as its idempotency check (not one refused before, such as a validation error or an
unknown tenant: its outcome is all there is of it) under its tenant and idempotency key:
whether it is still running, parked for a replay or done, and the outcome it was answered
with. This view says that much and no more: the outcome's
event id, type and the entity it made or changed (look that up for its details), or a
rejection's reason and message. Not the request's hash, nor the outcome's data (a
payment's next action holds its client secret).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from paystream.streams.outcomes import OUTCOME_PREFIX, outcome_id

__all__ = ["LINK_NOT_KEPT", "command_id_key", "command_view"]

# What no command id or idempotency key holds (the pipeline refuses them: C0 and DEL).
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# An outcome's domain → the kind the entity lookups name it by.
_KINDS = {
    "customer": "customers",
    "payment_method": "payment_methods",
    "payment": "payments",
    "refund": "refunds",
    "dispute": "disputes",
    "subscription": "subscriptions",
    "invoice": "invoices",
    "payout": "payouts",
    "tax_rate": "tax_rates",
    "tax_calculation": "tax_calculations",
    "connected_account": "connected_accounts",
    "transfer": "transfers",
}


_LINK_MADE = "connected_account.onboarding_link_created"
LINK_NOT_KEPT = (
    "the onboarding link was made: its url was in the outcome event only (on the "
    "events topic), and is kept nowhere; for a link, send the command again under a "
    "new command id and a new idempotency key (or none: the key defaults to the id)"
)


def command_id_key(tenant_id: str, command_id: str) -> str:
    """Where the idempotency table says which request a command id names. Ids and
    idempotency keys hold no control characters, so no "{tenant}:{key}" can be this."""
    return f"{tenant_id}:\x1fid:{command_id}"


def command_view(
    idempotency: Mapping[str, Any], tenant_id: str, key: str, now: float
) -> dict[str, Any] | None:
    """The command of ``tenant_id`` under idempotency key ``key``, else the one whose id
    is ``key`` (sent under another key); None when the window holds neither."""
    if not key or _CONTROL.search(key):
        return None  # no key holds a control character: table keys of another kind do
    found = _record(idempotency, f"{tenant_id}:{key}", now)
    if found is None:
        pointer = idempotency.get(command_id_key(tenant_id, key))
        if not isinstance(pointer, dict) or float(pointer.get("expires_at", 0)) < now:
            return None
        named = pointer.get("key")
        if not isinstance(named, str) or _CONTROL.search(named):
            return None  # (written by a version before pointers named their key)
        found = _record(idempotency, f"{tenant_id}:{named}", now)
        # The key's record of that very request: a pointer outlives it (kept as long as
        # a parked record), and the key may have been reused since for another request.
        if found is None or found.get("request_hash") != pointer.get("request_hash"):
            return None
        key = named
    view: dict[str, Any] = {
        "tenant_id": tenant_id,
        "idempotency_key": key,
        "command_id": found["command_id"],
        "command_type": found["command_type"],
        "state": found["state"],
        "expires_at": _z(datetime.fromtimestamp(float(found["expires_at"]), UTC)),
    }
    outcome = found.get("outcome")
    if found["state"] == "done" and isinstance(outcome, dict):
        view["outcome"] = _outcome(tenant_id, found, outcome)
    return view


def _record(idempotency: Mapping[str, Any], table_key: str, now: float) -> dict[str, Any] | None:
    raw = idempotency.get(table_key)
    if not isinstance(raw, dict) or "state" not in raw:
        return None
    if float(raw.get("expires_at", 0)) < now:
        return None  # past the window: a command under the key now runs as new
    return raw


def _outcome(
    tenant_id: str, found: Mapping[str, Any], outcome: Mapping[str, Any]
) -> dict[str, Any]:
    kind = str(outcome["type"])
    held = outcome.get("data")
    data: Mapping[str, Any] = held if isinstance(held, dict) else {}
    shown: dict[str, Any] = {
        # The event first emitted: a retry under the key re-emits that very one.
        "id": outcome_id(tenant_id, str(found["command_id"]), kind, found.get("id_salt")),
        "type": OUTCOME_PREFIX + kind,
    }
    if isinstance(found.get("time"), str):  # (absent from older versions' records)
        shown["time"] = _z(datetime.fromisoformat(found["time"]).astimezone(UTC))
    if kind == "command.rejected":
        shown["reason"] = data.get("reason")
        shown["message"] = data.get("message")
        return shown
    entity_kind = _KINDS.get(kind.rpartition(".")[0])
    if entity_kind is not None and isinstance(data.get("entity_id"), str):
        shown["entity"] = {"kind": entity_kind, "id": data["entity_id"]}
    if kind == _LINK_MADE and isinstance(data.get("connected_account_id"), str):
        # The link's URL went out in its outcome event alone (kept nowhere): a sender
        # whose wait ran out (202) learns here that it was made, and how to get one.
        shown["entity"] = {"kind": "connected_accounts", "id": data["connected_account_id"]}
        shown["message"] = LINK_NOT_KEPT
    return shown


def _z(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
