"""Liveness: a worker whose command agent is wedged fails /healthz, one settling does not."""

from __future__ import annotations

import pytest

from paystream.agents.offsets import Stall
from paystream.errors import ConfigurationError
from paystream.settings import load_settings
from paystream.web.liveness import LivenessWatch

WEDGED_AFTER = 600.0


def _watch(now: list[float]) -> LivenessWatch:
    return LivenessWatch(clock=lambda: now[0])


def test_a_command_agent_stalled_past_the_limit_is_wedged() -> None:
    now = [0.0]
    watch = _watch(now)
    watch.observe(settling=False)
    now[0] = 1000.0
    assert watch.failures([Stall("commands", 40, 599.0)], after=WEDGED_AFTER) == []
    assert watch.failures([Stall("commands", 40, 650.4)], after=WEDGED_AFTER) == [
        "commands agent wedged: 40 records behind, no progress for 650 s "
        "(PAYSTREAM_LIVENESS_STALL_SECONDS=600)"
    ]
    assert watch.failures([], after=WEDGED_AFTER) == []  # caught up: alive again


def test_a_stalled_ledger_sink_never_fails_liveness() -> None:
    """A restart does not bring its database back: readiness and alerts report it. (Built
    settled long ago: at its start, a watch counts no stall at all, whatever the agent,
    so this could not fail; mutation testing.)"""
    now = [0.0]
    watch = _watch(now)
    watch.observe(settling=False)
    now[0] = 10_000.0
    assert watch.failures([Stall("ledger_sink", 9, 9000.0)], after=WEDGED_AFTER) == []
    assert watch.failures([Stall("insights", 9, 9000.0)], after=WEDGED_AFTER) == []
    assert watch.failures([Stall("commands", 9, 9000.0)], after=WEDGED_AFTER) != []


def test_time_spent_settling_is_not_counted() -> None:
    """Twenty minutes recovering tables, behind all along: judged from the recovery's end."""
    now = [0.0]
    watch = _watch(now)
    for _ in range(120):  # probes every 10 s during the recovery
        watch.observe(settling=True)
        now[0] += 10
    # Last seen settling at 1190 s; behind (and not committing) since it started.
    stall = Stall("commands", 5000, now[0])
    assert watch.failures([stall], after=WEDGED_AFTER) == []
    now[0] = 1189.0 + WEDGED_AFTER
    assert watch.failures([Stall("commands", 5000, now[0])], after=WEDGED_AFTER) == []
    now[0] = 1190.0 + WEDGED_AFTER
    (why,) = watch.failures([Stall("commands", 5000, now[0])], after=WEDGED_AFTER)
    assert "no progress for 600 s" in why


def test_starting_up_counts_as_settling() -> None:
    now = [500.0]
    watch = _watch(now)  # created at 500: the process started then
    now[0] = 800.0
    assert watch.failures([Stall("commands", 3, 900.0)], after=WEDGED_AFTER) == []


def test_zero_turns_it_off() -> None:
    now = [0.0]
    watch = _watch(now)
    now[0] = 1e6
    assert watch.failures([Stall("commands", 1, 1e6)], after=0) == []


def test_liveness_must_not_come_before_readiness(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYSTREAM_STALL_SECONDS", "120")
    monkeypatch.setenv("PAYSTREAM_LIVENESS_STALL_SECONDS", "60")
    with pytest.raises(ConfigurationError, match="PAYSTREAM_LIVENESS_STALL_SECONDS"):
        load_settings()
    monkeypatch.setenv("PAYSTREAM_LIVENESS_STALL_SECONDS", "0")
    assert load_settings().liveness_after == 0
    monkeypatch.delenv("PAYSTREAM_LIVENESS_STALL_SECONDS")
    assert load_settings().liveness_after == WEDGED_AFTER


def test_unset_it_follows_a_raised_readiness_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A deployment that raised PAYSTREAM_STALL_SECONDS past 600 keeps starting (it was
    refused), and is not restarted before it is even reported stalled."""
    monkeypatch.delenv("PAYSTREAM_LIVENESS_STALL_SECONDS", raising=False)
    monkeypatch.setenv("PAYSTREAM_STALL_SECONDS", "900")
    assert load_settings().liveness_after == 4500


def test_a_rebalance_between_two_probes_counts_as_settling() -> None:
    """Seen by its new consumer generation, though no probe found it rebalancing."""
    now = [0.0]
    watch = _watch(now)
    watch.observe(settling=False, generation=3)
    now[0] = 1000.0
    watch.observe(settling=False, generation=4)  # it rebalanced since the last probe
    now[0] = 1000.0 + WEDGED_AFTER - 1
    watch.observe(settling=False, generation=4)
    assert watch.failures([Stall("commands", 7, 5000.0)], after=WEDGED_AFTER) == []
    now[0] += 1
    assert len(watch.failures([Stall("commands", 7, 5000.0)], after=WEDGED_AFTER)) == 1


def test_settling_without_a_break_for_too_long_is_a_wedge_of_its_own() -> None:
    """Faust has been seen to stay "rebalancing" for good; a restart settles it. Breaks
    (a probe that found it settled) start the count again."""
    now = [0.0]
    watch = _watch(now)
    for _ in range(30):
        watch.observe(settling=True, rebalancing=True)
        now[0] += 100
    assert watch.failures([], after=WEDGED_AFTER, settling_after=3600) == []
    watch.observe(settling=False)  # settled, briefly
    for _ in range(35):
        watch.observe(settling=True, rebalancing=True)
        now[0] += 100
    assert watch.failures([], after=WEDGED_AFTER, settling_after=3600) == []
    now[0] += 100
    watch.observe(settling=True, rebalancing=True)
    assert watch.failures([], after=WEDGED_AFTER, settling_after=3600) == [
        "worker rebalancing for 3600 s without recovering tables "
        "(PAYSTREAM_LIVENESS_SETTLING_SECONDS=3600)"
    ]
    assert watch.failures([], after=0, settling_after=0) == []  # off
    watch.observe(settling=False)
    assert watch.failures([], after=WEDGED_AFTER, settling_after=3600) == []


def test_a_long_recovery_or_an_unread_registry_is_not_a_stuck_rebalance() -> None:
    """Recovering tables makes progress, and a restart does not bring a registry back."""
    now = [0.0]
    watch = _watch(now)
    for _ in range(100):
        watch.observe(settling=True, rebalancing=False)  # recovering, or registry unread
        now[0] += 100
    assert watch.failures([], after=WEDGED_AFTER, settling_after=3600) == []


def test_the_settling_limit_is_never_an_ordinary_rebalance(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYSTREAM_LIVENESS_SETTLING_SECONDS", "30")
    with pytest.raises(ConfigurationError, match="PAYSTREAM_LIVENESS_SETTLING_SECONDS"):
        load_settings()
    monkeypatch.setenv("PAYSTREAM_LIVENESS_SETTLING_SECONDS", "0")
    assert load_settings().liveness_settling_seconds == 0
