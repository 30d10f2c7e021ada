"""The refreshes webhooks may bring per tenant (web/webhooks.py ``_Budget``)."""

from __future__ import annotations

from paystream.web.webhooks import _Budget


def test_a_tenants_webhook_refreshes_are_bounded_and_come_back() -> None:
    now = [1000.0]
    budget = _Budget(clock=lambda: now[0])
    # A burst of ten seconds' worth, then none until time passes.
    assert sum(budget.take("acme", 2) for _ in range(25)) == 20
    assert not budget.take("acme", 2)
    assert budget.take("globex", 2)  # each tenant its own
    now[0] += 0.5
    assert budget.take("acme", 2)  # one back in half a second at 2/s
    assert not budget.take("acme", 2)
    now[0] += 3600
    assert sum(budget.take("acme", 2) for _ in range(25)) == 20  # never over the burst


def test_a_token_taken_for_a_refresh_not_sent_is_given_back() -> None:
    now = [0.0]
    budget = _Budget(clock=lambda: now[0])
    assert sum(budget.take("acme", 1) for _ in range(11)) == 10
    budget.give_back("acme")
    assert budget.take("acme", 1) and not budget.take("acme", 1)
