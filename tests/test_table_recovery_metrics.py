"""paystream_table_recovery_remaining_records from Faust's recovery bookkeeping.

Faust reads the changelogs' highwaters once per recovery; its standby copies then keep
reading past them, and a partition that moved from active to standby keeps its active
highwater with no offset. Its own totals went negative with traffic (hiding a standby
really behind) and counted a moved partition whole (a review finding, reproduced with
Faust's own methods): these are the cases.
"""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace
from typing import Any

from faust.tables.recovery import Recovery
from faust.types import TP

from paystream.tables.observed import behind

P0, P1, P2 = (TP("app-payments-changelog", p) for p in range(3))


def _recovery(**kw: Any) -> Any:
    base: dict[str, Any] = {
        "active_tps": set(),
        "standby_tps": set(),
        "active_highwaters": Counter(),
        "active_offsets": Counter(),
        "standby_highwaters": Counter(),
        "standby_offsets": Counter(),
    }
    r = SimpleNamespace(**{**base, **kw})
    # Faust's own totals, for comparison: its methods on these fields.
    r.active_remaining = lambda: Recovery.active_remaining(r)
    r.standby_remaining = lambda: Recovery.standby_remaining(r)
    return r


def test_a_standby_reading_past_its_highwater_does_not_hide_one_behind() -> None:
    r = _recovery(
        standby_tps={P0, P1},
        standby_highwaters=Counter({P0: 999, P1: 999}),
        standby_offsets=Counter({P0: 5999, P1: 599}),  # P0 read 5,000 past; P1 400 behind
    )
    assert Recovery.standby_remaining_total(r) == -4600  # Faust's own
    assert behind(r, active=False) == 400


def test_a_partition_moved_to_standby_is_no_active_left_to_recover() -> None:
    r = _recovery(
        active_tps={P1},
        active_highwaters=Counter({P0: 999, P1: 49}),  # P0 is a standby now
        active_offsets=Counter({P1: 9}),
    )
    assert Recovery.active_remaining_total(r) == 1039  # Faust's own: P0 whole
    assert behind(r, active=True) == 40


def test_a_partition_not_read_yet_counts_whole_and_an_empty_one_not_at_all() -> None:
    r = _recovery(
        active_tps={P0, P1, P2},
        active_highwaters=Counter({P0: 99, P1: -1, P2: 9}),
        active_offsets={P0: None, P1: None, P2: 9},
    )
    assert behind(r, active=True) == 100  # offsets 0-99 of P0
