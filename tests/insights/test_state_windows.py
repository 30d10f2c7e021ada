"""Insights state rules the suite did not pin (mutation testing, round 3)."""

from __future__ import annotations

from dataclasses import replace

from paystream.insights.state import FRAUD_WINDOWS_MAX, WINDOWS_MAX, TenantInsights
from tests.insights.test_state import CFG, T0, _decline, _seen


def test_the_very_window_let_go_is_not_recreated_once_an_older_one_is_published() -> None:
    """The window let go for room is the newest start counted as late (evicted_through):
    an outcome for it must not make another window make way and recreate it from nothing
    (published again under a new id, with a part of its figures, over the right ones)."""
    cfg = replace(CFG, horizon_ms=86_400_000)
    minute = cfg.window_ms
    st = TenantInsights("acme")
    for k in range(WINDOWS_MAX):
        st.apply(_seen("payment.succeeded", T0 + k * minute, currency="USD", captured=1), cfg)
    for _, agg in st.closed_windows(T0 + (WINDOWS_MAX + 2) * minute, cfg):
        st.published(agg)
    # A late outcome reopens the oldest window (not yet published again).
    st.apply(_seen("payment.succeeded", T0 + 1, currency="USD", captured=1), cfg)
    newer = _seen("payment.succeeded", T0 + WINDOWS_MAX * minute, currency="USD", captured=1)
    assert st.has_room(newer, cfg)  # the oldest published one (T0 + 1 min) makes way
    st.apply(newer, cfg)
    assert st.evicted_through == T0 + minute
    for _, agg in st.closed_windows(T0 + (WINDOWS_MAX + 2) * minute, cfg):
        st.published(agg)  # T0's window is published again
    late = _seen("payment.succeeded", T0 + minute + 30_000, currency="USD", captured=1)
    assert not st.has_room(late, cfg)
    assert str(T0 + minute) not in st.windows and str(T0) in st.windows


def test_an_outcome_older_than_every_kept_fraud_window_evicts_none_of_them() -> None:
    """With the fraud windows full, an attempt older than all of them (a late or
    redelivered outcome) is not counted: it must not push out a current window (and the
    declines a card tester is running up in it)."""
    cfg = replace(CFG, fraud_window_ms=60_000, horizon_ms=900_000, subject_declines=3)
    st = TenantInsights("acme")
    base = T0 + 3_600_000
    for k in range(FRAUD_WINDOWS_MAX):
        st.apply(_decline(base + k * 60_000, customer_id="cus_tester"), cfg)
    kept = dict(st.fraud)
    assert len(kept) == FRAUD_WINDOWS_MAX
    assert st.apply(_decline(base - 5 * 60_000, customer_id="cus_old"), cfg) == []
    assert st.fraud == kept and st.fraud_evicted_through == -1
