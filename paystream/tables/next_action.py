"""A payment's next action (3-D Secure, a redirect) as kept at rest: sealed.

Stripe's ``next_action`` carries a credential for the customer's own step: a
``redirect_to_url`` URL holds the PaymentIntent's client secret
(``payment_intent_client_secret=``), which Stripe says must not be stored or logged. The
outcome that asks for the action must carry it (the tenant hands it to the customer's
browser, as it would Stripe's own answer), so the worker keeps it sealed under the
master key wherever it keeps it (the payments table, the outcomes stored for
re-emission) and opens it only to emit an outcome. The ledger, the views and exports
keep its type alone (:func:`without_credentials`).

Without a master key nothing is sealed: only the simulator runs then (a Stripe tenant's
API key is itself sealed), and its next action holds nothing secret. A seal that no key
in the keyring opens any more (its master key retired) is emitted as its type alone.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import orjson

from paystream.settings import Settings
from paystream.tenancy.crypto import CryptoError, MasterKeyring, keyring_from_settings
from paystream.tenancy.secrets import open_secret, seal_secret

__all__ = ["SEALED", "NextActionSeal", "public_row", "without_credentials"]

log = logging.getLogger(__name__)

# The key of a sealed next action's ciphertext (beside its "type"): named so that no
# provider's next action (keyed by "type" and the type's own name) holds it.
SEALED = "paystream_sealed"
_PURPOSE = "next-action"


# Stripe's next action types are short words (redirect_to_url, use_stripe_sdk, ...).
_TYPE_MAX = 64


def without_credentials(action: Any) -> Any:
    """A next action as the ledger, the views and exports keep it: its type alone (a
    word: anything else is none). One that is no mapping, which no provider sends, is
    kept as none: whole, it kept whatever it held (review h64f)."""
    if isinstance(action, Mapping):
        kind = action.get("type")
        return {"type": kind if isinstance(kind, str) and len(kind) <= _TYPE_MAX else None}
    return None


_BOOKKEEPING = frozenset({"applied", "held_until"})


def public_row(raw: Mapping[str, Any]) -> dict[str, Any]:
    """An entity's table record as the views and exports show it: without its
    bookkeeping (``applied``, ``held_until``: retention.HOLD_FIELD), its next action (a
    payment's) as its type alone."""
    row = {k: v for k, v in raw.items() if k not in _BOOKKEEPING}
    if row.get("next_action") is not None:
        row["next_action"] = without_credentials(row["next_action"])
    return row


def _name(payment_id: str) -> str:
    return f"next_action/{payment_id}"


class NextActionSeal:
    """Seals a payment's next action for keeping and opens it for emitting."""

    def __init__(self, keyring: MasterKeyring | None) -> None:
        self.keyring = keyring

    @classmethod
    def from_settings(cls, settings: Settings) -> NextActionSeal:
        return cls(None if settings.master_key is None else keyring_from_settings(settings))

    def sealed(self, tenant_id: str, payment_id: str, action: Any) -> Any:
        """``action`` as kept: sealed (bound to the tenant and payment), unless it is
        already, or there is no master key."""
        if self.keyring is None or not isinstance(action, Mapping) or SEALED in action:
            return action
        plain = orjson.dumps(action).decode()
        return {
            "type": action.get("type"),
            SEALED: seal_secret(self.keyring, tenant_id, _name(payment_id), plain, _PURPOSE),
        }

    def opened(self, tenant_id: str, data: dict[str, Any]) -> dict[str, Any]:
        """An outcome's data with every sealed next action in it opened (``data`` itself
        when it holds none: the common case costs two lookups)."""
        obj = data.get("object")
        sealed_primary = isinstance(obj, dict) and _is_sealed(obj.get("next_action"))
        related = data.get("related")
        if not sealed_primary and not related:
            return data
        out = dict(data)
        if sealed_primary:
            assert isinstance(obj, dict)
            out["object"] = self._opened_object(tenant_id, obj)
        if isinstance(related, list):
            out["related"] = [
                {**part, "object": self._opened_object(tenant_id, part["object"])}
                if isinstance(part, dict)
                and isinstance(part.get("object"), dict)
                and _is_sealed(part["object"].get("next_action"))
                else part
                for part in related
            ]
        return out

    def _opened_object(self, tenant_id: str, obj: dict[str, Any]) -> dict[str, Any]:
        action = obj["next_action"]
        opened: Any = without_credentials(action)
        if self.keyring is not None:
            try:
                plain = open_secret(
                    self.keyring, tenant_id, _name(str(obj.get("id"))), action[SEALED], _PURPOSE
                )
                opened = orjson.loads(plain.get_secret_value())
            except (CryptoError, ValueError, AttributeError):  # (a damaged value too)
                log.warning(
                    "the next action of payment %s (tenant %s) no longer opens (its master "
                    "key retired?): emitted as its type alone",
                    obj.get("id"),
                    tenant_id,
                )
        else:
            log.warning(
                "payment %s (tenant %s) holds a sealed next action and no master key is "
                "configured: emitted as its type alone",
                obj.get("id"),
                tenant_id,
            )
        # In its place, so the object's keys keep their order (a re-emission is the
        # very event first emitted).
        return {k: (opened if k == "next_action" else v) for k, v in obj.items()}


def _is_sealed(action: Any) -> bool:
    return isinstance(action, dict) and SEALED in action
