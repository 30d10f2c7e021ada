"""The documentation of a tenant's commands run side by side, the breaker and refused
writes, against the code (review h69h: each of these said what the code no longer did)."""

from __future__ import annotations

import re
from pathlib import Path

from paystream.docs import OUTCOMES
from paystream.gateways.base import DisputeStatus
from paystream.gateways.stripe.mapping import dispute
from paystream.settings import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def _row(name: str) -> str:
    return next(line for line in README.splitlines() if line.startswith(f"| `{name}` |"))


def test_batch_tenant_max_row_no_longer_says_a_tenant_s_commands_run_one_at_a_time() -> None:
    # F1: the settings table (and `paystream config`) still give the pre-chains reason.
    row = _row("PAYSTREAM_BATCH_TENANT_MAX")
    assert "a tenant's commands run one at a time" not in row, row
    description = Settings.model_fields["batch_tenant_max"].description or ""
    assert "A tenant's commands run one at a time, in order," not in description, description


def test_the_ordering_bullet_does_not_say_more_than_the_concurrency_runs_side_by_side() -> None:
    # F2: "(8 side by side)" with at most PAYSTREAM_TENANT_CONCURRENCY (4) chains at a time.
    limit = Settings.model_fields["tenant_concurrency"].default
    for m in re.finditer(r"\((\d+) side by side\)", README):
        assert int(m.group(1)) <= limit, m.group(0)


def test_the_refused_writes_paragraph_says_a_batch_that_deleted_exits_instead() -> None:
    # F3: "gives that batch up ... with the worker up", but _exit_if_deleted exits (70)
    # for a batch whose processing deleted or minimised (commands._deliver; tested by
    # tests/agents/test_give_up_regressions.py::
    # test_a_batch_that_deleted_from_the_store_is_not_dropped_with_the_worker_up).
    start = README.index("A rebalance while a refused batch waits")
    paragraph = README[start : start + 600]
    assert "status 70" in paragraph or "exits" in paragraph, paragraph


def test_the_dispute_closed_summary_allows_an_inquiry_closed_without_a_chargeback() -> None:
    # F4: Stripe closes an accepted inquiry as warning_closed, now inquiry_closed, yet the
    # outcome's documented summary (asyncapi: outcome.dispute.closed) still says "(lost)".
    accepted_inquiry = {
        "id": "du_1", "status": "warning_closed", "amount": 500, "currency": "usd",
        "reason": "general", "evidence_details": {"due_by": 0},
    }  # fmt: skip
    assert dispute(accepted_inquiry).status is DisputeStatus.INQUIRY_CLOSED
    summary = OUTCOMES["dispute.closed"][1]
    assert "inquiry_closed" in summary, summary


def test_the_breaker_threshold_description_says_it_scales_with_calls_under_way() -> None:
    # F5: `paystream config` says N consecutive failures open the circuit; it is N for
    # each of the tenant's calls under way (retry.py: failure_threshold * in_flight).
    description = Settings.model_fields["breaker_failure_threshold"].description or ""
    assert "under way" in description or "each" in description, description


def test_bench_help_does_not_say_limited_tenants_run_serially() -> None:
    # h70b: the in-process bench's limits option still said a tenant with limits runs its
    # commands one at a time; its chains run too (admissions in offset order).
    from click.testing import CliRunner

    from paystream.bench.cli import bench_command

    out = " ".join(CliRunner().invoke(bench_command, ["--help"], terminal_width=400).output.split())
    assert "a tenant with limits runs its commands one at a time" not in out
    # h70d: nor that a daily volume's payment creates run one at a time (they run side by
    # side; only one the volume would refuse waits for the earlier answers).
    assert "payment creates run one at a time" not in out
