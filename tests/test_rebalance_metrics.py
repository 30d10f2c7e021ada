"""A worker's rebalances on /metrics (review h67g): a group that keeps rebalancing showed
only through its effects (latency, lag), and only Faust's log said why."""

from __future__ import annotations

from prometheus_client import REGISTRY

from paystream import metrics
from paystream.app import create_app
from paystream.settings import load_settings


def _sample(name: str) -> float | None:
    return REGISTRY.get_sample_value(name)


def test_a_worker_app_exports_its_rebalances_and_whether_one_runs() -> None:
    app = create_app(load_settings())
    for other in metrics.REBALANCES.tracked():  # (apps other tests built, still alive)
        if other is not app:
            metrics.REBALANCES._tracked.discard(other)
    assert _sample("paystream_rebalances_total") == 0.0
    assert _sample("paystream_rebalancing") == 0.0
    app.on_rebalance_start()
    app.on_rebalance_start()
    assert _sample("paystream_rebalances_total") == 2.0
    assert _sample("paystream_rebalancing") == 1.0
    app.rebalancing = False  # (what on_rebalance_complete's end sets)
    assert _sample("paystream_rebalancing") == 0.0
