"""A Stripe key pasted as a capability name is quoted back by the option's refusal (the
Square gateway stopped quoting it in review h73d F5)."""

import pytest

from paystream.errors import ConfigurationError
from paystream.gateways.registry import validate_options


def test_a_key_pasted_as_a_stripe_capability_is_not_repeated() -> None:
    pasted = "sk_live_" + "x" * 24
    with pytest.raises(ConfigurationError) as info:
        validate_options("stripe", {"capabilities": [pasted]})
    assert pasted not in str(info.value)
