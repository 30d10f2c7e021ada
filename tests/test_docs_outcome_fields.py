"""Every field a payment outcome's data carries is in its AsyncAPI payload: a
`payment.refresh` of a failed payment adds `previous_charge_id`, by which paystream's own
fraud counting tells a new decline from the same one, and docs/asyncapi.yaml did not
name it (review h68j)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from paystream.agents import handlers

ROOT = Path(handlers.__file__).resolve().parents[2]
PAYMENT_OUTCOMES = sorted(set(handlers._PAYMENT_OUTCOME.values()))


def _documented(asyncapi: dict[str, Any], outcome: str) -> set[str]:
    payload = asyncapi["components"]["messages"][f"outcome.{outcome}"]["payload"]
    names: set[str] = set()
    for part in payload["allOf"]:
        if "$ref" in part:
            name = part["$ref"].rsplit("/", 1)[-1]
            names |= set(asyncapi["components"]["schemas"][name]["properties"])
        else:
            names |= set(part.get("properties", {}))
    return names


@pytest.mark.parametrize("outcome", PAYMENT_OUTCOMES)
def test_a_refresh_of_a_failed_payment_documents_every_field_it_adds(outcome: str) -> None:
    asyncapi = yaml.safe_load((ROOT / "docs" / "asyncapi.yaml").read_text())
    # What refresh_payment adds to a payment outcome's data when the payment had failed
    # (a charge id named by the provider, as Stripe does).
    extra = {"previous_status": "failed"} | handlers._previous_failure("card_declined", "ch_1")
    missing = set(extra) - _documented(asyncapi, outcome)
    assert not missing, (outcome, missing)
