"""Counters whose label values are known up front start at 0, so that their first event
shows as an increase on the dashboard (a series first scraped at 1 shows none)."""

from __future__ import annotations

import inspect
import re

from prometheus_client import REGISTRY

from paystream.agents import pipeline
from paystream.ledger import sink


def test_every_dead_letter_reason_is_listed_and_exposed_at_zero_or_more() -> None:
    used = set(re.findall(r'_dead_letter\(\s*rec,\s*"(\w+)"', inspect.getsource(pipeline)))
    assert used == pipeline.DEAD_LETTER_REASONS
    for reason in used:
        value = REGISTRY.get_sample_value("paystream_dead_letters_total", {"reason": reason})
        assert value is not None and value >= 0, reason


def test_every_ledger_failure_kind_is_exposed() -> None:
    kinds = {v for k, v in vars(sink.FailureKind).items() if not k.startswith("_")}
    assert len(kinds) == 4
    for kind in kinds:
        value = REGISTRY.get_sample_value("paystream_ledger_write_failures_total", {"kind": kind})
        assert value is not None and value >= 0, kind


def test_every_ledger_dead_letter_reason_is_exposed() -> None:
    assert len(sink.DEAD_LETTER_REASONS) == 6
    for reason in sink.DEAD_LETTER_REASONS:
        labels = {"reason": reason}
        value = REGISTRY.get_sample_value("paystream_ledger_dead_letters_total", labels)
        assert value is not None and value >= 0, reason
