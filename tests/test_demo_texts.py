"""What `paystream demo` and `dev --demo` print: every outcome kind at the end (after a
Ctrl-C too), and no sign of trouble hidden from the progress line (new-user review)."""

from __future__ import annotations

from collections import Counter

from paystream.demo import demo_progress, demo_summary


def test_the_progress_line_names_trouble_however_rare() -> None:
    seen = Counter(
        {
            "payment.succeeded": 90,
            "customer.created": 80,
            "payment_method.attached": 70,
            "payment.captured": 60,
            "refund.succeeded": 50,
            "payment.requires_action": 40,
            "dispute.closed": 3,
            "payment.canceled": 2,
            "payment_method.attach_failed": 1,
            "command.rejected": 1,
            "timeout": 1,
        }
    )
    line = demo_progress(seen)
    assert line.startswith("payment.succeeded=90, customer.created=80")
    for trouble in ("command.rejected=1", "timeout=1", "payment_method.attach_failed=1"):
        assert trouble in line, line
    assert "dispute.closed" not in line and line.endswith("2 other kinds=5")
    assert demo_progress(Counter({"payment.succeeded": 1})) == "payment.succeeded=1"


def test_the_summary_lists_every_kind_by_count() -> None:
    seen = Counter({"customer.created": 3, "payment.succeeded": 1200, "timeout": 1})
    assert demo_summary("demo done", seen, 10.0).splitlines() == [
        "demo done: 1204 outcomes in 10 s (120.4/s):",
        "  payment.succeeded    1,200",
        "  customer.created         3",
        "  timeout                  1",
    ]
    assert demo_summary("demo stopped", Counter(), 0.4) == "demo stopped: 0 outcomes in 0 s"
