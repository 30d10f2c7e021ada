"""InsightsRunner.await_tenants and the outcome agent's wait for it (review h62h): a
forged refusal, a failed ask, a wait that failed, a real tenant's refused data."""

from __future__ import annotations

from typing import Any

import pytest

from paystream.agents import insights, ledger_sink
from paystream.streams.outcomes import RejectReason, rejection_data
from tests.agents.test_insights_given_up_batch import _outcome_agent
from tests.insights.test_await_tenants import _loaded, _outcome, _refused, _runner
from tests.tenancy.test_mirror import _until

pytestmark = pytest.mark.asyncio


async def test_a_forged_refusal_with_an_unhashable_reason_does_not_stop_the_ask() -> None:
    """A rejected outcome of a tenant nobody knows whose `reason` is a list (forged: the
    insights guard against forged outcomes elsewhere, observe() reads it with _label)
    made `reason in _FOUND_TENANT_REFUSALS` raise TypeError out of await_tenants: the
    same batch's real new tenant was never asked for."""
    asked: list[int] = []
    tenants: dict[str, Any] = {"acme": object()}
    runner = _runner(tenants, _loaded(), asked)
    forged = _outcome("nosuch", "command.rejected", {"reason": ["x"], "message": "m"})
    assert await runner.await_tenants([forged, _outcome("new")]) is True
    assert asked == [1] and "new" in tenants


async def test_a_failed_ask_does_not_pace_the_next_refusal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The pace is set once an ask returns: one that raised held the next such
    refusal's ask off for REFUSAL_ASK_SECONDS."""
    asked: list[int] = []
    runner = _runner({"acme": object()}, _loaded(), asked)
    calls = 0
    real = runner._registry_caught_up

    async def flaky() -> float:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("ask failed")
        assert real is not None
        return await real()

    runner._registry_caught_up = flaky
    with pytest.raises(RuntimeError):
        await runner.await_tenants([_refused("nosuch-1", RejectReason.VALIDATION_ERROR)])
    assert await runner.await_tenants([_refused("new", RejectReason.VALIDATION_ERROR)]) is True


async def test_a_batch_whose_registry_wait_failed_waits_again_on_its_retry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A wait that raised (the TypeError above, an ask's non-Kafka failure) is made
    again on the batch's retry: it was not, and the batch was counted with the tenant
    unknown: skipped, committed past."""
    monkeypatch.setattr(ledger_sink, "RETRY_FIRST_SECONDS", 0.01)
    agent = _outcome_agent(monkeypatch, pauses_once=False, pause=lambda app, lease: None)
    fake = ledger_sink.insights.runner
    waits: list[int] = []

    async def await_tenants(events: Any) -> bool:
        waits.append(1)
        if len(waits) == 1:
            raise TypeError("unhashable type: 'list'")
        return True

    fake.await_tenants = await_tenants  # type: ignore[union-attr]
    await agent.put([10, 11])
    await _until(lambda: len(waits) >= 2, 5)  # (retried after RETRY_FIRST_SECONDS)
    await agent.stop()
    assert len(waits) == 2, (waits, agent.counted, agent.consumer.commits)


async def test_a_new_tenants_refused_data_is_asked_for_within_the_pace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A validation_error that carries `errors` comes of the command's data, validated
    after the tenant lookup: asked for like a payment, not paced with a made-up tenant's
    refusals (read within 10 s of one, it was skipped and committed past)."""
    asked: list[int] = []
    tenants: dict[str, Any] = {"acme": object()}
    runner = _runner(tenants, _loaded(), asked)
    await runner.await_tenants([_refused("nosuch", RejectReason.VALIDATION_ERROR)])
    data = {"reason": "validation_error", "message": "m", "errors": [{"loc": ["amount"]}]}
    tenants.pop("new", None)  # (the fake registry learnt it on the first ask)
    assert await runner.await_tenants([_outcome("new2", "command.rejected", data)]) is True


async def test_a_bug_judging_a_made_up_tenants_refusals_asks_at_the_pace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = insights.observe

    def buggy(event: Any) -> Any:
        if str(event.get_extension("tenantid")).startswith("nosuch"):
            raise ValueError("a bug of ours")
        return real(event)

    monkeypatch.setattr(insights, "observe", buggy)
    asked: list[int] = []
    runner = _runner({"acme": object()}, _loaded(), asked)
    for n in range(5):  # five batches of a made-up tenant's unknown_tenant refusals
        batch = [_refused(f"nosuch-{n}", RejectReason.UNKNOWN_TENANT)]
        batch[0].message.partition, batch[0].message.offset = 0, n  # type: ignore[attr-defined]
        await runner.await_tenants(batch)
    # Without the bug: no ask at all (unknown_tenant asks nothing). With it: at the
    # refusals' pace, not one a batch (review h62i); _apply's same observe() call skips
    # the outcome as an error regardless.
    assert asked == [1], f"{len(asked)} round trips for 5 batches"


async def test_a_new_tenants_provider_refusal_is_asked_for_whenever_it_comes() -> None:
    asked: list[int] = []
    tenants: dict[str, Any] = {"acme": object()}
    runner = _runner(tenants, _loaded(), asked)
    # A made-up tenant's malformed command: one ask, which sets the 10 s pace.
    await runner.await_tenants([_refused("nosuch", RejectReason.VALIDATION_ERROR)])
    assert asked == [1]
    tenants.pop("new", None)  # (the fake registry learnt it on that ask)
    # A real new tenant's first payment, refused by its provider (invalid_request): made
    # by a worker that found the tenant, ran it and called the provider.
    data = {
        **rejection_data("payment.create", RejectReason.VALIDATION_ERROR, "bad currency"),
        "error": {"code": "invalid_request", "message": "bad currency"},
    }
    assert await runner.await_tenants([_outcome("new", "command.rejected", data)]) is True, (
        "not asked: the new tenant's refusal is skipped as unregistered"
    )
