"""A broker refusing the command agent's writes: reported, and not a reason to restart.

The embedded broker never refuses a produce (one broker, topics and partitions created
on demand: a produce to a deleted topic, or past a recreated topic's partitions, is
simply accepted), so the refusals here are aiokafka's own exception classes, raised
where a real refusal surfaces: out of the batch's delivery in ``commands._publish``.
A broker that stops answering altogether is tests/e2e/test_liveness_wedged.py.
"""

from __future__ import annotations

from typing import Any, cast

import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    LeaderNotAvailableError,
    NotEnoughReplicasError,
    RequestTimedOutError,
)
from prometheus_client import REGISTRY

from paystream.agents import commands
from paystream.agents.offsets import Stall
from paystream.agents.publish_health import PUBLISH, PublishHealth, is_refusal
from paystream.settings import Settings
from paystream.streams.batch_producer import OutRecord
from paystream.web.liveness import LivenessWatch

WEDGED_AFTER = 600.0


def test_only_the_broker_s_own_error_answers_are_refusals() -> None:
    assert is_refusal(NotEnoughReplicasError())
    assert is_refusal(LeaderNotAvailableError())
    # aiokafka raises RequestTimedOutError for a request never answered too (a hung
    # connection: a restart may mend it), and the others are the client's own.
    assert not is_refusal(RequestTimedOutError())
    assert not is_refusal(KafkaTimeoutError())
    assert not is_refusal(KafkaConnectionError())


def test_trouble_lasts_from_the_first_failure_until_a_delivery() -> None:
    now = [100.0]
    health = PublishHealth(clock=lambda: now[0])
    assert health.trouble() is None
    health.failed(NotEnoughReplicasError())
    now[0] = 130.0
    health.failed(RequestTimedOutError())
    now[0] = 135.0
    trouble = health.trouble()
    assert trouble is not None
    assert (trouble.seconds, trouble.last_seconds) == (35.0, 5.0)
    assert (trouble.error, trouble.refused) == ("RequestTimedOutError", False)
    assert trouble.describe() == "producing outcomes failing for 35 s (RequestTimedOutError)"
    assert health.refused_within(60) is None  # the latest failure was no refusal
    health.delivered()
    assert health.trouble() is None


def test_a_refusal_is_an_excuse_only_while_fresh() -> None:
    """A refusing broker fails every retried batch again within a request timeout; an
    attempt that has hung since is a stall like any other."""
    now = [0.0]
    health = PublishHealth(clock=lambda: now[0])
    health.failed(NotEnoughReplicasError())
    now[0] = 50.0
    refused = health.refused_within(70)
    assert refused is not None and refused.describe() == (
        "producing outcomes refused by the broker for 50 s (NotEnoughReplicasError)"
    )
    now[0] = 71.0
    assert health.refused_within(70) is None


def test_a_stall_while_the_broker_refuses_never_fails_liveness() -> None:
    """Counted only from the last probe that saw the refusal: restarted in turn, every
    worker would stall on the same partition."""
    now = [0.0]
    watch = LivenessWatch(clock=lambda: now[0])
    for _ in range(200):  # probes every 10 s for 2000 s, the broker refusing throughout
        watch.observe(settling=False, refused=True)
        now[0] += 10
    assert watch.failures([Stall("commands", 80, now[0])], after=WEDGED_AFTER) == []
    last_refused = now[0] - 10
    now[0] = last_refused + WEDGED_AFTER  # refusals stopped, and no progress since
    (why,) = watch.failures([Stall("commands", 80, now[0])], after=WEDGED_AFTER)
    assert "no progress for 600 s" in why


RECORDS = [OutRecord("events", 0, b"acme", b"{}")]


def _broker_answers(monkeypatch: pytest.MonkeyPatch, answers: list[Exception | None]) -> list[Any]:
    """Each produce attempt raises the next answer (None: delivered); returns the publish
    trouble each attempt saw as it began."""
    seen: list[Any] = []

    async def send(producer: Any, records: Any, **_: Any) -> list[Any]:
        seen.append(PUBLISH.trouble())
        answer = answers.pop(0)
        if answer is not None:
            raise answer
        return []

    monkeypatch.setattr(commands, "send_batches", send)
    monkeypatch.setattr(commands, "PUBLISH_RETRY_MAX_SECONDS", 0.001)
    return seen


def _failures(error: str) -> float:
    return REGISTRY.get_sample_value("paystream_publish_failures_total", {"error": error}) or 0.0


@pytest.mark.asyncio(loop_scope="session")
async def test_publish_reports_each_failure_and_clears_on_delivery(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers: list[Exception | None] = [NotEnoughReplicasError(), NotEnoughReplicasError(), None]
    PUBLISH.delivered()  # (process-wide: another test's refused publish may have left it set)
    seen = _broker_answers(monkeypatch, answers)
    before = _failures("NotEnoughReplicasError")
    assert await commands._publish(cast(Any, None), RECORDS, 1) == []
    assert seen[0] is None  # nothing wrong before the first attempt
    assert seen[2] is not None and seen[2].refused and seen[2].error == "NotEnoughReplicasError"
    assert PUBLISH.trouble() is None  # delivered
    assert _failures("NotEnoughReplicasError") == before + 2
    assert REGISTRY.get_sample_value("paystream_publish_failing_seconds") == 0.0


@pytest.mark.asyncio(loop_scope="session")
async def test_a_failing_batch_given_up_leaves_nothing_failing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its partition handed over (no retries left) or the agent stopping: nothing is
    being produced any more. The gauge went on rising on the idle worker, paging
    PaystreamPublishFailing for good, and /readyz said publish_failing (review finding)."""
    import asyncio

    PUBLISH.delivered()
    _broker_answers(monkeypatch, [NotEnoughReplicasError()])
    with pytest.raises(commands.DeliveryAbandoned):
        await commands._publish(cast(Any, None), RECORDS, 1, may_retry=lambda: False)
    assert PUBLISH.trouble() is None
    assert REGISTRY.get_sample_value("paystream_publish_failing_seconds") == 0.0

    _broker_answers(monkeypatch, [NotEnoughReplicasError()] * 1000)
    monkeypatch.setattr(commands, "PUBLISH_RETRY_MAX_SECONDS", 10.0)
    publishing = asyncio.ensure_future(commands._publish(cast(Any, None), RECORDS, 1))
    while PUBLISH.trouble() is None:
        await asyncio.sleep(0.01)
    publishing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await publishing
    assert PUBLISH.trouble() is None


@pytest.mark.asyncio(loop_scope="session")
async def test_aiokafka_s_own_wait_running_out_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch behind another of the same partition waits for room in aiokafka's
    accumulator; a leaderless partition keeps the first queued until it expires, and the
    wait raises KafkaTimeoutError, marked not retriable: the worker would have exited,
    and each next owner of the partition after it."""
    answers: list[Exception | None] = [KafkaTimeoutError(), LeaderNotAvailableError(), None]
    _broker_answers(monkeypatch, answers)
    assert await commands._publish(cast(Any, None), RECORDS, 1) == []
    assert answers == []


def test_probes_see_a_fresh_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    """What /healthz and /readyz read: the refusal, while it is fresh."""
    from paystream.web import views

    now = [0.0]
    health = PublishHealth(clock=lambda: now[0])
    monkeypatch.setattr(views, "PUBLISH", health)
    monkeypatch.setattr(views, "_liveness", LivenessWatch(clock=lambda: now[0]))
    assert views._observe_settling() is None
    health.failed(NotEnoughReplicasError())
    now[0] = views.REFUSAL_FRESH_SECONDS
    refused = views._observe_settling()
    assert refused is not None and refused.error == "NotEnoughReplicasError"
    now[0] += 1
    assert views._observe_settling() is None  # stale: whatever holds it up now counts


def test_the_producer_gives_up_on_a_batch_within_kafka_s_request_timeout() -> None:
    """Faust's default (1200 s) kept a refused batch inside aiokafka's retries, out of
    the agent's sight, for longer than liveness waits: the refusal was never seen."""
    from paystream.app import create_app
    from paystream.settings import DEFAULT_PRODUCER_REQUEST_TIMEOUT_SECONDS, load_settings

    settings = load_settings()
    app = create_app(settings)
    # Above the brokers' replica.lag.time.max.ms (30 s): a lagging follower holds an
    # acks=all produce that long, and a client giving up first writes it twice.
    assert settings.producer_request_timeout_seconds == 60.0
    assert DEFAULT_PRODUCER_REQUEST_TIMEOUT_SECONDS == 60.0
    producer_settings = cast(Any, app.producer)._settings_default()
    assert producer_settings["request_timeout_ms"] == 60_000
    from paystream.web.views import REFUSAL_FRESH_SECONDS

    assert REFUSAL_FRESH_SECONDS == 2 * (60.0 + commands.PUBLISH_RETRY_MAX_SECONDS)
    assert REFUSAL_FRESH_SECONDS < WEDGED_AFTER
    # The longest timeout allowed still leaves a refusal stale before liveness judges.
    longest = Settings.model_fields["producer_request_timeout_seconds"].metadata
    assert 2 * (max(m.le for m in longest if hasattr(m, "le")) + 5) < WEDGED_AFTER
    tuned = create_app(load_settings(producer_request_timeout_seconds=10))
    assert cast(Any, tuned.producer)._settings_default()["request_timeout_ms"] == 10_000
