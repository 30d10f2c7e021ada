"""How the client matches outcomes to the commands it waits for (no broker needed), and
how it copes with what the broker gives it (the deployment fixtures' broker)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaConnectionError, TopicAuthorizationFailedError
from click.testing import CliRunner
from cloudevents.core.v1.event import CloudEvent

from paystream.agents import pipeline
from paystream.cli import cli
from paystream.client import (
    ID_MAX_CHARS,
    InvalidCommand,
    OutcomeTimeout,
    PaystreamClient,
    build_command,
    encoded_for_sending,
)
from paystream.errors import ConfigurationError, PaystreamError
from paystream.settings import CloudEventsMode, load_settings
from paystream.streams.codec import encode_event
from paystream.streams.outcomes import ANSWERS_HEADER, REQUEST_HEADER
from tests.fixtures.pipeline import RawSend

pytestmark = [pytest.mark.asyncio(loop_scope="session")]


def _client() -> PaystreamClient:
    return PaystreamClient(load_settings(kafka_broker_url="kafka://127.0.0.1:9"))


def _outcome(cause: str, kind: str = "payment.succeeded", tenant: str = "acme") -> CloudEvent:
    attrs: dict[str, Any] = {
        "id": f"out-{cause}-{kind}",
        "source": "/paystream/tenants/acme/payment",
        "type": f"com.paystream.{kind}",
        "specversion": "1.0",
        "tenantid": tenant,
        "causationid": cause,
    }
    return CloudEvent(attributes=attrs, data={})


def _waiting(client: PaystreamClient, command_id: str) -> asyncio.Future[CloudEvent]:
    return client.expect("acme", command_id)


async def test_an_outcome_answers_its_cause() -> None:
    client = _client()
    waiter = _waiting(client, "c1")
    client._dispatch(_outcome("c1"), None)
    assert waiter.done() and waiter.result().get_extension("causationid") == "c1"


async def test_a_replay_for_a_retry_answers_the_command_its_record_names() -> None:
    client = _client()
    retry = _waiting(client, "c2")
    client._dispatch(_outcome("c1"), "c2")  # the first command's event, re-emitted for c2
    assert retry.done() and retry.result().get_extension("causationid") == "c1"


async def test_nothing_else_answers_a_command() -> None:
    """Another command's outcome (e.g. under the same key, before this one ran: a rate
    limit, or a success this command conflicts with) is not this command's answer."""
    client = _client()
    waiter = _waiting(client, "c2")
    client._dispatch(_outcome("c1", "command.rejected"), None)
    client._dispatch(_outcome("c1"), None)
    client._dispatch(_outcome("c1"), "c3")
    assert not waiter.done()


async def test_another_tenants_outcome_for_the_same_command_id_is_not_the_answer() -> None:
    """Command ids are unique within a tenant only: globex's order-42 is not acme's."""
    client = _client()
    waiter = _waiting(client, "order-42")
    client._dispatch(_outcome("order-42", tenant="globex"), None)
    assert not waiter.done()
    client._dispatch(_outcome("order-42"), None)
    assert waiter.done() and waiter.result().get_extension("tenantid") == "acme"


async def test_concurrent_sends_of_one_command_share_its_outcome(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An application retrying a command while the first send still waits: both get the
    outcome (the second used to replace the first's waiter, and the first's clean-up
    then dropped the second's)."""
    client = _client()
    sent: list[str] = []

    async def enqueue(command: CloudEvent, request: str | None = None) -> Any:
        sent.append(command.get_id())
        delivered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        delivered.set_result(None)
        return delivered

    monkeypatch.setattr(client, "_enqueue", enqueue)
    client._reader = asyncio.create_task(asyncio.sleep(60))  # started, as far as send sees
    command = CloudEvent(
        {
            "id": "c9",
            "source": "/app",
            "type": "com.paystream.command.customer.create",
            "specversion": "1.0",
            "tenantid": "acme",
        },
        {},
    )
    first = asyncio.ensure_future(client.send(command, timeout=5))
    second = asyncio.ensure_future(client.send(command, timeout=5))
    while len(sent) < 2 and not (first.done() or second.done()):
        await asyncio.sleep(0)
    client._dispatch(_outcome("c9"), None)
    assert (await first).get_id() == (await second).get_id() == "out-c9-payment.succeeded"
    assert client._waiters == {}
    client._reader.cancel()


async def test_a_missing_events_topic_is_a_clear_error(deployment_factory: Any) -> None:
    dep = await deployment_factory()
    absent = dep.settings.model_copy(update={"events_topic": f"{dep.settings.app_id}.none"})
    with pytest.raises(ConfigurationError, match="run `paystream topics`"):
        async with PaystreamClient(absent):
            pass


async def test_a_malformed_record_on_the_events_topic_is_skipped(deployment_factory: Any) -> None:
    """A foreign record whose paystream-answers header is not UTF-8 used to end the reader
    (silently: every later send timed out). Structured mode: binary mode's decoding
    already refuses any header that is not UTF-8."""
    dep = await deployment_factory()
    foreign = encode_event(_outcome("c0"), b"acme", CloudEventsMode.STRUCTURED)
    answer = encode_event(_outcome("c1"), b"acme", CloudEventsMode.BINARY)
    async with dep.client() as client:
        waiter = _waiting(client, "c1")
        await dep.produce(
            dep.settings.events_topic,
            RawSend(b"acme", foreign.value, 0, (*foreign.headers, (ANSWERS_HEADER, b"\xff\xfe"))),
            RawSend(b"acme", answer.value, 0, answer.headers),
        )
        outcome = await asyncio.wait_for(waiter, 10)
    assert outcome.get_extension("causationid") == "c1"


async def test_a_failed_reader_fails_the_sends_instead_of_letting_them_time_out(
    deployment_factory: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    dep = await deployment_factory()
    client = dep.client()
    denied = asyncio.Event()

    async def getone(*partitions: Any) -> Any:  # the consumer iterator raises this one
        await denied.wait()
        raise TopicAuthorizationFailedError(dep.settings.events_topic)

    monkeypatch.setattr(client._consumer, "getone", getone)
    async with client:
        with caplog.at_level(logging.ERROR, logger="paystream.client"):
            pending = asyncio.ensure_future(
                client.send(build_command("customer.create", "acme", {}), timeout=10)
            )
            while not client._waiters:
                await asyncio.sleep(0)
            denied.set()
            # Handed over before the reader failed (it was waiting for the broker): it
            # may run, and its id is said (review finding: the raw error read as "not
            # sent", and a script sent the payment again under a new id).
            with pytest.raises(OutcomeTimeout, match="retry with the same command id") as info:
                await pending
            assert isinstance(info.value.__cause__, TopicAuthorizationFailedError)
        assert "outcome reader stopped" in caplog.text
        assert client._waiters == {}

        async def enqueue(command: CloudEvent, request: str | None = None) -> Any:
            raise AssertionError("sent a command whose outcome no one can read")

        monkeypatch.setattr(client, "_enqueue", enqueue)
        with pytest.raises(TopicAuthorizationFailedError):  # at once, not after 10 s
            await asyncio.wait_for(
                client.send(build_command("customer.create", "acme", {}), timeout=10), 1
            )


def _kafka_tasks() -> set[asyncio.Task[Any]]:
    """Running tasks of aiokafka's producers and consumers (their connections' keepers)."""

    def module(task: asyncio.Task[Any]) -> str:
        return str(getattr(getattr(task.get_coro(), "cr_code", None), "co_filename", ""))

    return {t for t in asyncio.all_tasks() if not t.done() and "aiokafka" in module(t)}


@pytest.mark.parametrize("failing", ["start", "seek_to_end"])
async def test_a_failed_start_stops_what_it_started(
    deployment_factory: Any, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """The producer (and the consumer, when it got that far) keep connections and tasks
    of their own: a start that fails after starting them must stop them."""
    dep = await deployment_factory()
    client = dep.client()

    async def unreachable(*args: Any, **kwargs: Any) -> None:
        raise KafkaConnectionError("Unable to bootstrap from the broker")

    monkeypatch.setattr(client._consumer, failing, unreachable)
    before = _kafka_tasks()
    with pytest.raises(KafkaConnectionError):
        await client.start()
    await asyncio.sleep(0.1)  # cancelled tasks finish
    assert _kafka_tasks() - before == set()
    assert isinstance(client._consumer, AIOKafkaConsumer) and client._consumer._closed


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tenant_id": "t" * 256}, "tenant id is 256 characters"),
        ({"command_id": "i" * 256}, "command id is 256 characters"),
        ({"idempotency_key": "k" * 300}, "idempotency key is 300 characters"),
        # answered as tenant "unknown", causation "[card number]": never matched
        ({"tenant_id": ""}, "tenant id is empty"),
        ({"command_id": "4242424242424242"}, "command id reads as a card number"),
        ({"tenant_id": "4242424242424242"}, "tenant id reads as a card number"),
        ({"idempotency_key": "4242 4242 4242 4242"}, "idempotency key reads as a card"),
        # an undecodable byte (as a shell argument gives one): cannot be sent at all
        ({"tenant_id": "acme\udcff"}, "tenant id is not valid Unicode"),
        ({"command_id": "c\udcff"}, "command id is not valid Unicode"),
    ],
)
async def test_commands_the_worker_would_refuse_are_refused_when_built(
    kwargs: dict[str, Any], message: str
) -> None:
    args = {"tenant_id": "acme", **kwargs}
    with pytest.raises(ValueError, match=message) as refused:
        build_command("customer.create", args.pop("tenant_id"), {}, **args)
    assert isinstance(refused.value, InvalidCommand)
    assert "iii" not in str(refused.value) and "kkk" not in str(refused.value)
    assert "4242" not in str(refused.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"metadata": {"note": "card 4242 4242 4242 4242"}}, "holds a card number"),
        ({"description": "4242424242424242"}, "holds a card number"),
        ({"metadata": {"cvc": "737"}}, "'cvc' holds a card security code"),
    ],
)
@pytest.mark.parametrize("mode", list(CloudEventsMode))
async def test_card_data_is_never_sent(
    data: dict[str, Any], message: str, mode: CloudEventsMode
) -> None:
    """The worker refuses it, but the record sat on the commands topic meanwhile, for
    the broker's retention, in card-data scope (review finding). Not echoed."""
    command = build_command("customer.create", "acme", data)
    with pytest.raises(InvalidCommand, match=message) as refused:
        encoded_for_sending(command, mode, load_settings())
    assert "4242" not in str(refused.value) and "737" not in str(refused.value)
    result = CliRunner().invoke(
        cli,
        ["send", "customer.create", "--tenant", "acme", "--data", json.dumps(data)],
        env={"KAFKA_BROKER_URL": "kafka://127.0.0.1:9"},
    )
    assert result.exit_code == 2 and message in result.output, result.output
    assert "4242" not in result.output and "737" not in result.output


_PAY = {"amount": 100, "currency": "USD", "payment_method_token": "pm_card_visa"}
_TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _with_extension(name: str, value: str) -> CloudEvent:
    command = build_command("payment.create", "acme", _PAY)
    command.get_attributes()[name] = value  # (an extension set by hand)
    return command


# Card data beside the data: the worker refuses each card_data_forbidden.
_CARD_IN_ATTRIBUTES = {
    "source": lambda: build_command(
        "payment.create", "acme", _PAY, source="/shop/4242424242424242"
    ),
    "tracestate": lambda: build_command(
        "payment.create", "acme", _PAY, traceparent=_TRACEPARENT, tracestate="vendor=1,cvc=737"
    ),
    "an extension's number": lambda: _with_extension("note", "4242 4242 4242 4242"),
    "an extension's code": lambda: _with_extension("cvc", "737"),
}
# Trace context that reads as a card number by chance: the worker drops it and runs the
# command (card_data.trace_context_without_cards), so it is sent.
_CARD_LIKE_TRACE_CONTEXT = {
    "traceparent": lambda: build_command(
        "payment.create", "acme", _PAY,
        traceparent="00-459f039076e099f944d5017262279051-c812fed7cbc0981c-01",
    ),
    "tracestate": lambda: build_command(
        "payment.create", "acme", _PAY, traceparent=_TRACEPARENT,
        tracestate="33@nr=0-0-33-5043-27ddd2d8890283b4-5569065a5b1313bd-1-1.23456-1764547200006",
    ),
}  # fmt: skip


@pytest.mark.parametrize("where", list(_CARD_IN_ATTRIBUTES))
@pytest.mark.parametrize("mode", list(CloudEventsMode))
async def test_card_data_in_an_attribute_is_never_sent(where: str, mode: CloudEventsMode) -> None:
    """The client scanned the data alone: a card number in `source` or a security code in
    `tracestate` reached the broker, and the worker refused it card_data_forbidden
    (review finding). Not echoed."""
    with pytest.raises(InvalidCommand, match="card data is not accepted") as refused:
        encoded_for_sending(_CARD_IN_ATTRIBUTES[where](), mode, load_settings())
    assert "4242" not in str(refused.value) and "737" not in str(refused.value)


@pytest.mark.parametrize("where", list(_CARD_LIKE_TRACE_CONTEXT))
@pytest.mark.parametrize("mode", list(CloudEventsMode))
async def test_trace_context_that_reads_as_a_card_number_is_sent(
    where: str, mode: CloudEventsMode
) -> None:
    encoded_for_sending(_CARD_LIKE_TRACE_CONTEXT[where](), mode, load_settings())


async def test_the_client_refuses_in_attributes_what_the_worker_refuses(redis_url: str) -> None:
    """What the client refuses, the worker answers card_data_forbidden; what it sends,
    the worker runs."""
    from tests.agents.conftest import running_harness

    async with running_harness(redis_url) as h:
        for name, cases, refused in (
            ("refused", _CARD_IN_ATTRIBUTES, True),
            ("sent", _CARD_LIKE_TRACE_CONTEXT, False),
        ):
            for where, make in cases.items():
                command = make()
                h.add_tenant("acme")
                command.get_attributes()["id"] = f"{name}-{where}".replace(" ", "-")
                _, outcome = await h.send_event(command)
                assert outcome is not None
                reason = outcome.get_data().get("reason")
                assert (reason == "card_data_forbidden") is refused, (where, outcome.get_type())


async def test_a_client_that_was_not_started_says_so() -> None:
    """Not started, it waited for broker metadata for good (the README's example did)."""
    with pytest.raises(PaystreamError, match="not started"):
        await _client().command("customer.create", "acme", {}, timeout=1)


async def test_the_timeout_bounds_sending_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stalled broker held send() for 40 s whatever its timeout (aiokafka's metadata
    wait): the publish is inside the deadline."""
    client = _client()

    async def stalled(command: CloudEvent, request: str | None = None) -> Any:
        await asyncio.sleep(60)  # waiting for metadata: nothing handed to the producer

    monkeypatch.setattr(client, "_enqueue", stalled)
    client._reader = asyncio.create_task(asyncio.sleep(60))  # started, as far as send sees
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(OutcomeTimeout, match="it was not sent"):
            await client.command("customer.create", "acme", {}, timeout=0.2)
        assert asyncio.get_running_loop().time() - started < 5
        assert client._waiters == {}
    finally:
        client._reader.cancel()


async def test_the_longest_ids_the_worker_takes_are_built() -> None:
    assert ID_MAX_CHARS == pipeline.ID_MAX_CHARS
    longest = "i" * ID_MAX_CHARS
    cmd = build_command(
        "customer.create", "t" * 63, {}, command_id=longest, idempotency_key=longest
    )
    assert cmd.get_id() == longest and cmd.get_extension("idempotencykey") == longest


async def test_a_command_the_worker_would_refuse_is_never_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = _client()

    async def enqueue(command: CloudEvent, request: str | None = None) -> Any:
        raise AssertionError("sent")

    monkeypatch.setattr(client, "_enqueue", enqueue)
    with pytest.raises(InvalidCommand):
        await client.command("customer.create", "acme", {}, command_id="i" * 256, timeout=1)
    assert client._waiters == {}


async def test_paystream_send_reports_a_refused_command_without_a_traceback(
    deployment_factory: Any,
) -> None:
    dep = await deployment_factory()
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "paystream", "send", "customer.create", "--tenant", "acme",
         "--id", "i" * 256, "--timeout", "5"],
        env={**os.environ, **dep.env},
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr  # a usage error
    assert "command id is 256 characters" in proc.stderr and "Traceback" not in proc.stderr


async def test_paystream_send_says_no_outcome_came_with_its_own_status(
    deployment_factory: Any,
) -> None:
    """No worker runs: no outcome within the timeout is exit status 75 (a broker that is
    down is 1, bad input 2: never sent), so scripts can tell them apart."""
    dep = await deployment_factory()
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "paystream", "send", "customer.create", "--tenant", "acme",
         "--timeout", "1"],
        env={**os.environ, **dep.env},
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 75, proc.stdout + proc.stderr
    assert "error: no outcome for command" in proc.stderr and "Traceback" not in proc.stderr
    # How to get its outcome without running it twice (the same hint over HTTP).
    command_id = re.search(r"no outcome for command (\S+) ", proc.stderr)
    assert command_id is not None, proc.stderr
    assert f"send it again with --id {command_id.group(1)} (same data)" in proc.stderr
    assert proc.stderr.count("paystream dlq list") == 1  # (the advice once, not twice)


async def test_stopping_fails_what_is_still_awaited(deployment_factory: Any) -> None:
    """No outcome is read once the client stops: an `expect()` stayed pending for ever,
    and a send in flight waited out its timeout, then said it "may still be sent and
    run" (review finding)."""
    dep = await deployment_factory()
    client = dep.client()
    await client.start()
    awaited = client.expect("acme", "replayed-1")
    pending = asyncio.ensure_future(client.send(build_command("customer.create", "acme", {}), 30))
    while len(client._waiters) < 2:
        await asyncio.sleep(0.01)
    await client.stop()
    with pytest.raises(OutcomeTimeout, match="client stopped") as info:  # it was sent
        await asyncio.wait_for(pending, 5)
    assert "retry with the same command id" in str(info.value)
    assert awaited.done() and isinstance(awaited.exception(), PaystreamError)


async def test_a_structured_command_the_workers_would_not_read_is_refused(
    deployment_factory: Any,
) -> None:
    """Over PAYSTREAM_COMMAND_MAX_BYTES, a structured-mode command is dead-lettered unread,
    so unanswered: its sender waited out the whole timeout (review finding)."""
    dep = await deployment_factory()
    async with PaystreamClient(dep.settings, CloudEventsMode.STRUCTURED) as client:
        big = {"dispute_id": "dp_1", "evidence": {"a": "x" * dep.settings.command_max_bytes}}
        with pytest.raises(InvalidCommand, match="PAYSTREAM_COMMAND_MAX_BYTES"):
            await asyncio.wait_for(client.command("dispute.submit_evidence", "acme", big), 5)


async def test_a_broker_gone_at_stop_still_stops_the_producer(
    deployment_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the broker gone, aiokafka's consumer lets its fetcher's cancellation out of
    stop(): the producer was never stopped (its queued command never flushed) and `send`
    ended in a traceback without the command id (review finding)."""
    dep = await deployment_factory()
    client = dep.client()
    await client.start()

    async def fetcher_cancelled() -> None:
        raise asyncio.CancelledError

    monkeypatch.setattr(client._consumer, "stop", fetcher_cancelled)
    await client.stop()  # no CancelledError out of it
    assert client._producer._closed


async def test_a_delivery_that_fails_after_the_hand_over_says_to_retry_with_the_id(
    deployment_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker may have appended a record whose delivery then failed: not "failed",
    but "no outcome, retry with the same id" (exit 75 in the CLI), naming the id."""
    from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError

    from paystream.client import OutcomeTimeout

    dep = await deployment_factory()
    async with dep.client() as client:

        async def lost(command: CloudEvent, request: str | None = None) -> Any:
            failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            failed.set_exception(KafkaTimeoutError())
            return failed

        monkeypatch.setattr(client, "_enqueue", lost)
        cmd = build_command("customer.create", "acme", {})
        with pytest.raises(OutcomeTimeout, match=f"{cmd.get_id()}: the broker failed after"):
            await client.send(cmd, timeout=10)

        async def refused(command: CloudEvent, request: str | None = None) -> Any:
            failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            failed.set_exception(MessageSizeTooLargeError())
            return failed

        # A refusal is no "may have been sent": the broker never appended it (review).
        monkeypatch.setattr(client, "_enqueue", refused)
        with pytest.raises(MessageSizeTooLargeError):
            await client.send(build_command("customer.create", "acme", {}), timeout=10)


async def test_two_sends_of_one_id_each_get_the_outcome_of_their_own_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two senders of one command id, their data different: the worker answers the first
    and rejects the second idempotency_conflict, both under that causation id. The second
    was shown the first's success (review finding): each send now puts a request header
    on its record, the worker echoes it on that record's outcome, and a send takes only
    its own (an `expect` any; an outcome without the header, from an older worker, all)."""
    client = _client()
    requests: list[str | None] = []

    async def enqueue(command: CloudEvent, request: str | None = None) -> Any:
        requests.append(request)
        delivered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        delivered.set_result(None)
        return delivered

    monkeypatch.setattr(client, "_enqueue", enqueue)
    client._reader = asyncio.create_task(asyncio.sleep(60))
    command = build_command("payment.create", "acme", {}, command_id="order-7")
    first = asyncio.ensure_future(client.send(command, timeout=5))
    second = asyncio.ensure_future(client.send(command, timeout=5))
    anyone = client.expect("acme", "order-7")
    while len(requests) < 2:
        await asyncio.sleep(0)
    a, b = requests
    assert a and b and a != b and a.isalpha()
    client._dispatch(_outcome("order-7", "command.rejected"), None, b)  # the second's answer
    assert (await second).get_type() == "com.paystream.command.rejected"
    assert (await anyone).get_type() == "com.paystream.command.rejected"
    assert not first.done()
    client._dispatch(_outcome("order-7"), None, a)
    assert (await first).get_type() == "com.paystream.payment.succeeded"
    assert client._waiters == {}
    client._reader.cancel()


async def test_a_missing_commands_topic_is_a_clear_error(deployment_factory: Any) -> None:
    """Review finding: a mistyped PAYSTREAM_COMMANDS_TOPIC took every command to a topic
    no worker reads (Tansu makes one up), each then "lost", retried in vain."""
    dep = await deployment_factory()
    absent = dep.settings.model_copy(update={"commands_topic": f"{dep.settings.app_id}.typo"})
    with pytest.raises(ConfigurationError, match=r"typo.*run `paystream topics`"):
        async with PaystreamClient(absent):
            pass


async def test_published_commands_carry_a_request_header(deployment_factory: Any) -> None:
    """Review finding: an outcome without one answers every send of its command id, so a
    publish() and a send() of one id with different data both took the publish's."""
    dep = await deployment_factory()
    async with dep.client() as client:
        await client.publish(build_command("customer.create", "acme", {}, command_id="p1"))
    [record] = await dep.read_topic(dep.settings.commands_topic)
    assert REQUEST_HEADER in dict(record.headers)


async def test_a_printed_outcome_s_time_is_as_the_event_carries_it() -> None:
    """`send` printed "+00:00" where the event, the ingress and the dashboard say "Z"
    (walkthrough finding)."""
    from paystream.client import outcome_summary

    event = build_command("customer.create", "acme", {})
    event.get_attributes()["time"] = datetime(2026, 12, 5, 6, 12, 54, 9048, tzinfo=UTC)
    assert outcome_summary(event)["time"] == "2026-12-05T06:12:54.009048Z"


async def test_a_structured_envelope_as_datacontenttype_is_not_sent_in_binary_mode() -> None:
    """In binary mode datacontenttype becomes the record's content-type, which a worker
    reading `application/cloudevents+json` takes for a structured record: the data read as
    the whole event, dead-lettered (review h64b). Structured mode carries it in the body."""
    attrs = {"datacontenttype": "application/cloudevents+json"}
    command = build_command("customer.create", "acme", {})
    command = CloudEvent({**command.get_attributes(), **attrs}, command.get_data())
    with pytest.raises(InvalidCommand, match="datacontenttype"):
        encoded_for_sending(command, CloudEventsMode.BINARY, load_settings())
    encoded_for_sending(command, CloudEventsMode.STRUCTURED, load_settings())


@pytest.mark.parametrize("mode", list(CloudEventsMode))
@pytest.mark.parametrize("data", ["", b"", "text", [], 0])
async def test_data_that_is_no_object_is_not_sent(mode: CloudEventsMode, data: object) -> None:
    """A worker refuses it (`data must be a JSON object`); in binary mode "" and b"" were
    written as an empty value, which a worker read as no data and ran on (review h64g)."""
    command = build_command("customer.create", "acme", {})
    command = CloudEvent(command.get_attributes(), data)
    with pytest.raises(InvalidCommand, match="data must be a JSON object"):
        encoded_for_sending(command, mode, load_settings())
