"""The bench's ingress phases: requests the ingress reads as the Kafka path's very event,
and the figures set beside the Kafka-fed phases (the real run: tests/bench/test_bench.py)."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request

from paystream.bench.http_load import http_request
from paystream.bench.load import BenchCommand, generate_commands
from paystream.bench.stats import BenchReport, PhaseResult, render_table
from paystream.client import build_command
from paystream.settings import CloudEventsMode
from paystream.streams.codec import KafkaRecord, decode_record, encode_event
from paystream.web import ingress


def _as_the_ingress_reads_it(command: BenchCommand) -> tuple[object, object]:
    headers, body = http_request(command)
    request = make_mocked_request("POST", "/v1/commands", headers=headers)
    return _seen(ingress._decoded(request, body))


def _as_a_worker_reads_it(rec: KafkaRecord) -> tuple[object, object]:
    return _seen(decode_record(rec.key, rec.value, dict(rec.headers)))


def _seen(event: Any) -> tuple[object, object]:
    return event.get_attributes(), event.get_data()


def test_each_bench_command_reaches_the_ingress_as_the_same_event() -> None:
    for command in generate_commands(50, ["bench-t1", "bench-t2"], prefix="h-", seed=3):
        assert _as_the_ingress_reads_it(command) == _as_a_worker_reads_it(command.record)


def test_header_values_are_percent_encoded_as_the_http_binding_says() -> None:
    """A space, a quote, a percent sign and non-ASCII text survive the trip unchanged."""
    event = build_command(
        "customer.create", "shop", {"email": "a@example.com"}, command_id='id 1 "50%" café'
    )
    record = encode_event(event, b"shop", CloudEventsMode.BINARY)
    command = BenchCommand(str(event.get_id()), "shop", "customer.create", record)
    headers, _ = http_request(command)
    assert headers["ce-id"] == "id%201%20%2250%25%22%20caf%C3%A9"
    assert headers["ce-id"].isascii()
    attributes, _ = _as_the_ingress_reads_it(command)
    assert attributes["id"] == 'id 1 "50%" café'  # type: ignore[index]


def test_a_structured_record_goes_as_its_body_and_media_type() -> None:
    event = build_command("customer.create", "shop", {"email": "a@example.com"})
    record = encode_event(event, b"shop", CloudEventsMode.STRUCTURED)
    headers, body = http_request(BenchCommand(str(event.get_id()), "shop", "x", record))
    assert headers == {"Content-Type": "application/cloudevents+json"}
    assert body == record.value
    command = BenchCommand(str(event.get_id()), "shop", "x", record)
    assert _as_the_ingress_reads_it(command) == _as_a_worker_reads_it(record)


def _paced(name: str, latencies: list[float], rate: float = 500) -> PhaseResult:
    n = len(latencies)
    return PhaseResult.from_arrivals(
        name, n, [float(i) for i in range(n)], latencies, offered_rate=rate
    )


def test_the_ingress_phases_are_set_beside_the_kafka_fed_ones() -> None:
    pipeline = PhaseResult.from_arrivals("pipeline", 5, [0.0, 1.0, 2.0, 3.0, 4.0], sut="worker")
    pipeline.cpu_seconds["worker"] = 0.4  # 100 ms a command (four paid for)
    pipeline.cpu_window, pipeline.cpu_records = (0.0, 4.0), 4
    http = PhaseResult.from_arrivals("http", 3, [0.0, 2.0, 4.0], sut="worker")  # 0.5/s
    http.cpu_seconds["worker"] = 0.4  # 200 ms a command (two paid for)
    http.cpu_window, http.cpu_records = (0.0, 4.0), 2
    http.answers, http.answered_rate = {"202": 3}, 0.75
    report = BenchReport(
        commands=5,
        tenants=1,
        broker="tansu",
        pipeline=pipeline,
        rate=_paced("rate", [30.0, 40.0, 60.0]),
        http=http,
        http_rate=_paced("http_rate", [50.0, 70.0, 120.0]),
    )
    out = report.as_json()
    assert out["http_throughput_cps"] == 0.5 and out["http_answered_per_s"] == 0.75
    assert out["http_ratio_vs_kafka"] == 0.5
    assert out["http_worker_cpu_ratio_vs_kafka"] == 2.0
    assert (out["http_p50_ms"], out["http_p99_ms"], out["http_offered_rate"]) == (70.0, 120.0, 500)
    assert out["http_missing_outcomes"] == 0
    assert out["http_outcome_types"] == {}
    assert out["phases"]["http"]["answers"] == {"202": 3}
    # The headline figures stay the Kafka-fed pipeline's.
    assert (out["throughput_cps"], out["p99_ms"]) == (1.0, 60.0)
    text = render_table(report)
    assert "over HTTP (full speed)" in text and "over HTTP @ 500/s, wait" in text
    assert "0.500x the Kafka-fed pipeline" in text and "worker CPU per command 2.00x" in text
    assert "over HTTP 120.0 ms, command → outcome read over Kafka 60.0 ms" in text
    assert "WARNING" not in text


@pytest.mark.parametrize(
    ("answers", "received", "warning"),
    [
        ({"202": 2, "503": 1}, 3, "WARNING: http answers {'202': 2, '503': 1}"),
        ({"202": 3}, 2, "WARNING: 1 http command(s) got no outcome"),
    ],
    ids=["an-answer-not-202", "an-outcome-missing"],
)
def test_what_the_ingress_did_not_take_is_said(
    answers: dict[str, int], received: int, warning: str
) -> None:
    pipeline = PhaseResult.from_arrivals("pipeline", 2, [0.0, 1.0])
    http = PhaseResult.from_arrivals("http", 3, [float(i) for i in range(received)])
    http.answers = answers
    report = BenchReport(commands=2, tenants=1, broker="tansu", pipeline=pipeline, http=http)
    assert warning in render_table(report)


async def test_a_follow_up_is_sent_only_once_its_tenant_s_earlier_requests_are_answered() -> None:
    """32 requests in flight on separate connections reach the broker in any order: a
    capture produced before its create was rejected. A follow-up waits for its tenant's
    earlier requests' answers; creates, and other tenants' requests, do not wait."""
    import asyncio

    from paystream.bench.http_load import _FlowOrder

    commands = [
        BenchCommand(f"c{i}", tenant, ctype, KafkaRecord(b"", b"", []))
        for i, (tenant, ctype) in enumerate(
            [
                ("a", "payment.create"),
                ("b", "payment.create"),
                ("a", "payment.capture"),
                ("a", "payment.create"),
                ("b", "refund.create"),
            ]
        )
    ]
    order = _FlowOrder(commands)
    started: list[int] = []
    release = {i: asyncio.Event() for i in range(len(commands))}

    async def post(i: int) -> None:
        started.append(i)
        await release[i].wait()

    async def settle() -> None:  # (no I/O: every task that can run gets its turns)
        for _ in range(20):
            await asyncio.sleep(0)

    tasks = [asyncio.create_task(order.send(i, post(i))) for i in range(len(commands))]
    await settle()
    assert started == [0, 1, 3]  # the capture and the refund wait
    release[1].set()
    await settle()
    assert started == [0, 1, 3, 4]  # b's create answered: its refund goes
    release[3].set()  # a later create answered: the capture still waits for c0
    await settle()
    assert 2 not in started
    release[0].set()
    await settle()
    assert started[-1] == 2
    for event in release.values():
        event.set()
    await asyncio.gather(*tasks)
