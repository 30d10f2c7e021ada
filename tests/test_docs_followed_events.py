"""The generated API docs list every webhook event each provider's code follows (review
h79r_d L6): the webhooks page's list is its module's EVERY_FOLLOWED_EVENT, which holds
every FOLLOWED_* set the module's notices read. A set added and not listed, or a list
written by hand, fails here."""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from paystream.gateways.paddle import webhooks as paddle
from paystream.gateways.square import webhooks as square
from paystream.gateways.stripe import webhooks as stripe

ROOT = Path(__file__).resolve().parents[1]
PROVIDERS = {"Stripe": stripe, "Square": square, "Paddle": paddle}


def _followed_sets(module: ModuleType) -> dict[str, frozenset[str]]:
    return {
        name: value
        for name, value in vars(module).items()
        if re.fullmatch(r"FOLLOWED_([A-Z]+_)?EVENTS", name) and isinstance(value, frozenset)
    }


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_every_followed_set_is_in_the_providers_list(provider: str) -> None:
    module = PROVIDERS[provider]
    sets = _followed_sets(module)
    assert len(sets) >= 3, sets  # (payments, refunds, subscriptions at least)
    assert frozenset().union(*sets.values()) == module.EVERY_FOLLOWED_EVENT


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_the_webhook_page_lists_every_followed_event(provider: str) -> None:
    openapi = yaml.safe_load((ROOT / "docs" / "openapi.yaml").read_text())
    text = openapi["paths"]["/webhooks/{provider}/{tenant}"]["post"]["description"]
    listed = re.search(rf"Followed {provider} events: ((?:`[^`]+`(?:, )?)+)\.", text)
    assert listed is not None, text
    named = re.findall(r"`([^`]+)`", listed.group(1))
    assert named == sorted(PROVIDERS[provider].EVERY_FOLLOWED_EVENT)
