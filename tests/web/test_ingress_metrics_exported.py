"""The ingress's /metrics exports every family its alerts read (review h61a: the refused
connections, counted under server="ingress", were left out by the exporter's name filter,
so PaystreamWebConnectionsRefused could never fire for the public server)."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp.web
import pytest
import yaml
from aiohttp.test_utils import make_mocked_request

from paystream.settings import load_settings
from paystream.web.ingress_server import IngressServer
from tests.web.test_connection_cap import (  # noqa: F401
    OTHER,
    _answer,
    _held,
    _until,
    ingress_port,
)

ALERT_TESTS = Path(__file__).parents[2] / "helm/paystream/files/prometheus/alerts.test.yml"


def _ingress_series_names() -> set[str]:
    """Metric names the alert unit tests feed as scraped from the ingress."""
    doc = yaml.safe_load(ALERT_TESTS.read_text())
    series = [s["series"] for t in doc["tests"] for s in t.get("input_series", ())]
    return {s.split("{", 1)[0] for s in series if 'job="paystream-ingress"' in s} - {
        "up"
    }  # (up is Prometheus's own)


async def _exported() -> str:
    server = IngressServer(load_settings(kafka_broker_url="kafka://127.0.0.1:9"))
    request = make_mocked_request("GET", "/metrics", headers={"Host": "127.0.0.1"})
    response = await server._metrics(request)
    assert response.status == 200
    assert isinstance(response.body, bytes)
    return response.body.decode()


@pytest.mark.asyncio
async def test_every_family_the_ingress_alerts_read_is_exported(
    ingress_port: tuple[int, aiohttp.web.AppRunner],  # noqa: F811
) -> None:
    names = _ingress_series_names()
    assert "paystream_http_connections_refused_total" in names  # the check sees the alert
    text = await _exported()
    exported = set(re.findall(r"^# TYPE (\S+) ", text, re.M))  # (a family with no sample yet too)
    assert names <= exported, sorted(names - exported)
    # From the start, at 0 (a first refusal is an increase the alert sees):
    assert 'paystream_http_connections_refused_total{server="ingress"} ' in text


@pytest.mark.asyncio
async def test_a_refused_connection_shows_on_the_ingress_metrics(
    ingress_port: tuple[int, aiohttp.web.AppRunner],  # noqa: F811
) -> None:
    def count(text: str) -> float:
        line = re.search(r'^paystream_http_connections_refused_total\{server="ingress"\} (\S+)',
                         text, re.M)  # fmt: skip
        assert line, text
        return float(line.group(1))

    port, runner = ingress_port
    before = count(await _exported())
    held = [await _held(port) for _ in range(3)]
    try:
        await _until(lambda: len(runner.server.connections) == 3)  # type: ignore[union-attr]
        assert (await _answer(port, OTHER)).startswith(b"HTTP/1.1 503")
    finally:
        for writer in held:
            writer.close()
    assert count(await _exported()) == before + 1
