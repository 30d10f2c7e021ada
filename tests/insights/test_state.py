"""Insights state: windows, money, fraud rules, publication and expiry (no Kafka)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime

from paystream.client import build_command
from paystream.insights.events import ALERT_TYPE, WINDOW_TYPE, alert_event, window_event
from paystream.insights.observe import Observed, observe
from paystream.insights.state import SUBJECTS_MAX, InsightsConfig, TenantInsights
from paystream.settings import CloudEventsMode
from paystream.streams.codec import decode_record
from paystream.streams.outcomes import CommandRef, build_outcome, encode_outcome

CFG = InsightsConfig(
    window_ms=60_000,
    horizon_ms=600_000,
    grace_ms=5_000,
    fraud_window_ms=300_000,
    subject_declines=3,
    burst_declines=4,
    burst_share_pct=50,
)
T0 = 1_700_000_040_000  # a window start (a multiple of 60 s)


def _seen(outcome: str, at: int = T0, **facts: object) -> Observed:
    # A payment outcome is an attempt unless said otherwise (observe tells a capture).
    facts.setdefault("attempt", outcome.startswith("payment."))
    return Observed(event_id=f"e{at}{outcome}", tenant_id="acme", outcome=outcome, time_ms=at,
                    **facts)  # type: ignore[arg-type]  # fmt: skip


def _decline(at: int = T0, **facts: object) -> Observed:
    return _seen("payment.failed", at, currency="USD", declined=500, decline_code="generic_decline",
                 card_declined=True, **facts)  # fmt: skip


def test_outcomes_and_money_are_counted_in_their_window() -> None:
    st = TenantInsights("acme")
    st.apply(_seen("payment.succeeded", T0 + 1, currency="USD", captured=2500), CFG)
    st.apply(_seen("payment.authorized", T0 + 2, currency="USD", authorized=900), CFG)
    st.apply(_seen("refund.succeeded", T0 + 3, currency="USD", refunded=700), CFG)
    st.apply(_decline(T0 + 4), CFG)
    st.apply(_seen("command.rejected", T0 + 5, reject_reason="validation_error"), CFG)
    st.apply(_seen("payment.succeeded", T0 + 60_000, currency="JPY", captured=300), CFG)
    first, second = st.windows[str(T0)], st.windows[str(T0 + 60_000)]
    assert first["events"] == 5 and second["events"] == 1
    assert first["money"] == {
        "USD": {"authorized": 900, "captured": 2500, "refunded": 700, "declined": 500}
    }
    assert first["declines"] == {"generic_decline": 1}
    assert first["rejections"] == {"validation_error": 1}
    assert second["money"]["JPY"]["captured"] == 300


def test_a_window_is_published_once_closed_then_again_only_when_it_changes() -> None:
    st = TenantInsights("acme")
    st.apply(_seen("payment.succeeded", T0, currency="USD", captured=100), CFG)
    assert st.closed_windows(T0 + 60_000 + 4_999, CFG) == []  # within the grace
    [(start, agg)] = st.closed_windows(T0 + 65_000, CFG)
    assert start == T0
    st.published(agg)
    assert st.closed_windows(T0 + 70_000, CFG) == []
    st.apply(_seen("payment.succeeded", T0 + 10, currency="USD", captured=50), CFG)  # late
    [(_, agg)] = st.closed_windows(T0 + 70_000, CFG)
    assert agg["events"] == 2


def test_windows_expire_past_the_horizon_once_published() -> None:
    st = TenantInsights("acme")
    st.apply(_seen("payment.succeeded", T0, currency="USD", captured=100), CFG)
    later = T0 + CFG.window_ms + CFG.horizon_ms + 1
    st.expire(later, CFG)
    assert str(T0) in st.windows  # not published yet: kept
    for _, agg in st.closed_windows(later, CFG):
        st.published(agg)
    st.expire(later, CFG)
    assert st.windows == {}
    assert st.is_late(_seen("payment.succeeded", T0), later, CFG)


def test_a_customer_s_declines_raise_one_alert_per_window() -> None:
    st = TenantInsights("acme")
    alerts = []
    for i in range(5):
        alerts += st.apply(_decline(T0 + i, customer_id="cus_1"), CFG)
        for _ in range(2):  # most attempts succeed: no card testing burst
            st.apply(_seen("payment.succeeded", T0 + i, currency="USD", captured=1), CFG)
    [alert] = alerts
    assert (alert.rule, alert.subject_type, alert.subject) == (
        "subject_declines",
        "customer",
        "cus_1",
    )
    assert alert.observed == alert.threshold == 3
    # The next fraud window counts afresh.
    nxt = T0 + CFG.fraud_window_ms
    again = [a for i in range(3) for a in st.apply(_decline(nxt + i, customer_id="cus_1"), CFG)]
    assert [a.window_start_ms for a in again] == [nxt - nxt % CFG.fraud_window_ms]


def test_a_burst_of_declines_is_card_testing_only_when_most_attempts_decline() -> None:
    healthy = TenantInsights("acme")
    for i in range(4):
        assert healthy.apply(_decline(T0 + i), CFG) == []
        for _ in range(2):
            healthy.apply(_seen("payment.succeeded", T0 + i, currency="USD", captured=1), CFG)
    testing = TenantInsights("acme")
    alerts = [a for i in range(6) for a in testing.apply(_decline(T0 + i), CFG)]
    [alert] = alerts
    assert (alert.rule, alert.subject, alert.observed) == ("decline_burst", "acme", 4)


def test_provider_failures_are_not_declines() -> None:
    st = TenantInsights("acme")
    failure = _seen("payment.failed", T0, currency="USD", decline_code="processing_error")
    alerts = [a for _ in range(10) for a in st.apply(replace(failure, customer_id="c"), CFG)]
    assert alerts == []


def test_the_subjects_a_fraud_window_tracks_are_bounded() -> None:
    st = TenantInsights("acme")
    for i in range(SUBJECTS_MAX + 10):
        st.apply(_decline(T0, customer_id=f"c{i}"), CFG)
    fw = st.fraud[str(T0 - T0 % CFG.fraud_window_ms)]
    assert len(fw["by"]) == SUBJECTS_MAX and fw["untracked"] == 10


def test_state_round_trips_as_json() -> None:
    st = TenantInsights("acme", through=41)
    st.apply(_decline(T0, customer_id="c"), CFG)
    again = TenantInsights.load("acme", json.loads(json.dumps(st.dump())))
    assert again == st
    assert TenantInsights.load("acme", None) == TenantInsights("acme")


def _outcome(kind: str, data: dict[str, object]) -> Observed | None:
    cmd = CommandRef("acme", "c1", "payment.create", "c1", datetime.fromtimestamp(T0 / 1000, UTC))
    rec = encode_outcome(cmd, kind, data, CloudEventsMode.BINARY)
    return observe(decode_record(rec.key, rec.value, dict(rec.headers)))


def test_outcome_events_are_read_as_facts() -> None:
    paid = _outcome("payment.succeeded", {"object": {"amount": 900, "amount_captured": 900,
                    "currency": "EUR", "customer_id": "cus_1"}})  # fmt: skip
    assert paid is not None
    assert (paid.captured, paid.currency, paid.customer_id, paid.time_ms) == (
        900,
        "EUR",
        "cus_1",
        T0,
    )
    error = {"code": "card_declined", "decline_code": "generic_decline"}
    declined = _outcome("payment.failed", {"object": {"amount": 500, "currency": "USD"},
                        "error": error})  # fmt: skip
    assert declined is not None and declined.card_declined and declined.declined == 500
    assert declined.decline_code == "generic_decline"
    # Amounts that are not integers count nothing (never floats).
    odd = _outcome("payment.succeeded", {"object": {"amount_captured": 9.5, "currency": "USD"}})
    assert odd is not None and odd.captured == 0
    command = build_command("payment.create", "acme", {})
    assert observe(command) is None  # a command is not an outcome
    assert build_outcome is not None


def test_published_events_are_deterministic() -> None:
    st = TenantInsights("acme")
    st.apply(_seen("payment.succeeded", T0, currency="USD", captured=100), CFG)
    agg = st.windows[str(T0)]
    one = window_event("acme", T0, CFG.window_ms, agg, CloudEventsMode.BINARY)
    two = window_event(
        "acme", T0, CFG.window_ms, json.loads(json.dumps(agg)), CloudEventsMode.BINARY
    )
    assert one == two  # republished after a crash: the same bytes, the same id
    headers = dict(one.headers)
    assert headers["ce_type"] == WINDOW_TYPE.encode() and headers["ce_tenantid"] == b"acme"
    st.apply(_seen("payment.succeeded", T0 + 1, currency="USD", captured=5), CFG)
    updated = window_event("acme", T0, CFG.window_ms, agg, CloudEventsMode.BINARY)
    assert dict(updated.headers)["ce_id"] != headers["ce_id"]
    assert json.loads(updated.value)["events"] == 2
    [alert] = [a for i in range(3) for a in st.apply(_decline(T0 + i, customer_id="c"), CFG)]
    rec = alert_event("acme", alert, CloudEventsMode.BINARY)
    assert rec == alert_event("acme", alert, CloudEventsMode.BINARY)
    assert dict(rec.headers)["ce_type"] == ALERT_TYPE.encode()
    assert json.loads(rec.value)["rule"] == "subject_declines"


def test_a_window_let_go_for_room_is_not_recreated_by_a_late_outcome() -> None:
    """Past WINDOWS_MAX the oldest published window makes way. An outcome for it within
    the horizon recreated it from nothing, published under a new id with a part of its
    figures, over the right ones (review finding): it counts as late."""
    from paystream.insights.state import WINDOWS_MAX

    cfg = replace(CFG, horizon_ms=86_400_000)
    st = TenantInsights("acme")
    minute = CFG.window_ms
    for k in range(WINDOWS_MAX + 5):
        seen = _seen("payment.succeeded", T0 + k * minute, currency="USD", captured=100)
        assert st.has_room(seen, cfg)
        st.apply(seen, cfg)
        for _, agg in st.closed_windows(T0 + (k + 2) * minute, cfg):
            st.published(agg)
    assert len(st.windows) == WINDOWS_MAX and str(T0) not in st.windows
    late = _seen("payment.succeeded", T0 + 30_000, currency="USD", captured=100)
    assert not st.has_room(late, cfg)
    assert str(T0) not in st.windows
    # The record keeps the mark (a worker taking the tenant over knows it too).
    assert TenantInsights.load("acme", st.dump()).evicted_through == st.evicted_through > -1


def test_a_client_clocked_ahead_does_not_crowd_the_present_out_of_the_fraud_rules() -> None:
    """A command's time is its client's. One running ten minutes ahead filled the kept
    fraud windows with future ones, and the present's declines (a card tester's)
    went uncounted (review finding): the rules count no later than the worker's clock."""
    cfg = replace(CFG, fraud_window_ms=60_000, horizon_ms=900_000, subject_declines=5)
    st = TenantInsights("acme")
    alerts = []
    for minute in range(30):
        now = T0 + minute * 60_000
        st.expire(now, cfg)
        ahead = _decline(now + 600_000 + 1, customer_id=f"cus_ahead_{minute}")
        st.apply(ahead, cfg, now)
        for k in range(5):
            alerts += st.apply(_decline(now + 10 + k, customer_id="cus_tester"), cfg, now + 20)
    assert sum(a.subject == "cus_tester" for a in alerts) == 30  # every minute's window
    assert max(int(w) for w in st.fraud) <= T0 + 29 * 60_000  # none ahead of the clock


def test_a_provider_failure_is_not_a_card_decline() -> None:
    """The provider down must not look like card testing, nor count money as declined
    (mutation testing)."""
    for code in ("provider_unavailable", "processing_error", "timeout", "rate_limited"):
        failed = _outcome(
            "payment.failed",
            {"object": {"amount": 500, "currency": "USD"}, "error": {"code": code}},
        )
        assert failed is not None and failed.attempt
        assert not failed.card_declined and failed.declined == 0
        assert failed.decline_code == code  # still counted apart in the window
    st = TenantInsights("acme")
    alerts = []
    for i in range(CFG.burst_declines * 2):
        failed = _outcome(
            "payment.failed",
            {
                "object": {"amount": 500, "currency": "USD", "customer_id": "cus_1"},
                "error": {"code": "provider_unavailable"},
            },
        )
        assert failed is not None
        alerts += st.apply(replace(failed, event_id=f"f{i}"), CFG)
    assert alerts == []


def test_unpublished_windows_are_never_let_go_for_room() -> None:
    """At WINDOWS_MAX only published windows make way: an unpublished one's figures would
    be lost for good (mutation testing). The newer outcome waits, counted as late."""
    from paystream.insights.state import WINDOWS_MAX

    cfg = replace(CFG, horizon_ms=86_400_000)
    st = TenantInsights("acme")
    minute = CFG.window_ms
    for k in range(WINDOWS_MAX):
        seen = _seen("payment.succeeded", T0 + k * minute, currency="USD", captured=100)
        assert st.has_room(seen, cfg)
        st.apply(seen, cfg)
    newer = _seen("payment.succeeded", T0 + WINDOWS_MAX * minute, currency="USD", captured=100)
    assert not st.has_room(newer, cfg)
    assert len(st.windows) == WINDOWS_MAX
    assert all(agg["events"] == 1 for agg in st.windows.values())
