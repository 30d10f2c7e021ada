"""An embedded server whose port another process binds first (free_port finds a port free
only when it looks; a parallel test's server may take it before ours binds it): started
again on a new port, not failed. A CI run failed on it once: Tansu exited with status 0
on "AddrInUse" (session 72)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from paystream.devstack import kafka as kafka_module
from paystream.devstack import postgres as postgres_module
from paystream.devstack import redis as redis_module
from paystream.devstack._process import ServiceError, listens_on
from paystream.devstack.kafka import TansuBroker, broker_answers
from paystream.devstack.postgres import EmbeddedPostgres
from paystream.devstack.redis import EmbeddedRedis
from tests.fixtures.services import devstack_dir


@pytest.fixture
def taken() -> Iterator[int]:
    """A port another process listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def _chosen_first(monkeypatch: pytest.MonkeyPatch, module: object, port: int) -> None:
    """The server's first free_port() answers ``port`` (as if taken right after)."""
    monkeypatch.setattr(module, "free_port", lambda host="127.0.0.1": port)


def test_a_broker_whose_chosen_port_is_taken_starts_on_another(
    tmp_path: Path, taken: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    _chosen_first(monkeypatch, kafka_module, taken)
    broker = TansuBroker(tmp_path / "tansu.log")
    try:
        broker.start()
        assert broker.port != taken and broker.advertised_port == broker.port
        assert broker.pid is not None and listens_on(broker.pid, broker.port)
        assert broker_answers(broker.url)
        assert b"AddrInUse" in (tmp_path / "tansu.log").read_bytes()
    finally:
        broker.stop()


def test_another_broker_on_the_port_is_not_taken_for_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing authenticates a Metadata request: the other broker answers it as ours
    would, and ours had died on the port."""
    other = TansuBroker(tmp_path / "other.log")
    other.start()
    try:
        _chosen_first(monkeypatch, kafka_module, other.port)
        broker = TansuBroker(tmp_path / "tansu.log")
        try:
            broker.start()
            assert broker.port != other.port
            assert broker.pid is not None and listens_on(broker.pid, broker.port)
        finally:
            broker.stop()
    finally:
        other.stop()


def test_a_broker_given_a_taken_port_is_not_moved(tmp_path: Path, taken: int) -> None:
    """A port the caller gave (a proxy in front of it knows it) stays: the start fails."""
    broker = TansuBroker(tmp_path / "tansu.log", port=taken)
    with pytest.raises(ServiceError, match="exited"):
        broker.start()
    assert broker.port == taken


def test_redis_whose_chosen_port_is_taken_starts_on_another(
    tmp_path: Path, taken: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    _chosen_first(monkeypatch, redis_module, taken)
    server = EmbeddedRedis(tmp_path / "redis")
    try:
        server.start()
        assert server.port != taken
        assert redis.Redis.from_url(server.url).ping()
    finally:
        server.stop()


def test_postgres_whose_chosen_port_is_taken_starts_on_another(
    taken: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    _chosen_first(monkeypatch, postgres_module, taken)
    with devstack_dir() as base:
        server = EmbeddedPostgres(base / "postgres")
        try:
            server.start()
            assert server.port != taken
            assert f":{server.port}/" in server.url
        finally:
            server.stop()
