"""Histograms whose top finite bucket sat below times the code itself waits (review h68h).

histogram_quantile() answers the top finite bound for any quantile that falls in +Inf,
so a histogram must reach past the waits it is meant to show (as h60d fixed for
paystream_command_latency_seconds: "a top bucket of 10 s showed its p99 as 10 s").
"""

from __future__ import annotations

import math

from paystream import metrics
from paystream.agents import commands
from paystream.ledger import sink
from paystream.settings import DEFAULT_PRODUCER_REQUEST_TIMEOUT_SECONDS


def _top(histogram: object) -> float:
    bounds = [b for b in histogram._upper_bounds if not math.isinf(b)]  # type: ignore[attr-defined]
    return max(bounds)


def test_batch_stage_histogram_shows_a_batch_the_worker_warns_about() -> None:
    # "N commands waiting on the broker: ... unacknowledged after 5 s" is logged at
    # DELIVERY_WARN_SECONDS; the publish stage then retries up to the producer request
    # timeout (60 s) and beyond (PaystreamPublishFailing pages at 120 s). Every such batch
    # lands in +Inf, so the dashboard's "Batch stage seconds (p95)" reads 5 s for all of them.
    assert _top(metrics.BATCH_SECONDS) > commands.DELIVERY_WARN_SECONDS
    assert _top(metrics.BATCH_SECONDS) >= DEFAULT_PRODUCER_REQUEST_TIMEOUT_SECONDS


def test_ledger_statement_histogram_reaches_the_statement_timeout() -> None:
    # The sink's engine gives each statement up to command_timeout=60 s
    # (agents/ledger_sink.py); the top finite bucket is 5 s.
    assert _top(sink.DB_STATEMENT_SECONDS) >= 60
