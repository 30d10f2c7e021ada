"""The bench's reading of the sink's Prometheus metrics."""

from __future__ import annotations

import pytest

from paystream.bench.ledger import histogram_quantile, scrape


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    buckets = [(0.001, 50.0), (0.01, 90.0), (0.1, 100.0), (float("inf"), 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.001)
    assert histogram_quantile(0.7, buckets) == pytest.approx(0.001 + 0.009 * 0.5)
    assert histogram_quantile(0.95, buckets) == pytest.approx(0.01 + 0.09 * 0.5)
    assert histogram_quantile(0.5, []) is None
    assert histogram_quantile(0.5, [(0.1, 0.0), (float("inf"), 0.0)]) is None


def test_scrape_reads_labels_and_values() -> None:
    text = (
        "# HELP x y\n"
        'paystream_ledger_events_total{result="written"} 12.0\n'
        'paystream_ledger_db_statement_seconds_bucket{le="0.005"} 3.0\n'
        "paystream_ledger_db_statement_seconds_count 4.0\n"
    )
    m = scrape(text)
    assert m["paystream_ledger_events_total"] == [({"result": "written"}, 12.0)]
    assert m["paystream_ledger_db_statement_seconds_bucket"] == [({"le": "0.005"}, 3.0)]
    assert m["paystream_ledger_db_statement_seconds_count"] == [({}, 4.0)]
