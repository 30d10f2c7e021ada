"""h78j F3: every line a ThrottledLog writes now also renders and card-scans its text for
a count line that only a repeated cause will ever need. In a flood of distinct causes
(per-tenant parks, per-reason dead letters) nothing is held back, yet each line pays
``redact_card_numbers`` (about 25 us on an 80-character line, more than the log line
itself): measured about 20 -> 40 us per written line against 8858d0b^ (a
StreamHandler to /dev/null, 20,000 distinct causes)."""

from __future__ import annotations

import logging

import pytest

from paystream import log_limits
from paystream.log_limits import ThrottledLog


def test_causes_that_never_repeat_are_not_card_scanned_for_a_count_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    scans = [0]
    real = log_limits.redact_card_numbers

    def counted(text: str) -> str:
        scans[0] += 1
        return real(text)

    monkeypatch.setattr(log_limits, "redact_card_numbers", counted)
    now = [0.0]
    log = ThrottledLog(logging.getLogger("t.flood"), clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="t.flood"):
        for i in range(1000):
            log.warning(("dead-letter", f"reason-{i}"), "dead-lettering record %d: %s", i, "x")
        now[0] = 61.0
        log.flush()
    assert len(caplog.records) == 1000  # (each written once; no count line)
    assert scans[0] == 0, f"{scans[0]} card scans for 1000 lines that no count line needs"


@pytest.mark.parametrize(
    "pan",
    ["4111111111111111", "4111 1111 1111 1111", "\uff14" + "\uff11" * 15],  # (and fullwidth)
)
def test_a_count_line_still_cuts_a_card_number_out_of_its_kept_text(
    pan: str, caplog: pytest.LogCaptureFixture
) -> None:
    now = [0.0]
    log = ThrottledLog(logging.getLogger("t.kept"), clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="t.kept"):
        for _ in range(3):
            log.warning("bad", "refused a record quoting %s", pan)
        now[0] = 61.0
        log.flush()
    count = caplog.records[-1].getMessage()
    assert count.startswith("refused a record quoting [card number] (and 2 more"), count
