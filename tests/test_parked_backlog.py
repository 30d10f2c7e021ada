"""What waits on the retry and dead-letter topics for a replay, and since when."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, KafkaError
from prometheus_client import REGISTRY

from paystream.agents import parked_backlog
from paystream.agents.parked_backlog import measure_once
from paystream.dlq import replay
from tests.fixtures.pipeline import RawSend

pytestmark = [pytest.mark.asyncio(loop_scope="session")]

HOUR_MS = 3_600_000


def _gauge(name: str, topic: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"topic": topic})


async def test_counts_what_waits_per_topic_and_the_oldest_ones_age(
    deployment_factory: Any,
) -> None:
    dep = await deployment_factory()
    settings = dep.settings
    found = await measure_once(settings)
    assert {(b.waiting, b.oldest_ms) for b in found.values()} == {(0, None)}
    assert _gauge("paystream_parked_waiting", "dlq") == 0
    assert _gauge("paystream_parked_oldest_seconds", "retry") == 0

    now_ms = int(time.time() * 1000)
    # The oldest waiting record is the earliest of each partition's next one.
    await dep.produce(
        settings.dlq_topic,
        RawSend(b"acme", b"junk a", 0, timestamp_ms=now_ms - 2 * HOUR_MS),
        RawSend(b"acme", b"junk b", 0, timestamp_ms=now_ms - HOUR_MS),
        RawSend(b"acme", b"junk c", 1, timestamp_ms=now_ms - 3 * HOUR_MS),
    )
    await dep.produce(
        settings.retry_topic, RawSend(b"acme", b"parked", 2, timestamp_ms=now_ms - 60_000)
    )
    found = await measure_once(settings, now_ms=now_ms)
    assert found[settings.dlq_topic].waiting == 3
    assert found[settings.dlq_topic].oldest_ms == now_ms - 3 * HOUR_MS
    assert found[settings.retry_topic].waiting == 1
    assert _gauge("paystream_parked_waiting", "dlq") == 3
    assert _gauge("paystream_parked_oldest_seconds", "dlq") == 3 * 3600
    assert _gauge("paystream_parked_oldest_seconds", "retry") == 60

    # A replay passes them (junk goes back to the commands topic): nothing waits there.
    await replay(settings, [settings.dlq_topic])
    found = await measure_once(settings, now_ms=now_ms)
    assert found[settings.dlq_topic].waiting == 0
    assert _gauge("paystream_parked_waiting", "dlq") == 0
    assert _gauge("paystream_parked_oldest_seconds", "dlq") == 0
    assert _gauge("paystream_parked_waiting", "retry") == 1


async def test_a_broker_that_cannot_be_asked_clears_the_figures(deployment_factory: Any) -> None:
    dep = await deployment_factory()
    await measure_once(dep.settings, now_ms=1_800_000_000_000)
    assert _gauge("paystream_parked_waiting", "dlq") == 0
    measured_at = "paystream_parked_measured_at_seconds"
    assert REGISTRY.get_sample_value(measured_at) == 1_800_000_000
    gone = dep.settings.model_copy(update={"kafka_broker_url": "kafka://127.0.0.1:9"})
    with pytest.raises((KafkaError, OSError)):
        await measure_once(gone)
    assert _gauge("paystream_parked_waiting", "dlq") is None
    assert _gauge("paystream_parked_oldest_seconds", "retry") is None
    # When it last succeeded stands (PaystreamParkedUnmeasured reads it).
    assert REGISTRY.get_sample_value(measured_at) == 1_800_000_000


async def test_the_dashboards_figures_follow_the_latest_measurement(
    deployment_factory: Any,
) -> None:
    dep = await deployment_factory()
    settings = dep.settings
    now_ms = int(time.time() * 1000)
    await dep.produce(
        settings.retry_topic,
        RawSend(b"acme", b"parked", 0, timestamp_ms=now_ms - 90_000),
        RawSend(b"acme", b"parked too", 1, timestamp_ms=now_ms - 30_000),
    )
    await measure_once(settings, now_ms=now_ms)
    assert parked_backlog.as_json(now_ms=now_ms + 2_000) == {
        "waiting": 2,
        "oldest_s": 92.0,
        "topics": {
            "retry": {"waiting": 2, "oldest_s": 92.0},
            "dlq": {"waiting": 0, "oldest_s": None},
        },
        "measured_s_ago": 2.0,
    }
    gone = settings.model_copy(update={"kafka_broker_url": "kafka://127.0.0.1:9"})
    with pytest.raises((KafkaError, OSError)):
        await measure_once(gone)
    assert parked_backlog.as_json() is None  # no stale figure


async def test_no_failure_of_a_measurement_ends_the_worker(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    results: list[BaseException | None] = [
        RuntimeError("a bug of ours"),
        None,
        KafkaConnectionError("broker gone"),
        KafkaConnectionError("still gone"),
        asyncio.CancelledError(),  # the worker stopping
    ]
    calls = 0

    async def fake_measure(s: Any) -> None:
        nonlocal calls
        calls += 1
        outcome = results.pop(0)
        if outcome is not None:
            raise outcome

    monkeypatch.setattr(parked_backlog, "measure_once", fake_measure)
    monkeypatch.setattr(parked_backlog, "FIRST_MEASURE_SECONDS", 0.0)
    quick = parked_backlog.settings.model_copy(update={"parked_measure_seconds": 0.001})
    monkeypatch.setattr(parked_backlog, "settings", quick)
    from paystream import metrics

    metrics.PARKED_MEASURED_AT.set(0)  # (process-wide: another test may have set it)
    began = time.time()
    with (
        caplog.at_level(logging.INFO, logger=parked_backlog.__name__),
        pytest.raises(asyncio.CancelledError),
    ):
        await parked_backlog.measure_parked_backlog()
    assert calls == 5
    # Measuring began: a worker that never succeeds is seen (PaystreamParkedUnmeasured).
    measured_at = REGISTRY.get_sample_value("paystream_parked_measured_at_seconds")
    assert measured_at is not None and began <= measured_at <= time.time()
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert said == [
        ("ERROR", "measuring the parked backlog failed; will retry"),
        ("INFO", "parked backlog measured again"),
        (
            "WARNING",
            "could not measure the parked backlog (KafkaConnectionError('broker gone')); "
            "will retry",
        ),
    ]


async def test_measuring_is_off_at_0_and_never_more_often_than_every_5_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from paystream.errors import ConfigurationError
    from paystream.settings import load_settings

    with pytest.raises(ConfigurationError, match="PAYSTREAM_PARKED_MEASURE_SECONDS"):
        load_settings(parked_measure_seconds=1)
    off = parked_backlog.settings.model_copy(update={"parked_measure_seconds": 0})
    monkeypatch.setattr(parked_backlog, "settings", off)
    assert parked_backlog.as_json() == {"off": True}  # the dashboard says so
